"""A corpus of bad inputs to ``python -m gan_prior``, one class of mistake or attack per group.

Every case runs the command's ``__main__`` (``runpy``, as ``python -m gan_prior`` does) in its own
process under an address-space limit (``RLIMIT_AS``): the address space its imports mapped (measured,
as it depends on the torch build: ~0.8 GiB for the CPU build, ~3.3 GiB for PyPI's CUDA build) plus
the case's budget. Each case must end with exactly one ``error:``
line (the last line of stderr) that names the option or file, an exit code ≠ 0, no traceback, and
no marker file from a payload. To keep ~150 cases fast on a loaded machine, the processes are
forked from one interpreter that has imported ``gan_prior`` already (each fork then only runs its
case); :func:`test_real_interpreter_agrees` runs a sample of the cases as real
``python -m gan_prior`` subprocesses and checks they end identically.
"""

from __future__ import annotations

import functools
import json
import os
import pickle
import re
import resource
import struct
import subprocess
import sys
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from helpers import CHILD_EXIT
from safetensors.torch import save_file

from gan_prior import PortraitGAN, save_pyramid, tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GIB = 1 << 30


@dataclass
class Case:
    id: str
    argv: list  # "{d}" is the corpus folder, "{id}" this case's id
    expect: tuple  # substrings of the error line
    budget_gib: float = 2.25  # address space beyond what the imports mapped
    root_override: bool = True  # False: run without root's file-permission override (mode-000 files)
    module: str = "gan_prior"  # the command: python -m <module>
    untouched: tuple = ()  # (path, text): files (outside what the command may write) that must hold text after


def _payload(command: str, proto: int) -> bytes:
    class Payload:
        def __reduce__(self):
            return (os.system, (command,))

    return pickle.dumps({"model": Payload()}, protocol=proto)


def _exec_payload(command: str) -> bytes:
    class Exec:
        def __reduce__(self):
            return (exec, (f"import os; os.system({command!r})",))

    return pickle.dumps(Exec(), protocol=2)


def _png_header(width: int, height: int) -> bytes:
    """A valid PNG signature and IHDR claiming ``width × height`` RGB pixels, with a tiny IDAT."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


def _model_folder(d: str, name: str, config_edit=None, meta=None) -> str:
    """A copy of the tiny generator folder with its config.json edited (or replaced by ``meta``)."""
    folder = os.path.join(d, name)
    os.makedirs(folder)
    os.link(os.path.join(d, "tiny", "model.safetensors"), os.path.join(folder, "model.safetensors"))
    with open(os.path.join(d, "tiny", "config.json")) as f:
        data = json.load(f)
    if config_edit:
        config_edit(data["config"])
    with open(os.path.join(folder, "config.json"), "w") as f:
        f.write(meta if isinstance(meta, str) else json.dumps(data if meta is None else meta))
    return folder


def build_corpus(d: str) -> None:
    """Write every bad file the cases use into ``d``."""
    G = PortraitGAN.random(tiny_config(), seed=0)
    G.save(os.path.join(d, "tiny"))
    with torch.no_grad():
        from gan_prior import canonical_label

        ws = G.mapping(torch.randn(1, G.cfg.z_dim), canonical_label(1))
        levels = G.synthesize_pyramid(ws)
    save_pyramid(os.path.join(d, "good.safetensors"), levels, ws)

    # --- generator folders with bad config.json ------------------------------------------------
    def setter(**kw):
        return lambda c: c.update(kw)

    bad_configs = {
        "w_dim_negative": setter(w_dim=-1),
        "z_dim_text": setter(z_dim="abc"),
        "render_int": setter(render=5),
        "resolution_huge": setter(synthesis_resolution=1 << 20),
        "resolution_odd": setter(synthesis_resolution=24),
        "bcg_resolution_huge": setter(background_resolution=1 << 20),
        "channels_huge": setter(background_channel_max=1 << 20),
        "channel_base_huge": setter(background_channel_base=1 << 40),
        "w_dim_huge": setter(w_dim=1 << 20),
        "mapping_layers_huge": setter(mapping_layers=1 << 20),
        "depth_float": setter(trigrid_depth=2.5),
        "background_text": setter(background="yes"),
        "render_unknown": setter(render={"bogus": 1}),
        "render_nan": setter(render={"ray_start": float("nan")}),
        "render_depth_huge": setter(render={"depth_resolution": 4096}),
        "bcg_base_below_resolution": setter(background_resolution=2048),  # tiny base 512: 0 channels
        "sr_channels_negative": setter(superresolution_channels=[-8, 8]),
        "sr_channels_text": setter(superresolution_channels="ab"),
        "sr_clamp_nan": setter(superresolution_conv_clamp=float("nan")),
        "unknown_key": setter(bogus=1),
    }
    for name, edit in bad_configs.items():
        _model_folder(d, f"cfg_{name}", edit)
    _model_folder(d, "cfg_config_list", meta={"kind": "portrait-gan", "config": [1, 2]})
    _model_folder(d, "cfg_meta_list", meta=[1, 2, 3])
    _model_folder(d, "cfg_invalid_json", meta="{not json")
    _model_folder(d, "cfg_deep_json", meta="[" * 100000 + "]" * 100000)
    _model_folder(d, "cfg_kind", meta={"kind": "other", "config": {}})
    os.makedirs(os.path.join(d, "empty_folder"))
    trunc = _model_folder(d, "weights_truncated")
    os.unlink(os.path.join(trunc, "model.safetensors"))
    with open(os.path.join(d, "tiny", "model.safetensors"), "rb") as f:
        data = f.read()
    with open(os.path.join(trunc, "model.safetensors"), "wb") as f:
        f.write(data[: len(data) // 2])
    nan = _model_folder(d, "weights_nan")
    os.unlink(os.path.join(nan, "model.safetensors"))
    state = {k: v.clone().contiguous() for k, v in G.state_dict().items()}
    state["decoder.net.0.weight"][0, 0] = float("nan")
    save_file(state, os.path.join(nan, "model.safetensors"))

    # --- files that are not checkpoints, and payloads ------------------------------------------------
    def write(name: str, data: bytes) -> None:
        with open(os.path.join(d, name), "wb") as f:
            f.write(data)

    write("empty.pkl", b"")
    write("noise.pkl", b"NOISE" + os.urandom(251))  # never a pickle's or a zip's first bytes
    write("truncated.pkl", pickle.dumps({"a": list(range(100))})[:-10])
    for proto in (0, 2, 4):
        write(f"payload_p{proto}.pkl", _payload(f"touch {d}/MARKER_p{proto}", proto))
    write("payload_exec.pkl", _exec_payload(f"touch {d}/MARKER_exec"))
    write("payload_zip.pth", b"")
    torch.save({"model": {"x": torch.zeros(1)}}, os.path.join(d, "payload_zip.pth"))
    # the same zip with its data.pkl replaced by a payload
    import zipfile

    with zipfile.ZipFile(os.path.join(d, "payload_zip.pth")) as z:
        entries = {n: z.read(n) for n in z.namelist()}
    with zipfile.ZipFile(os.path.join(d, "payload_zip.pth"), "w") as z:
        for n, blob in entries.items():
            z.writestr(n, _payload(f"touch {d}/MARKER_zip", 2) if n.endswith("data.pkl") else blob)
    # a 4.5 MB torch.save holding a stride-0 (expanded) 65536 × 65600 tensor: 17 GB once materialised
    big = torch.zeros(65600).expand(65536, 65600)
    torch.save({"model": {"trigrids_8": big}}, os.path.join(d, "expanded.pth"))
    torch.save(
        {k: (v.expand(4096, *v.shape) if k == "decoder.net.0.weight" else v) for k, v in state.items()},
        os.path.join(d, "expanded_state.pth"),
    )

    # --- pyramids that do not fit the generator or hold non-finite values ---------------------------------
    def pyramid(name: str, lv, w) -> None:  # written directly: save_pyramid refuses NaN, as it should
        state = {f"trigrids_{r}": t.contiguous() for r, t in lv.items()}
        save_file({**state, **({"ws": w.contiguous()} if w is not None else {})}, os.path.join(d, name))

    nan_levels = {r: t.clone() for r, t in levels.items()}
    nan_levels[16][0, 1, 2, 3, 4] = float("nan")
    pyramid("level_nan.safetensors", nan_levels, ws)
    pyramid("ws_inf.safetensors", levels, ws * float("inf"))
    pyramid("channels.safetensors", {r: t[:, :, :5] for r, t in levels.items()}, ws)
    pyramid("ws_shape.safetensors", levels, ws[:, :3])
    pyramid("ws_width.safetensors", levels, ws[..., :10])
    pyramid("batch0.safetensors", {r: t[:0] for r, t in levels.items()}, ws[:0])
    pyramid("no_ws.safetensors", levels, None)
    save_file(
        {"trigrids_0": torch.zeros(1, 3, 36, 0, 0), "ws": ws.contiguous()}, os.path.join(d, "r0.safetensors")
    )
    save_file(
        {"trigrids_8": torch.zeros(1, 3, 36, 16, 16), "ws": ws.contiguous()},
        os.path.join(d, "size.safetensors"),
    )
    save_file({"weights": torch.zeros(3)}, os.path.join(d, "no_levels.safetensors"))
    pyramid("int64.safetensors", {r: t.long() for r, t in levels.items()}, ws)
    torch.save({"model": {"trigrids_8": torch.zeros(4, 36, 8, 8), "ws": ws}}, os.path.join(d, "planes4.pth"))
    with open(os.path.join(d, "good.safetensors"), "rb") as f:
        data = f.read()
    write("pyramid_truncated.safetensors", data[: len(data) // 3])
    write("not_a_dict.pkl", pickle.dumps([1, 2, 3]))
    write("model_not_dict.pkl", pickle.dumps({"model": 5}))

    # --- images -----------------------------------------------------------------------------------------
    import imageio.v2 as imageio

    imageio.imwrite(os.path.join(d, "face.png"), np.full((32, 32, 3), 100, np.uint8))
    blob = _payload(f"touch {d}/MARKER_pixels", 2)  # an image whose pixel bytes are a pickle payload
    pixels = np.frombuffer(blob + b"." * (-len(blob) % 3), np.uint8).reshape(1, -1, 3)
    imageio.imwrite(os.path.join(d, "payload_pixels.png"), pixels)
    imageio.imwrite(os.path.join(d, "wide.png"), np.full((16, 32, 3), 100, np.uint8))
    imageio.imwrite(os.path.join(d, "dot.png"), np.full((1, 1, 3), 100, np.uint8))
    write("noise.png", os.urandom(300))
    write("empty.png", b"")
    write("bomb.png", _png_header(100_000, 100_000))  # 30 GB of pixels, claimed in 100 bytes
    os.makedirs(os.path.join(d, "views"))
    for i in range(2):
        imageio.imwrite(os.path.join(d, "views", f"{i}.png"), np.full((16, 16, 3), 60 * i, np.uint8))
    os.makedirs(os.path.join(d, "hidden_only"))
    imageio.imwrite(os.path.join(d, "hidden_only", ".thumb.png"), np.zeros((16, 16, 3), np.uint8))
    os.makedirs(os.path.join(d, "bad_views"))
    write(os.path.join("bad_views", "0.png"), os.urandom(100))
    write("afile", b"x")
    # 15 KB of mp4 that decodes to 100 frames of 2048² (1.2 GiB)
    frame = np.zeros((2048, 2048, 3), np.uint8)
    with imageio.get_writer(
        os.path.join(d, "frames_bomb.mp4"),
        fps=30,
        codec="libx264",
        macro_block_size=1,
        ffmpeg_params=["-preset", "ultrafast"],
    ) as writer:
        for _ in range(100):
            writer.append_data(frame)
    # files the user cannot read (mode 000; root reads them anyway, so those cases drop that power)
    for name, source in (
        ("unreadable.pkl", "noise.pkl"),
        ("unreadable.safetensors", "good.safetensors"),
        ("unreadable.png", "face.png"),
    ):
        with open(os.path.join(d, source), "rb") as f:
            write(name, f.read())
        os.chmod(os.path.join(d, name), 0)

    # --- detectors: a module with misbehaving ones --------------------------------------------------------
    os.makedirs(os.path.join(d, "mods"))
    with open(os.path.join(d, "mods", "baddet.py"), "w") as f:
        f.write(
            "from gan_prior.alignment import FaceBox, FaceDetector, face_detector\n\n"
            "@face_detector\ndef raises(image):\n    raise RuntimeError('boom')\n\n"
            "@face_detector\ndef text(image):\n    return 'a face'\n\n"
            "@face_detector\ndef nan_box(image):\n    return [FaceBox(float('nan'), 0, 1, 1)]\n\n"
            "class NeedsArgs(FaceDetector):\n    def __init__(self, a):\n        pass\n\n"
            "def unmarked(image):\n    import os\n    os.system('touch MARKER_unmarked')\n\n"
            "value = 5\n"
        )
    with open(os.path.join(d, "mods", "importfails.py"), "w") as f:
        f.write("raise SystemError('import-time failure')\n")


P3D = "p3d"  # the portrait3d cases' folder in the corpus: one sub-folder per case
BOMB_YAML = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{b}: &{b} [*{a}, *{a}, *{a}, *{a}, *{a}, *{a}, *{a}, *{a}, *{a}]\n"
    for a, b in zip("abcdefgh", "bcdefghi")
)  # ~400 bytes, 9**9 = 387 M values once expanded


def build_portrait3d_corpus(d: str) -> None:
    """The folders of the ``portrait3d`` cases: trials, manifests, links (one folder per case)."""
    from helpers import fake_trial

    root = os.path.join(d, P3D)
    os.makedirs(root)

    def at(*parts):
        return os.path.join(root, *parts)

    def manifest(folder, *entries, raw: bytes = b""):
        os.makedirs(at(folder), exist_ok=True)
        with open(at(folder, "manifest.jsonl"), "wb") as f:
            f.write(raw or "".join(json.dumps(e) + "\n" for e in entries).encode())

    fake_trial(at("victim"), mesh=False)  # another user's trial, outside every gallery below
    with open(at("secret.txt"), "w") as f:
        f.write("SECRET_TOKEN=hunter2\n")
    os.chmod(at("secret.txt"), 0o600)
    os.makedirs(at("elsewhere"))
    for name, trial in (("parent", "../victim"), ("absolute", at("victim")), ("root", "/")):
        manifest(f"gallery-{name}", {"name": "x", "status": "done", "trial": trial})
    fake_trial(at("gallery-user-index", "t"), mesh=False)
    with open(at("gallery-user-index", "index.html"), "w") as f:
        f.write("<h1>my own page</h1>\n")
    manifest("gallery-not-utf8", raw=b'{"name": "caf\xe9"}\n')
    manifest("gallery-deep", raw=b"[" * 100_000 + b"\n")
    fake_trial(at("report-assets-link", "t"))
    os.symlink(at("elsewhere"), at("report-assets-link", "t", "save", "_report"))
    fake_trial(at("report-glb-link", "t"), mesh=False)
    os.makedirs(at("report-glb-link", "t", "save", "it9-export"))
    os.symlink(at("secret.txt"), at("report-glb-link", "t", "save", "it9-export", "portrait.glb"))
    fake_trial(at("report-parsed-link", "t"), mesh=False)
    os.remove(at("report-parsed-link", "t", "configs", "parsed.yaml"))
    os.symlink(at("secret.txt"), at("report-parsed-link", "t", "configs", "parsed.yaml"))
    fake_trial(at("report-broken-link", "t"), mesh=False)
    os.makedirs(at("report-broken-link", "t", "save", "it9-export"))
    os.symlink("gone.glb", at("report-broken-link", "t", "save", "it9-export", "portrait.glb"))
    fake_trial(at("report-yaml-bomb", "t"), mesh=False)
    with open(at("report-yaml-bomb", "t", "configs", "parsed.yaml"), "w") as f:
        f.write("system:\n  prompt_processor: {prompt: a}\n" + BOMB_YAML)
    fake_trial(at("report-user-index", "t"), mesh=False)
    with open(at("report-user-index", "t", "save", "index.html"), "w") as f:
        f.write("<h1>my own page</h1>\n")
    # evaluate: a finished entry whose large-pose video is 15 KB claiming 1.2 GiB of pixels
    fake_trial(at("evaluate-video-bomb", "t"), mesh=False)
    os.link(os.path.join(d, "frames_bomb.mp4"), at("evaluate-video-bomb", "t", "save", "it8-large_pose.mp4"))
    manifest("evaluate-video-bomb", {"name": "t", "prompt": "a", "status": "done", "trial": "t"})
    fake_trial(at("evaluate-overwrite", "t"), mesh=False)
    manifest("evaluate-overwrite", {"name": "t", "prompt": "a", "status": "done", "trial": "t"})
    with open(at("evaluate-overwrite", "metrics.csv"), "w") as f:
        f.write("my,own,table\n")
    manifest("evaluate-outside", {"name": "t", "prompt": "a", "status": "done", "trial": "../victim"})
    fake_trial(at("evaluate-no-name", "t"), mesh=False)
    manifest("evaluate-no-name", {"status": "done", "trial": "t", "prompt": 5})
    with open(at("prompts-latin1.txt"), "wb") as f:
        f.write(b"a portrait of a caf\xe9 owner\n")


def _portrait3d_cases() -> list[Case]:
    """``portrait3d`` commands on hostile folders (item by item of issue 22: gallery and report stay
    inside their folders, symbolic links are not followed out of a trial, a user's files are not
    replaced unasked, bounded reads, one line for every bad file)."""
    cases: list[Case] = []

    def add(case_id, argv, *expect, untouched=()):
        def here(text):
            return text.replace("{p}", "{d}/" + P3D)

        cases.append(
            Case(
                f"p3d-{case_id}",
                [here(a) for a in argv],
                tuple(here(e) for e in expect),
                module="portrait3d",
                untouched=tuple((here(p), t) for p, t in untouched),
            )
        )

    VICTIM = ("{p}/victim/save/index.html", None)  # None: must not exist
    for name, trial in (("parent", "'../victim'"), ("absolute", "'{p}/victim'"), ("root", "'/'")):
        add(
            f"gallery-trial-{name}",
            ["gallery", f"{{p}}/gallery-{name}"],
            f"entry 'x': trial {trial} is not a folder inside",
            untouched=[VICTIM],
        )
    add(
        "gallery-user-index",
        ["gallery", "{p}/gallery-user-index"],
        "{p}/gallery-user-index/index.html exists and was not written by portrait3d; pass --overwrite",
        untouched=[("{p}/gallery-user-index/index.html", "<h1>my own page</h1>\n")],
    )
    add(
        "gallery-manifest-not-utf8", ["gallery", "{p}/gallery-not-utf8"], "manifest.jsonl:1 is not UTF-8 text"
    )
    add("gallery-manifest-deep", ["gallery", "{p}/gallery-deep"], "manifest.jsonl:1 is nested too deeply")
    add(
        "report-assets-link-out",
        ["report", "{p}/report-assets-link/t"],
        "save/_report is a symbolic link out of the trial folder",
        untouched=[("{p}/elsewhere/model-viewer.min.js", None)],
    )
    add(
        "report-glb-link-out",
        ["report", "{p}/report-glb-link/t"],
        "it9-export/portrait.glb is a symbolic link out of the trial folder",
        untouched=[("{p}/report-glb-link/t/save/_report/portrait.glb.js", None)],
    )
    add(
        "report-parsed-link-out",
        ["report", "{p}/report-parsed-link/t"],
        "configs/parsed.yaml is a symbolic link out of the trial folder",
        untouched=[("{p}/report-parsed-link/t/save/index.html", None)],
    )
    add(
        "report-broken-link", ["report", "{p}/report-broken-link/t"], "portrait.glb is a broken symbolic link"
    )
    add(
        "report-yaml-bomb",
        ["report", "{p}/report-yaml-bomb/t"],
        "configs/parsed.yaml: its YAML aliases expand to more than 200000 values",
    )
    add(
        "report-user-index",
        ["report", "{p}/report-user-index/t"],
        "save/index.html exists and was not written by portrait3d; pass --overwrite",
        untouched=[("{p}/report-user-index/t/save/index.html", "<h1>my own page</h1>\n")],
    )
    add(
        "evaluate-video-bomb",
        ["evaluate", "{p}/evaluate-video-bomb", "--clip", "{d}/views"],
        "t: large-pose video: {p}/evaluate-video-bomb/t/save/it8-large_pose.mp4 decodes to more than 1024 MiB",
    )
    add(
        "evaluate-overwrite",
        ["evaluate", "{p}/evaluate-overwrite", "--clip", "{d}/views"],
        "RUNS: {p}/evaluate-overwrite already holds metrics.csv; pass --overwrite",
        untouched=[("{p}/evaluate-overwrite/metrics.csv", "my,own,table\n")],
    )
    add(
        "evaluate-trial-outside",
        ["evaluate", "{p}/evaluate-outside", "--clip", "{d}/views"],
        "trial '../victim' is not a folder inside",
    )
    add(
        "evaluate-row-without-name",  # was KeyError 'name'
        ["evaluate", "{p}/evaluate-no-name", "--clip", "{d}/views"],
        "none of the finished portraits has a large-pose video",
    )
    add(
        "batch-prompts-not-utf8",
        [
            "batch",
            "{p}/prompts-latin1.txt",
            "--config",
            os.path.join(ROOT, "configs", "portrait3d-tiny.yaml"),
        ],
        "prompts-latin1.txt:1: not UTF-8 text (byte 0xe9)",
    )
    add(
        "batch-out-is-file",
        [
            "batch",
            "{p}/prompts-latin1.txt",
            "--config",
            os.path.join(ROOT, "configs", "portrait3d-tiny.yaml"),
            "--out",
            "{d}/afile",
        ],
        "--out: {d}/afile is a file, not a folder",
    )
    return cases


def _cases() -> list[Case]:
    """Every case names the input it is about and the reason it must fail (asserted in the error line,
    so a case that fails for another reason — an earlier check — does not pass)."""
    S = ["sample", "--checkpoint", "{d}/tiny", "--out", "{d}/out/{id}", "--resolution", "8", "--frames", "0"]
    R = [
        "render",
        "--checkpoint",
        "{d}/tiny",
        "--out",
        "{d}/out/{id}",
        "--resolution",
        "8",
        "--frames",
        "0",
        "--angles",
        "0",
    ]
    INV = [
        "invert",
        "--checkpoint",
        "{d}/tiny",
        "--out",
        "{d}/out/{id}",
        "--steps",
        "1",
        "--resolution",
        "32",
        "--aligned-resolution",
        "32",
    ]
    E = ["evaluate", "--prompt", "a face", "--out", "{d}/out/{id}"]
    CLIP = ["--clip", "no-such/clip-model"]  # a metric is asked (never loaded: the inputs fail first)
    RANGE, NOT_INT, NOT_FINITE = "is out of range", "is not an integer", "is not a finite number"
    cases = []

    def add(id_, argv, *expect, budget=2.25, root_override=True):
        cases.append(Case(id_, argv, expect, budget, root_override))

    # 1. option values: range, type, non-finite --------------------------------------------------------
    for value, why in (
        ("0", RANGE),
        ("-5", RANGE),
        ("1000000000", RANGE),
        ("abc", NOT_INT),
        ("2.5", NOT_INT),
    ):
        add(f"sample-resolution[{value}]", S + ["--resolution", value], "--resolution", why)
    add("sample-resolution[]", S + ["--resolution", ""], "--resolution", "'' is not an integer")
    add("sample-chunk0", S + ["--chunk", "0"], "--chunk", RANGE)
    add("sample-frames-1", S + ["--frames=-1"], "--frames", RANGE)
    add("sample-frames-huge", S + ["--frames", "10000000000"], "--frames", RANGE)
    for value, why in ((str(2**70), RANGE), ("-1", RANGE), ("1.5", NOT_INT)):
        add(f"sample-seed[{value}]", S + [f"--seed={value}"], "--seed", why)
    for value, why in (
        ("nan", NOT_FINITE),
        ("inf", NOT_FINITE),
        ("-inf", NOT_FINITE),
        ("x", "'x' is not a number"),
        ("1e400", NOT_FINITE),
    ):
        add(f"sample-truncation[{value}]", S + [f"--truncation={value}"], "--truncation", why)
    for value in ("nan", "inf"):
        add(f"render-angles[{value}]", R + ["--angles", "0", value], "--angles", NOT_FINITE)
    for value, why in (("nan", NOT_FINITE), ("95", RANGE), ("-1e9", RANGE)):
        add(
            f"render-elevation[{value}]",
            R + [f"--elevation={value}", "--pyramid", "{d}/good.safetensors"],
            "--elevation",
            why,
        )
    add("render-nothing", R[:-2] + ["--pyramid", "{d}/good.safetensors"], "nothing to render")
    add(
        "render-same-file",  # the second view replaced the first, silently
        R + ["0.04", "--pyramid", "{d}/good.safetensors"],
        "--angles: 0 and 0.04 would both be written to azimuth_+000.0.png",
    )
    for opt, value, why in (
        ("--steps", "-1", RANGE),
        ("--aligned-resolution", "0", RANGE),
        ("--resolution", "0", RANGE),
        ("--candidates", "0", RANGE),
        ("--sd-resolution", "100", "is not a multiple of 8"),
        ("--sd-steps", "0", RANGE),
        ("--seed", str(2**70), RANGE),
        ("--steps", "nan", NOT_INT),
    ):
        add(f"invert{opt}[{value}]", INV + ["--image", "{d}/face.png", f"{opt}={value}"], opt, why)
    add("invert-prompt-empty", INV + ["--prompt", " "], "--prompt: empty")
    for value, why in (("0", RANGE), ("-1", RANGE), ("x", NOT_INT)):
        add(
            f"evaluate-columns[{value}]",
            E + ["--renders", "{d}/views", f"--columns={value}"],
            "--columns",
            why,
        )

    # 2. output folders ---------------------------------------------------------------------------------
    add("out-is-file", S[:4] + ["{d}/afile"] + S[5:], "--out", "afile is a file, not a folder")
    add("out-empty", S[:4] + [""] + S[5:], "--out: empty path")
    add(
        "out-under-file", S[:4] + ["{d}/afile/sub"] + S[5:], "--out", "cannot be created: {d}/afile is a file"
    )
    add("out-in-proc", S[:4] + ["/proc/self/status/x"] + S[5:], "--out", "cannot be created")
    add(
        "evaluate-out-is-file",
        E[:-1] + ["{d}/afile", "--renders", "{d}/views"] + CLIP,
        "--out",
        "afile is a file, not a folder",
    )

    # 3. generator checkpoints: missing, not a checkpoint, bad config, payloads, memory bombs -----------------
    NOT_PICKLE = "not a pickle or torch.save file"
    for name, expect in (
        ("missing.pkl", "missing.pkl: file not found"),
        ("empty.pkl", NOT_PICKLE),
        ("noise.pkl", NOT_PICKLE),
        ("truncated.pkl", "corrupt or truncated pickle"),
        ("empty_folder", "folder has no config.json"),
        ("afile", NOT_PICKLE),
        ("good.safetensors", "a safetensors file is not a generator checkpoint"),
        ("expanded_state.pth", "weight decoder.net.0.weight is an expanded or overlapping tensor"),
        ("unreadable.pkl", "unreadable.pkl: permission denied"),
    ):
        add(
            f"checkpoint[{name}]",
            ["sample", "--checkpoint", f"{{d}}/{name}"] + S[3:],
            expect,
            root_override="unreadable" not in name,
        )
    for name, expect in (
        ("w_dim_negative", "w_dim = -1 is out of range"),
        ("z_dim_text", "z_dim is 'abc', expected an integer"),
        ("render_int", "render is 5, expected a mapping"),
        ("resolution_huge", "synthesis_resolution = 1048576 is out of range"),
        ("resolution_odd", "synthesis_resolution = 24 is out of range; expected a power of two"),
        ("bcg_resolution_huge", "background_resolution = 1048576 is out of range"),
        ("bcg_base_below_resolution", "background_channel_base = 512 is below background_resolution = 2048"),
        ("channels_huge", "background_channel_max = 1048576 is out of range"),
        ("channel_base_huge", "background_channel_base = 1099511627776 is out of range"),
        ("w_dim_huge", "w_dim = 1048576 is out of range"),
        ("mapping_layers_huge", "mapping_layers = 1048576 is out of range"),
        ("depth_float", "trigrid_depth is 2.5, expected an integer"),
        ("background_text", "background is 'yes', expected true or false"),
        ("sr_channels_negative", "superresolution_channels = [-8, 8]; expected two integers"),
        ("sr_channels_text", "superresolution_channels = 'ab'; expected two integers"),
        ("sr_clamp_nan", "superresolution_conv_clamp = nan; expected a positive finite number"),
        ("render_unknown", "unknown render option(s) ['bogus']"),
        ("render_nan", "render.ray_start = nan; expected a finite number"),
        ("render_depth_huge", "render.depth_resolution = 4096; expected an integer between 1 and 512"),
        ("unknown_key", "unknown generator option(s) ['bogus']"),
        ("config_list", "the generator config is a list"),
        ("meta_list", "holds a list, expected an object"),
        ("invalid_json", "invalid JSON (JSONDecodeError"),
        ("deep_json", "invalid JSON (RecursionError"),
        ("kind", "kind is 'other', expected 'portrait-gan'"),
    ):
        add(f"config[{name}]", ["sample", "--checkpoint", f"{{d}}/cfg_{name}"] + S[3:], f"cfg_{name}", expect)
    add(
        "weights-truncated",
        ["sample", "--checkpoint", "{d}/weights_truncated"] + S[3:],
        "weights_truncated",
        "corrupt or truncated safetensors file",
    )
    add(
        "weights-nan",
        ["sample", "--checkpoint", "{d}/weights_nan"] + S[3:],
        "weights_nan",
        "decoder.net.0.weight holds 1 NaN/Inf value(s)",
    )
    for name, expect in (
        ("payload_p0.pkl", NOT_PICKLE),  # protocol 0 is text: no official file uses it, none is read
        ("payload_p2.pkl", "refused to load 'posix.system'"),
        ("payload_p4.pkl", "refused to load 'posix.system'"),
        ("payload_exec.pkl", "refused to load '__builtin__.exec'"),
        (
            "payload_zip.pth",
            "refused by the weights-only loader (Trying to load unsupported GLOBAL posix.system",
        ),
    ):
        add(f"checkpoint-payload[{name}]", ["sample", "--checkpoint", f"{{d}}/{name}"] + S[3:], name, expect)
        add(f"pyramid-payload[{name}]", R + ["--pyramid", f"{{d}}/{name}"], name, expect)
        add(
            f"vgg16-payload[{name}]",
            INV + ["--image", "{d}/face.png", "--detector", "none", "--vgg16", f"{{d}}/{name}"],
            name,
            expect,
            budget=3.25,
        )

    # 4. pyramid files -------------------------------------------------------------------------------
    for name, expect in (
        ("level_nan.safetensors", "level trigrids_16 holds 1 NaN/Inf value(s)"),
        ("ws_inf.safetensors", "ws holds 384 NaN/Inf value(s)"),
        ("channels.safetensors", "level trigrids_8 has 5 channels, the checkpoint's generator reads 36"),
        ("ws_shape.safetensors", "ws has shape (1, 3, 64), the checkpoint's generator needs [1, 6, 64]"),
        ("ws_width.safetensors", "ws has shape (1, 6, 10)"),
        ("batch0.safetensors", "level trigrids_8 holds no pyramid (batch 0)"),
        ("no_ws.safetensors", "holds no 'ws'"),
        ("r0.safetensors", "level trigrids_0 has shape (1, 3, 36, 0, 0)"),
        ("size.safetensors", "level trigrids_8 has shape (1, 3, 36, 16, 16), expected [B, 3, C, 8, 8]"),
        ("no_levels.safetensors", "no 'trigrids_<R>' tensors found"),
        ("int64.safetensors", "holds int64 values; a pyramid holds floats"),
        ("planes4.pth", "4 planes is not a multiple of 3"),
        ("pyramid_truncated.safetensors", "corrupt or truncated safetensors file"),
        ("not_a_dict.pkl", "expected a dict of tri-grid levels"),
        ("model_not_dict.pkl", "'model' entry is not a state dict"),
        ("missing.pth", "file not found"),
        ("views", "views: is a folder; expected a file"),
        ("expanded.pth", "level trigrids_8 is an expanded or overlapping tensor"),
        ("noise.pkl", NOT_PICKLE),
        ("unreadable.safetensors", "permission denied"),  # was "corrupt or truncated"
    ):
        add(
            f"pyramid[{name}]",
            R + ["--pyramid", f"{{d}}/{name}"],
            name,
            expect,
            root_override="unreadable" not in name,
        )

    # 5. images and detectors --------------------------------------------------------------------------------
    for name, expect in (
        ("missing.png", "missing.png not found"),
        ("noise.png", "noise.png: not a readable image"),
        ("empty.png", "empty.png: not a readable image"),
        ("bomb.png", "bomb.png: the image is larger than 178,956,970 pixels (PIL's bound against"),
        ("dot.png", "dot.png: the image is 1×1 px; give a photo at least 16 px a side"),  # was inverted
        ("views", "--image: {d}/views is a folder"),
        ("wide.png", "detector 'none' needs an aligned square image, got 32x16"),
        ("unreadable.png", "unreadable.png: Permission denied"),
    ):
        add(
            f"image[{name}]",
            INV + ["--image", f"{{d}}/{name}", "--detector", "none"],
            expect,
            budget=3.25,
            root_override="unreadable" not in name,
        )
    for spec, image, expect in (
        (
            "os:system",
            "face.png",
            "--detector: detector 'os:system' is a builtin_function_or_method, not a face",
        ),
        # the pixels of this PNG are a pickle: pickle.loads on the image ran its shell command
        (
            "pickle:loads",
            "payload_pixels.png",
            "--detector: detector 'pickle:loads' is a builtin_function_or",
        ),
        (
            "baddet:unmarked",
            "face.png",
            "--detector: detector 'baddet:unmarked' is a function, not a face detector",
        ),
        (
            "os:system; touch x",
            "face.png",
            "--detector: detector 'os:system; touch x': not of the form module:attr",
        ),
        ("no.such.module:f", "face.png", "--detector: detector 'no.such.module:f': cannot import it"),
        ("os:sep", "face.png", "--detector: detector 'os:sep' is not callable"),
        ("baddet:raises", "face.png", "detector 'baddet:raises' failed on an image (RuntimeError: boom)"),
        ("baddet:text", "face.png", "detector 'baddet:text' returned str 'a face', not a list of FaceBox"),
        ("baddet:nan_box", "face.png", "detector 'baddet:nan_box' returned list"),
        (
            "baddet:NeedsArgs",
            "face.png",
            "--detector: detector 'baddet:NeedsArgs': the class cannot be instantiated",
        ),
        ("baddet:value", "face.png", "--detector: detector 'baddet:value' is not callable"),
        ("importfails:f", "face.png", "cannot import it (SystemError: import-time failure)"),
        ("{d}/afile.xml", "face.png", "--detector: {d}/afile.xml: OpenCV cascade file not found"),
        ("retinaface", "face.png", "--detector: unknown detector 'retinaface'"),
    ):
        add(
            f"detector[{spec.replace('{d}/', '')}]",
            INV + ["--image", f"{{d}}/{image}", "--detector", spec],
            expect,
            budget=3.25,
        )
    add(
        "vgg16-missing",
        INV + ["--image", "{d}/face.png", "--detector", "none", "--vgg16", "{d}/missing.pt"],
        "--vgg16: {d}/missing.pt not found",
    )
    add(
        "vgg16-noise",
        INV + ["--image", "{d}/face.png", "--detector", "none", "--vgg16", "{d}/noise.pkl"],
        "noise.pkl",
        NOT_PICKLE,
        budget=3.25,
    )

    # 6. evaluation inputs -------------------------------------------------------------------------------
    add(
        "evaluate-nothing-to-compute",
        ["evaluate", "--prompt", "", "--out", "{d}/out/{id}", "--renders", "{d}/views"],
        "nothing to compute",
    )
    add(
        "evaluate-prompt-empty",
        ["evaluate", "--prompt", " ", "--out", "{d}/out/{id}", "--renders", "{d}/views"] + CLIP,
        "--prompt is empty",
    )
    add("evaluate-missing", E + ["--renders", "{d}/nothing"] + CLIP, "--renders: {d}/nothing not found")
    add("evaluate-hidden-only", E + ["--renders", "{d}/hidden_only"] + CLIP, "--renders: no images found")
    add(
        "evaluate-unreadable",
        E + ["--renders", "{d}/bad_views"] + CLIP,
        "--renders: {d}/bad_views/0.png is not a readable image",
    )
    add(
        "evaluate-bomb",
        E + ["--renders", "{d}/bomb.png"] + CLIP,
        "--renders: {d}/bomb.png is not a readable image or video (DecompressionBombError)",
    )
    # 15 KB of mp4 holding 100 frames of 2048²: 1.2 GiB decoded (loaded whole, it took 5 GB)
    add(
        "evaluate-video-bomb",
        E + ["--renders", "{d}/frames_bomb.mp4"] + CLIP,
        "--renders: {d}/frames_bomb.mp4 decodes to more than 1024 MiB of pixels (100 frames of 2048×2048)",
    )
    add(
        "evaluate-permission",
        E + ["--renders", "{d}/unreadable.png"] + CLIP,
        "--renders: {d}/unreadable.png: permission denied",
        root_override=False,
    )
    add(
        "evaluate-reference-alone",
        E + ["--renders", "{d}/views", "--reference", "{d}/views"],
        "FID/KID need both --reference",
    )
    add(
        "evaluate-inception-payload",
        E + ["--renders", "{d}/views", "--reference", "{d}/views", "--inception", "{d}/payload_p2.pkl"],
        "--inception: {d}/payload_p2.pkl is not a readable weights file (UnpicklingError)",
    )

    # 7. memory: a render larger than the memory there is ends as out of memory, not as a bug ---------------------------
    add(
        "render-out-of-memory",
        R[:5]
        + ["--resolution", "4096", "--chunk", "100000000", "--frames", "0", "--angles", "0"]
        + ["--pyramid", "{d}/good.safetensors"],
        "out of memory",
    )
    return cases + _portrait3d_cases()


CASES = _cases()


def vm_size() -> int:
    """This process's address space in bytes (Linux: VmSize of /proc/self/status)."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:"))


@functools.lru_cache(maxsize=None)
def imports_vm(d: str, extra: tuple = ()) -> int:
    """The peak address space of an interpreter that imported the command (as ``python -m gan_prior``
    does before it reads its arguments), in bytes."""
    code = "import gan_prior.cli\nprint(next(l.split()[1] for l in open('/proc/self/status') if l.startswith('VmPeak:')))"
    env = _env(d, extra)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    return int(out.stdout.strip()) * 1024


def _limit(size: int):
    def preexec():
        resource.setrlimit(resource.RLIMIT_AS, (size, size))

    return preexec


def _env(d: str, extra: tuple = ()) -> dict:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([*extra, ROOT, os.path.join(d, "mods")]),
        "OMP_NUM_THREADS": "1",
        "PORTRAIT3D_CACHE": os.path.join(d, "cache"),
    }
    env.pop("GAN_PRIOR_DEBUG", None)
    env.pop("PORTRAIT3D_DEBUG", None)
    return env


def _argv(case: Case, d: str) -> list:
    return [a.replace("{d}", d).replace("{id}", case.id) for a in case.argv]


def run_case(case: Case, d: str, extra: tuple = ()) -> subprocess.CompletedProcess:
    """The case as a real ``python -m gan_prior`` subprocess (``extra``: folders put first on its path)."""
    return subprocess.run(
        [sys.executable, "-m", case.module, *_argv(case, d)],
        capture_output=True,
        text=True,
        env=_env(d, extra),
        cwd=d,
        timeout=600,
        preexec_fn=_limit(imports_vm(d, extra) + int(case.budget_gib * GIB)),
    )


# A process that imports gan_prior once, then forks one child per case (read as JSON lines on stdin):
# the child limits its address space to what it has mapped plus the case's budget, sends stdout/stderr
# to files and runs ``gan_prior`` as ``__main__``; the parent answers each case with its exit status
# once the child ends.
_ZYGOTE = (
    CHILD_EXIT
    + r"""
import json, os, resource, runpy, sys
import gan_prior.cli, portrait3d.cli, portrait3d.report  # the expensive imports (torch), done once

def drop_file_permission_override():
    # as root, give up CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH: file modes then apply as for a user
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    class Header(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]
    class Data(ctypes.Structure):
        _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]
    header, data = Header(0x20080522, 0), (Data * 2)()
    keep = ~((1 << 1) | (1 << 2)) & 0xFFFFFFFF
    if libc.capget(ctypes.byref(header), data) == 0:
        for d in data:
            d.effective &= keep; d.permitted &= keep; d.inheritable &= keep
        libc.capset(ctypes.byref(header), data)
sys.stdout.write("ready\n"); sys.stdout.flush()
running = {}

def reap():
    pid, status = os.waitpid(-1, 0)
    code = os.waitstatus_to_exitcode(status)
    sys.stdout.write(json.dumps([running.pop(pid), code]) + "\n"); sys.stdout.flush()

for line in sys.stdin:
    case_id, argv, budget, out, err, workers, root_override, module = json.loads(line)
    while len(running) >= workers:
        reap()
    pid = os.fork()
    if pid == 0:
        def run():
            with open("/proc/self/status") as f:  # VmSize: what the imports mapped (the torch build's)
                limit = next(int(l.split()[1]) * 1024 for l in f if l.startswith("VmSize:")) + budget
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
            if not root_override and os.geteuid() == 0:
                drop_file_permission_override()
            for fd, path in ((1, out), (2, err)):
                f = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                os.dup2(f, fd); os.close(f)
            sys.stdout = open(1, "w", closefd=False); sys.stderr = open(2, "w", closefd=False)
            sys.argv = [module] + argv
            runpy.run_module(module, run_name="__main__", alter_sys=True)
        run_as_main(run)  # (helpers.CHILD_EXIT)
    running[pid] = case_id
while running:
    reap()
"""
)


def run_all(cases: list, d: str, workers: int = 3, extra: tuple = ()) -> dict:
    """Run ``cases`` through the forking interpreter; ``{id: CompletedProcess}``."""
    logs = os.path.join(d, "logs")
    os.makedirs(logs, exist_ok=True)
    z = subprocess.Popen(
        [sys.executable, "-c", _ZYGOTE],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=_env(d, extra),
        cwd=d,
    )
    assert z.stdout.readline().strip() == "ready"
    files = {}
    for i, case in enumerate(cases):
        files[case.id] = (os.path.join(logs, f"{i}.out"), os.path.join(logs, f"{i}.err"))
        z.stdin.write(
            json.dumps(
                [
                    case.id,
                    _argv(case, d),
                    int(case.budget_gib * GIB),
                    *files[case.id],
                    workers,
                    case.root_override,
                    case.module,
                ]
            )
            + "\n"
        )
    z.stdin.close()
    codes = dict(json.loads(line) for line in z.stdout if line.strip())
    assert z.wait(timeout=60) == 0
    results = {}
    for case in cases:
        out, err = (open(p, encoding="utf-8", errors="replace").read() for p in files[case.id])
        results[case.id] = subprocess.CompletedProcess([case.id], codes[case.id], out, err)
    return results


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("bad_inputs"))
    build_corpus(d)
    build_portrait3d_corpus(d)
    return d, run_all(CASES, d)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_gives_one_clear_line(corpus, case):
    d, results = corpus
    r = results[case.id]
    shown = f"exit {r.returncode}\nstderr:\n{r.stderr[-3000:]}"
    assert r.returncode not in (0, -9, 124, 137), shown  # not accepted, not killed
    assert "Traceback" not in r.stderr + r.stdout, shown
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1 and lines[-1] == errors[0], shown
    assert "unexpected" not in errors[0], shown  # an expected error, not the catch-all
    for text in case.expect:  # the reason the case is named for, not only the file
        assert text.replace("{d}", d) in errors[0], shown
    assert not [f for f in os.listdir(d) if f.startswith("MARKER")], "a payload ran"
    assert not os.path.exists(os.path.join(d, "out", case.id, "pyramid.safetensors"))
    for path, text in case.untouched:  # nothing written outside the command's folder, nothing replaced
        path = path.replace("{d}", d)
        if text is None:
            assert not os.path.lexists(path), f"{path} was written"
        else:
            assert open(path).read() == text, f"{path} was replaced"


def test_corpus_covers_every_class():
    groups = {c.id.split("[")[0].split("-")[0] for c in CASES}
    assert {c.id.split("-")[1] for c in CASES if c.module == "portrait3d"} >= {
        "gallery",
        "report",
        "evaluate",
        "batch",
    }
    assert {
        "sample",
        "render",
        "invert",
        "evaluate",
        "out",
        "checkpoint",
        "config",
        "pyramid",
        "image",
        "detector",
        "vgg16",
        "weights",
    } <= groups
    assert len(CASES) >= 120


REAL = [
    "sample-truncation[nan]",
    "out-is-file",
    "config[resolution_huge]",
    "pyramid-payload[payload_p2.pkl]",
    "pyramid[level_nan.safetensors]",
    "checkpoint[expanded_state.pth]",
    "p3d-gallery-trial-parent",
    "p3d-report-yaml-bomb",
]


def test_real_interpreter_agrees(corpus):
    """A sample of the corpus as real ``python -m gan_prior`` subprocesses ends exactly as in the corpus."""
    d, results = corpus
    cases = {c.id: c for c in CASES}
    with ThreadPoolExecutor(max_workers=2) as pool:
        real = dict(zip(REAL, pool.map(lambda i: run_case(cases[i], d), REAL)))
    for case_id in REAL:
        last = lambda r: [line for line in r.stderr.splitlines() if line.strip()][-1]  # noqa: E731
        assert real[case_id].returncode == results[case_id].returncode, case_id
        assert last(real[case_id]) == last(results[case_id]), case_id


def test_the_memory_bound_does_not_depend_on_what_the_imports_map(corpus, tmp_path):
    """PyPI's CUDA build of torch maps ~3.3 GiB on import (the CPU build ~0.8 GiB): the bound is what
    the imports mapped plus the case's budget, so a bigger build ends each case the same way. Here an
    interpreter that maps 4 GiB more at start-up (sitecustomize), run both ways."""
    d, results = corpus
    heavy = tmp_path / "heavy"
    heavy.mkdir()
    (heavy / "sitecustomize.py").write_text("import mmap\n_RESERVED = mmap.mmap(-1, 4 << 30)\n")
    cases = {c.id: c for c in CASES}
    chosen = ["config[resolution_huge]", "checkpoint[noise.pkl]", "image[bomb.png]"]
    forked = run_all([cases[i] for i in chosen], d, extra=(str(heavy),))
    real = run_case(cases[chosen[0]], d, extra=(str(heavy),))
    # (VmPeak varies by a few pages from run to run: thread stacks, allocator arenas)
    assert imports_vm(d, (str(heavy),)) - imports_vm(d) >= 4 * GIB - 16 * 2**20
    last = lambda r: [line for line in r.stderr.splitlines() if line.strip()][-1]  # noqa: E731
    for case_id in chosen:
        assert forked[case_id].returncode == results[case_id].returncode, forked[case_id].stderr[-2000:]
        assert last(forked[case_id]) == last(results[case_id])
    assert real.returncode == results[chosen[0]].returncode and last(real) == last(results[chosen[0]])


# ------------------------------------------------------------------ portrait3d: what is written, in-process
def test_a_page_is_no_more_readable_than_what_it_shows(tmp_path):
    """Issue 22 item 5: a 0600 mesh goes into a 0600 script, a 0600 parsed.yaml into a 0600 page (never
    a 0644 page holding a private file's content); files the user shares give pages they can share."""
    from helpers import fake_trial

    from portrait3d.report import REPORT_ASSETS, write_report

    old = os.umask(0o022)
    try:
        shared = fake_trial(str(tmp_path / "shared"))
        private = fake_trial(str(tmp_path / "private"))
        os.chmod(os.path.join(private, "save", "it8-export", "portrait.glb"), 0o600)
        os.chmod(os.path.join(private, "configs", "parsed.yaml"), 0o600)
        for trial, page, script in ((shared, 0o644, 0o644), (private, 0o600, 0o600)):
            write_report(trial)
            assert os.stat(os.path.join(trial, "save", "index.html")).st_mode & 0o777 == page, trial
            js = os.path.join(trial, "save", REPORT_ASSETS, "portrait.glb.js")
            assert os.stat(js).st_mode & 0o777 == script, trial
        # a page we wrote is ours to rewrite; the user's own needs --overwrite
        write_report(shared)
        with open(os.path.join(shared, "save", "index.html"), "w") as f:
            f.write("mine")
        with pytest.raises(Exception, match="not written by portrait3d; pass --overwrite"):
            write_report(shared)
        write_report(shared, overwrite=True)
        assert "Written by <code>portrait3d</code>" in open(os.path.join(shared, "save", "index.html")).read()
    finally:
        os.umask(old)


def test_metrics_tables_run_no_formula_and_keep_their_rows(tmp_path):
    """Issue 22 item 8: prompts starting with = + - @ are text in metrics.csv (a leading '), and a
    line break or | in a prompt stays inside its cell of metrics.md."""
    import csv

    from portrait3d.batch_metrics import _write_tables

    hostile = ['=HYPERLINK("http://x","y")', "+1+1", "-2", "@SUM(A1)", "a | b\nc", "plain"]
    rows = [
        {"name": f"n{i}", "prompt": p, "clip_score": 20.0 + i, "num_views": 4, "num_reference": 2}
        for i, p in enumerate(hostile)
    ]
    result = {
        "portraits": rows,
        "clip_score": 22.5,
        "clip_score_std": 1.0,
        "num_views": 24,
        "num_reference": 12,
        "num_portraits": 6,
        "clip_model": "clip",
        "inception_weights": None,
        "fid": None,
        "kid_mean": None,
        "kid_std": None,
        "skipped": [],
    }
    _write_tables(str(tmp_path), result)
    cells = [r[1] for r in list(csv.reader(open(tmp_path / "metrics.csv", newline="")))[1:-1]]
    assert cells == ["'" + p for p in hostile[:4]] + ["a | b\nc", "plain"]
    import re

    table = [line for line in open(tmp_path / "metrics.md").read().splitlines() if re.match(r"\| n\d", line)]
    assert len(table) == 6 and all(len(re.findall(r"(?<!\\)\|", line)) == 5 for line in table), table
    assert "| n4 | a \\| b c |" in table[4]


def test_gallery_and_evaluate_take_wrong_typed_fields(tmp_path):
    """Issue 22 item 10: a manifest's fields of the wrong type (files an int, times a string, no name,
    a prompt that is a number) and an it5-export that is a file still give a gallery, not a traceback."""
    from helpers import fake_trial

    from portrait3d.report import write_gallery

    out = tmp_path / "runs"
    fake_trial(str(out / "t"), mesh=False)
    (out / "t" / "save" / "it5-export").write_text("not a folder")
    entries = [
        {"status": "done", "trial": "t", "files": 5, "times": "slow", "prompt": 7, "seed": "x"},
        {"name": "n", "status": 3, "trial": 4, "error": ["x"]},
    ]
    (out / "manifest.jsonl").write_text("".join(json.dumps(e) + "\n" for e in entries))
    page = open(write_gallery(str(out))).read()
    assert page.count('<article class="card"') == 2


def test_a_report_follows_no_link_out_of_its_trial(tmp_path):
    """Issue 22 item 5: JSON files a report shows (metrics, the initialisation's records, status)
    that are symbolic links out of the trial are not read, and a linked file out of it is not listed."""
    from helpers import fake_trial

    from portrait3d.report import write_report

    secret = tmp_path / "secret.json"
    secret.write_text(json.dumps({"clip_score": "SECRET_TOKEN", "camera": {"yaw": "SECRET_TOKEN"}}))
    trial = fake_trial(str(tmp_path / "t"), mesh=False)
    os.makedirs(os.path.join(trial, "save", "it9-eval"))
    os.symlink(secret, os.path.join(trial, "save", "it9-eval", "metrics.json"))
    init = os.path.join(trial, "save", "init", "k")
    os.makedirs(init)
    for name in ("alignment.json", "candidates.json", "timings.json", "inversion.json"):
        os.symlink(secret, os.path.join(init, name))
    os.symlink(secret, os.path.join(trial, "save", "linked.json"))
    page = open(write_report(trial)).read()
    assert "SECRET_TOKEN" not in page and "linked.json" not in page


def test_a_report_links_no_media_out_of_its_trial(tmp_path):
    """Issue 22 item 5, the media: a video, a turntable sheet or a refinement view that is a symbolic
    link out of the trial, and a candidate named ``../..`` out of it by candidates.json, get no link
    (a page that is zipped and sent, or served, must not carry another file); the trial's own do."""
    import imageio.v2 as imageio
    from helpers import fake_trial

    from portrait3d.report import write_gallery, write_report

    secret = tmp_path / "private.mp4"
    secret.write_bytes(b"not for the page")
    trial = fake_trial(str(tmp_path / "runs" / "t"), mesh=False)
    save = os.path.join(trial, "save")
    os.symlink(secret, os.path.join(save, "it9-test.mp4"))
    os.symlink(secret, os.path.join(save, "it9-views.png"))
    os.replace(os.path.join(save, "refine", "refined_00.png"), os.path.join(tmp_path, "refined_00.png"))
    os.symlink(os.path.join(tmp_path, "refined_00.png"), os.path.join(save, "refine", "refined_00.png"))
    init = os.path.join(save, "init", "k")
    os.makedirs(os.path.join(init, "candidates"))
    with open(os.path.join(init, "candidates.json"), "w") as f:
        json.dump({"files": ["candidates/../../../../../private.mp4", "candidates/c0.png"]}, f)
    imageio.imwrite(os.path.join(init, "candidates", "c0.png"), np.zeros((8, 8, 3), np.uint8))
    page = open(write_report(trial)).read()
    links = re.findall(r'(?:src|href)="([^"]*)"', page)
    assert not [u for u in links if "private" in u or u.endswith(("it9-test.mp4", "it9-views.png"))], links
    assert "refine/refined_00.png" not in links and 'src=""' in page
    for own in ("init/k/candidates/c0.png", "refine/view_00.png", "it4-0.png"):
        assert own in links, (own, links)
    # the gallery's card: the linked turntable sheet is not its poster, the linked video not its video
    gallery = open(write_gallery(str(tmp_path / "runs"))).read()
    links = re.findall(r'(?:src|href)="([^"]*)"', gallery)
    assert not [u for u in links if "private" in u or u.endswith(("it9-test.mp4", "it9-views.png"))], links
    assert "t/save/index.html" in links


@pytest.mark.parametrize(
    "error",
    [
        RuntimeError("[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate memory"),
        MemoryError(),
        torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
    ],
)
def test_launch_out_of_memory_is_one_line_saying_so(error):
    """Issue 22 item 9: a threestudio run that runs out of memory, on the CPU too, says so in its one
    line (it was "unexpected RuntimeError … (a bug)"), naming the settings that size the renders."""
    from portrait3d.launch_errors import one_line

    line = one_line(error)
    assert line.startswith(f"out of memory ({type(error).__name__})") and "system.videos.samples" in line

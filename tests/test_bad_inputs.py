"""A corpus of bad inputs to ``python -m gan_prior``, one class of mistake or attack per group.

Every case runs the command's ``__main__`` (``runpy``, as ``python -m gan_prior`` does) in its own
process under an address-space limit (``RLIMIT_AS``), and must end with exactly one ``error:``
line (the last line of stderr) that names the option or file, an exit code ≠ 0, no traceback, and
no marker file from a payload. To keep ~150 cases fast on a loaded machine, the processes are
forked from one interpreter that has imported ``gan_prior`` already (each fork then only runs its
case); :func:`test_real_interpreter_agrees` runs a sample of the cases as real
``python -m gan_prior`` subprocesses and checks they end identically.
"""

from __future__ import annotations

import json
import os
import pickle
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
from safetensors.torch import save_file

from gan_prior import PortraitGAN, save_pyramid, tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GIB = 1 << 30


@dataclass
class Case:
    id: str
    argv: list  # "{d}" is the corpus folder, "{id}" this case's id
    expect: tuple  # substrings of the error line
    limit_gib: float = 3.0  # address space: torch alone maps ~1.5 GiB


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
    write("noise.pkl", os.urandom(256))
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
    with open(os.path.join(d, "good.safetensors"), "rb") as f:
        data = f.read()
    write("pyramid_truncated.safetensors", data[: len(data) // 3])
    write("not_a_dict.pkl", pickle.dumps([1, 2, 3]))
    write("model_not_dict.pkl", pickle.dumps({"model": 5}))

    # --- images -----------------------------------------------------------------------------------------
    import imageio.v2 as imageio

    imageio.imwrite(os.path.join(d, "face.png"), np.full((32, 32, 3), 100, np.uint8))
    imageio.imwrite(os.path.join(d, "wide.png"), np.full((16, 32, 3), 100, np.uint8))
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

    # --- detectors: a module with misbehaving ones --------------------------------------------------------
    os.makedirs(os.path.join(d, "mods"))
    with open(os.path.join(d, "mods", "baddet.py"), "w") as f:
        f.write(
            "def raises(image):\n    raise RuntimeError('boom')\n\n"
            "def text(image):\n    return 'a face'\n\n"
            "def nan_box(image):\n    from gan_prior.alignment import FaceBox\n"
            "    return [FaceBox(float('nan'), 0, 1, 1)]\n\n"
            "class NeedsArgs:\n    def __init__(self, a):\n        pass\n\n"
            "value = 5\n"
        )
    with open(os.path.join(d, "mods", "importfails.py"), "w") as f:
        f.write("raise SystemError('import-time failure')\n")


def _cases() -> list[Case]:
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
    cases = []

    def add(id_, argv, *expect, limit=3.0):
        cases.append(Case(id_, argv, expect, limit))

    # 1. option values: range, type, non-finite --------------------------------------------------------
    for value in ("0", "-5", "1000000000", "abc", "2.5", ""):
        add(f"sample-resolution[{value}]", S + ["--resolution", value], "--resolution")
    add("sample-chunk0", S + ["--chunk", "0"], "--chunk")
    add("sample-frames-1", S + ["--frames", "-1"], "--frames")
    add("sample-frames-huge", S + ["--frames", "10000000000"], "--frames")
    for value in (str(2**70), "-1", "1.5"):
        add(f"sample-seed[{value}]", S + ["--seed", value], "--seed")
    for value in ("nan", "inf", "-inf", "x", "1e400"):
        add(f"sample-truncation[{value}]", S + ["--truncation", value], "--truncation")
    for value in ("nan", "inf"):
        add(f"render-angles[{value}]", R + ["--angles", "0", value], "--angles")
    for value in ("nan", "95", "-1e9"):
        add(
            f"render-elevation[{value}]",
            R + ["--elevation", value, "--pyramid", "{d}/good.safetensors"],
            "--elevation",
        )
    add("render-nothing", R[:-2] + ["--pyramid", "{d}/good.safetensors"], "nothing to render")
    for opt, value in (
        ("--steps", "-1"),
        ("--aligned-resolution", "0"),
        ("--resolution", "0"),
        ("--candidates", "0"),
        ("--sd-resolution", "100"),
        ("--sd-steps", "0"),
        ("--seed", str(2**70)),
        ("--steps", "nan"),
    ):
        add(f"invert{opt}[{value}]", INV + ["--image", "{d}/face.png", opt, value], opt)
    add("invert-prompt-empty", INV + ["--prompt", " "], "--prompt")
    for value in ("0", "-1", "x"):
        add(f"evaluate-columns[{value}]", E + ["--renders", "{d}/views", "--columns", value], "--columns")

    # 2. output folders ---------------------------------------------------------------------------------
    add("out-is-file", S[:4] + ["{d}/afile"] + S[5:], "--out", "afile", "is a file")
    add("out-empty", S[:4] + [""] + S[5:], "--out", "empty")
    add("out-under-file", S[:4] + ["{d}/afile/sub"] + S[5:], "--out", "afile")
    add("out-in-proc", S[:4] + ["/proc/self/status/x"] + S[5:], "--out")
    add("evaluate-out-is-file", E[:-1] + ["{d}/afile", "--renders", "{d}/views"], "--out", "afile")

    # 3. generator checkpoints: missing, not a checkpoint, bad config, payloads, memory bombs -----------------
    for name, expect in (
        ("missing.pkl", "not found"),
        ("empty.pkl", "empty.pkl"),
        ("noise.pkl", "noise.pkl"),
        ("truncated.pkl", "truncated.pkl"),
        ("empty_folder", "config.json"),
        ("afile", "afile"),
        ("good.safetensors", "good.safetensors"),
        ("expanded_state.pth", "expanded_state.pth"),
    ):
        add(f"checkpoint[{name}]", ["sample", "--checkpoint", f"{{d}}/{name}"] + S[3:], expect)
    for name in (
        "w_dim_negative",
        "z_dim_text",
        "render_int",
        "resolution_huge",
        "resolution_odd",
        "bcg_resolution_huge",
        "channels_huge",
        "channel_base_huge",
        "w_dim_huge",
        "mapping_layers_huge",
        "depth_float",
        "background_text",
        "render_unknown",
        "render_nan",
        "unknown_key",
        "config_list",
        "meta_list",
        "invalid_json",
        "deep_json",
        "kind",
    ):
        add(f"config[{name}]", ["sample", "--checkpoint", f"{{d}}/cfg_{name}"] + S[3:], f"cfg_{name}")
    add("weights-truncated", ["sample", "--checkpoint", "{d}/weights_truncated"] + S[3:], "weights_truncated")
    add("weights-nan", ["sample", "--checkpoint", "{d}/weights_nan"] + S[3:], "weights_nan", "NaN")
    for name in ("payload_p0.pkl", "payload_p2.pkl", "payload_p4.pkl", "payload_exec.pkl", "payload_zip.pth"):
        add(f"checkpoint-payload[{name}]", ["sample", "--checkpoint", f"{{d}}/{name}"] + S[3:], name)
        add(f"pyramid-payload[{name}]", R + ["--pyramid", f"{{d}}/{name}"], name)
        add(
            f"vgg16-payload[{name}]",
            INV + ["--image", "{d}/face.png", "--detector", "none", "--vgg16", f"{{d}}/{name}"],
            name,
            limit=4.0,
        )

    # 4. pyramid files -------------------------------------------------------------------------------
    for name, expect in (
        ("level_nan.safetensors", "NaN"),
        ("ws_inf.safetensors", "NaN"),
        ("channels.safetensors", "channels"),
        ("ws_shape.safetensors", "ws"),
        ("ws_width.safetensors", "ws"),
        ("batch0.safetensors", "batch"),
        ("no_ws.safetensors", "ws"),
        ("r0.safetensors", "trigrids_0"),
        ("size.safetensors", "trigrids_8"),
        ("no_levels.safetensors", "trigrids"),
        ("pyramid_truncated.safetensors", "truncated"),
        ("not_a_dict.pkl", "dict"),
        ("model_not_dict.pkl", "model"),
        ("missing.pth", "not found"),
        ("views", "views"),
        ("expanded.pth", "expanded.pth"),
        ("noise.pkl", "noise.pkl"),
    ):
        add(f"pyramid[{name}]", R + ["--pyramid", f"{{d}}/{name}"], name, expect)

    # 5. images and detectors --------------------------------------------------------------------------------
    for name, expect in (
        ("missing.png", "not found"),
        ("noise.png", "noise.png"),
        ("empty.png", "empty.png"),
        ("bomb.png", "bomb.png"),
        ("views", "views"),
        ("wide.png", "square"),
    ):
        add(f"image[{name}]", INV + ["--image", f"{{d}}/{name}", "--detector", "none"], expect, limit=4.0)
    for spec, expect in (
        ("os:system", "os:system"),
        ("no.such.module:f", "no.such.module"),
        ("os:sep", "not callable"),
        ("baddet:raises", "boom"),
        ("baddet:text", "baddet:text"),
        ("baddet:nan_box", "finite"),
        ("baddet:NeedsArgs", "baddet:NeedsArgs"),
        ("baddet:value", "not callable"),
        ("importfails:f", "importfails"),
        ("{d}/afile.xml", "afile.xml"),
        ("retinaface", "retinaface"),
    ):
        add(
            f"detector[{spec.replace('{d}/', '')}]",
            INV + ["--image", "{d}/face.png", "--detector", spec],
            "detector",
            expect,
            limit=4.0,
        )
    add(
        "vgg16-missing",
        INV + ["--image", "{d}/face.png", "--detector", "none", "--vgg16", "{d}/missing.pt"],
        "missing.pt",
    )
    add(
        "vgg16-noise",
        INV + ["--image", "{d}/face.png", "--detector", "none", "--vgg16", "{d}/noise.pkl"],
        "noise.pkl",
        limit=4.0,
    )

    # 6. evaluation inputs -------------------------------------------------------------------------------
    add("evaluate-missing", E + ["--renders", "{d}/nothing"], "--renders", "nothing")
    add("evaluate-hidden-only", E + ["--renders", "{d}/hidden_only"], "--renders", "no images")
    add("evaluate-unreadable", E + ["--renders", "{d}/bad_views"], "--renders", "0.png")
    add("evaluate-bomb", E + ["--renders", "{d}/bomb.png"], "--renders", "bomb.png")
    add("evaluate-reference-alone", E + ["--renders", "{d}/views", "--reference", "{d}/views"], "--inception")
    add(
        "evaluate-inception-payload",
        E + ["--renders", "{d}/views", "--reference", "{d}/views", "--inception", "{d}/payload_p2.pkl"],
        "payload_p2.pkl",
    )
    return cases


CASES = _cases()


def _limit(gib: float):
    def preexec():
        size = int(gib * GIB)
        resource.setrlimit(resource.RLIMIT_AS, (size, size))

    return preexec


def _env(d: str) -> dict:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([ROOT, os.path.join(d, "mods")]),
        "OMP_NUM_THREADS": "1",
        "PORTRAIT3D_CACHE": os.path.join(d, "cache"),
    }
    env.pop("GAN_PRIOR_DEBUG", None)
    return env


def _argv(case: Case, d: str) -> list:
    return [a.replace("{d}", d).replace("{id}", case.id) for a in case.argv]


def run_case(case: Case, d: str) -> subprocess.CompletedProcess:
    """The case as a real ``python -m gan_prior`` subprocess."""
    return subprocess.run(
        [sys.executable, "-m", "gan_prior", *_argv(case, d)],
        capture_output=True,
        text=True,
        env=_env(d),
        cwd=d,
        timeout=600,
        preexec_fn=_limit(case.limit_gib),
    )


# A process that imports gan_prior once, then forks one child per case (read as JSON lines on stdin):
# the child limits its address space, sends stdout/stderr to files and runs ``gan_prior`` as
# ``__main__``; the parent answers each case with its exit status once the child ends.
_ZYGOTE = r"""
import json, os, resource, runpy, sys, traceback
import gan_prior.cli  # the expensive imports (torch), done once
sys.stdout.write("ready\n"); sys.stdout.flush()
running = {}

def reap():
    pid, status = os.waitpid(-1, 0)
    code = os.waitstatus_to_exitcode(status)
    sys.stdout.write(json.dumps([running.pop(pid), code]) + "\n"); sys.stdout.flush()

for line in sys.stdin:
    case_id, argv, limit, out, err, workers = json.loads(line)
    while len(running) >= workers:
        reap()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
            for fd, path in ((1, out), (2, err)):
                f = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                os.dup2(f, fd); os.close(f)
            sys.stdout = open(1, "w", closefd=False); sys.stderr = open(2, "w", closefd=False)
            sys.argv = ["gan_prior"] + argv
            runpy.run_module("gan_prior", run_name="__main__", alter_sys=True)
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
            if not isinstance(e.code, (int, type(None))):
                sys.stderr.write(str(e.code) + "\n")
        except BaseException:
            traceback.print_exc()
            code = 1
        finally:
            sys.stdout.flush(); sys.stderr.flush()
            os._exit(code)
    running[pid] = case_id
while running:
    reap()
"""


def run_all(cases: list, d: str, workers: int = 3) -> dict:
    """Run ``cases`` through the forking interpreter; ``{id: CompletedProcess}``."""
    logs = os.path.join(d, "logs")
    os.makedirs(logs, exist_ok=True)
    z = subprocess.Popen(
        [sys.executable, "-c", _ZYGOTE],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=_env(d),
        cwd=d,
    )
    assert z.stdout.readline().strip() == "ready"
    files = {}
    for i, case in enumerate(cases):
        files[case.id] = (os.path.join(logs, f"{i}.out"), os.path.join(logs, f"{i}.err"))
        z.stdin.write(
            json.dumps([case.id, _argv(case, d), int(case.limit_gib * GIB), *files[case.id], workers]) + "\n"
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
    for text in case.expect:
        assert text.replace("{d}/", "") in errors[0], shown
    assert not [f for f in os.listdir(d) if f.startswith("MARKER")], "a payload ran"
    assert not os.path.exists(os.path.join(d, "out", case.id, "pyramid.safetensors"))


def test_corpus_covers_every_class():
    groups = {c.id.split("[")[0].split("-")[0] for c in CASES}
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

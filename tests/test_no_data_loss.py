"""Nothing a user made is lost, nothing stale is trusted: file modes, temp-file leftovers, --overwrite,
and the initialisation's step cache keyed on its inputs."""

from __future__ import annotations

import json
import os
import re
import signal
import stat
import subprocess
import sys
import time

import imageio.v2 as imageio
import numpy as np
import pytest
import torch

from gan_prior import PortraitGAN, canonical_label, tiny_config
from gan_prior.files import TMP_TAG, atomic_path, remove_stale_temps, write_json, write_text
from gan_prior.media import save_image
from gan_prior.tiny_models import tiny_model_path

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(*args, cwd=None):
    env = {**os.environ, "PYTHONPATH": ROOT, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "gan_prior", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        cwd=cwd,
    )


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("model") / "tiny")
    PortraitGAN.random(tiny_config(), seed=0).save(d)
    return d


# ------------------------------------------------------------------------------------------ files
@pytest.mark.parametrize("umask, expected", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_written_files_follow_the_umask(tmp_path, umask, expected):
    old = os.umask(umask)
    try:
        write_json(str(tmp_path / "a.json"), {"x": 1})
        save_image(str(tmp_path / "b.png"), np.zeros((4, 4, 3), np.uint8))
    finally:
        os.umask(old)
    assert (os.stat(tmp_path / "a.json").st_mode & 0o777) == expected
    assert (os.stat(tmp_path / "b.png").st_mode & 0o777) == expected


def test_a_replaced_file_keeps_its_mode(tmp_path):
    path = tmp_path / "private.json"
    path.write_text("{}")
    os.chmod(path, 0o600)
    write_json(str(path), {"y": 2})
    assert (os.stat(path).st_mode & 0o777) == 0o600 and json.loads(path.read_text()) == {"y": 2}


def test_temp_files_of_dead_writers_are_removed(tmp_path):
    target = tmp_path / "pyramid.safetensors"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".pyramid.safetensors{TMP_TAG}{dead.pid}-abc1_3x9.safetensors"
    live = tmp_path / f".pyramid.safetensors{TMP_TAG}{os.getppid()}-def456gh.safetensors"  # a running process
    other = tmp_path / f".other.json{TMP_TAG}{dead.pid}-x1234567.json"  # another target's temp: its writer's
    for p in (stale, live, other):
        p.write_bytes(b"partial")
    with atomic_path(str(target), ".safetensors") as tmp:
        open(tmp, "wb").write(b"done")
    assert target.read_bytes() == b"done"
    assert not stale.exists()
    assert live.exists() and other.exists()
    assert remove_stale_temps(str(target)) == []


def test_the_users_own_files_beside_a_target_are_never_removed(tmp_path):
    """Only our exact temp-name scheme with a dead writer is ours: old files of the user's that look
    like temporary files (the issue's `.front.png.original`, …) stay, whatever their age."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    users = [
        ".front.png.original",
        ".front.png.20240101",
        ".front.png.k2j4h5g6.png",  # an older version's temp name, without a pid: not provably ours
        ".pyramid.safetensors.backup_1",
        ".image.png.keepthis.png",
        f".front.png{TMP_TAG}{dead.pid}-notours.png",  # 7 random characters: not mkstemp's
        f".front.png{TMP_TAG}{dead.pid}-abcdefgh.png.bak",
        f".front.png{TMP_TAG}x{dead.pid}-abcdefgh.png",
    ]
    for name in users:
        (tmp_path / name).write_bytes(b"mine")
        os.utime(tmp_path / name, (time.time() - 30 * 86400, time.time() - 30 * 86400))
    ours = tmp_path / f".front.png{TMP_TAG}{dead.pid}-abcdefgh.png"
    ours.write_bytes(b"partial")
    for target in ("front.png", "image.png"):
        save_image(str(tmp_path / target), np.zeros((4, 4, 3), np.uint8))
    write_json(str(tmp_path / "pyramid.safetensors"), {})
    assert sorted(os.listdir(tmp_path)) == sorted(users + ["front.png", "image.png", "pyramid.safetensors"])


def test_overwrite_keeps_permission_bits_only(tmp_path):
    """A file replaced with --overwrite keeps its rwx bits, masked by the umask, never setuid/setgid/sticky."""
    path = tmp_path / "tool.json"
    path.write_text("{}")
    os.chmod(path, 0o6755 | 0o1000)
    old = os.umask(0o022)
    try:
        write_json(str(path), {"y": 2})
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o755
        os.chmod(path, 0o666)
        write_json(str(path), {"y": 3})
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o644  # the umask masks a replaced file too
        page = tmp_path / "page.html"  # a page holding a private file's content stays private
        write_text(str(page), "secret", mode_mask=0o700)
        assert stat.S_IMODE(os.stat(page).st_mode) == 0o600
    finally:
        os.umask(old)


def test_a_writer_killed_mid_write_leaves_nothing_behind_after_the_next_write(tmp_path):
    target = tmp_path / "video.mp4"
    code = (
        "import sys, time; sys.path.insert(0, %r)\n"
        "from gan_prior.files import atomic_path\n"
        "with atomic_path(%r, '.mp4') as tmp:\n"
        "    open(tmp, 'wb').write(b'half'); print('writing', flush=True); time.sleep(60)\n"
    ) % (ROOT, str(target))
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "writing"
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    left = [f for f in os.listdir(tmp_path) if f.startswith(".video.mp4")]
    assert len(left) == 1 and not target.exists()  # the kill left its temp file
    with atomic_path(str(target), ".mp4") as tmp:
        open(tmp, "wb").write(b"full")
    assert sorted(os.listdir(tmp_path)) == ["video.mp4"]


# ------------------------------------------------------------------------------- --overwrite
def test_sample_never_replaces_a_result_silently(model_dir, tmp_path):
    out = tmp_path / "seed"
    base = ["sample", "--checkpoint", model_dir, "--out", str(out), "--resolution", "8"]
    r = run(*base, "--frames", "2", "--seed", "1")
    assert r.returncode == 0, r.stderr
    video, pyramid = (out / "turntable.mp4").read_bytes(), (out / "pyramid.safetensors").read_bytes()
    r = run(*base, "--frames", "0", "--seed", "2")  # the data loss: replaced the video by 0 bytes
    assert r.returncode == 2 and r.stderr.strip().splitlines()[-1] == (
        f"error: --out: {out} already holds pyramid.safetensors, front.png, image.png; pass --overwrite to "
        "replace them, or choose another folder"
    )
    assert (out / "pyramid.safetensors").read_bytes() == pyramid
    r = run(*base, "--frames", "0", "--seed", "2", "--overwrite")
    assert r.returncode == 0, r.stderr
    assert f"replacing pyramid.safetensors, front.png, image.png in {out} (--overwrite)" in r.stderr
    assert "turntable" not in r.stdout  # not asked for, not written, not claimed
    assert (out / "turntable.mp4").read_bytes() == video  # untouched
    assert (out / "pyramid.safetensors").read_bytes() != pyramid


def test_render_and_evaluate_refuse_to_replace_without_overwrite(model_dir, tmp_path):
    r = run(
        "sample",
        "--checkpoint",
        model_dir,
        "--out",
        str(tmp_path / "s"),
        "--resolution",
        "8",
        "--frames",
        "0",
    )
    assert r.returncode == 0, r.stderr
    views = tmp_path / "views"
    args = [
        "render",
        "--checkpoint",
        model_dir,
        "--pyramid",
        str(tmp_path / "s" / "pyramid.safetensors"),
        "--out",
        str(views),
        "--resolution",
        "8",
        "--frames",
        "0",
        "--angles",
        "0",
        "90",
    ]
    assert run(*args).returncode == 0
    stamp = os.path.getmtime(views / "views.png")
    r = run(*args)
    assert r.returncode == 2 and "azimuth_+000.0.png, azimuth_+090.0.png, views.png" in r.stderr
    assert "--overwrite" in r.stderr and os.path.getmtime(views / "views.png") == stamp
    # evaluate into the folder it evaluates: its own outputs and hidden files are not views
    imageio.imwrite(views / ".thumbnail.png", np.zeros((8, 8, 3), np.uint8))
    clip = tiny_model_path("clip")
    ev = [
        "evaluate",
        "--renders",
        str(views),
        "--prompt",
        "a face",
        "--out",
        str(views),
        "--columns",
        "2",
        "--clip",
        clip,
    ]
    r = run(*ev)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["num_renders"] == 3  # two views + the sheet
    r = run(*ev)
    assert r.returncode == 2 and "already holds metrics.json, contact_sheet.png" in r.stderr
    r = run(*ev, "--overwrite")
    assert r.returncode == 0 and json.loads(r.stdout)["num_renders"] == 3  # not 4: contact_sheet.png skipped


# --------------------------------------------------------------------------- the initialisation cache
def _face(path, seed):
    G = PortraitGAN.random(tiny_config(), seed=0)
    with torch.no_grad():
        c = canonical_label(1)
        ws = G.mapping(torch.randn(1, G.cfg.z_dim, generator=torch.Generator().manual_seed(seed)), c)
        image = G.render(G.synthesize_pyramid(ws), ws, c, resolution=32, deterministic=True)["image"]
    save_image(str(path), image[0])


def test_invert_reuses_only_what_was_made_from_the_same_inputs(model_dir, tmp_path):
    _face(tmp_path / "a.png", 1)
    _face(tmp_path / "b.png", 2)
    out = tmp_path / "inv"

    def invert(image, *extra):
        return run(
            "invert",
            "--checkpoint",
            model_dir,
            "--image",
            str(tmp_path / image),
            "--out",
            str(out),
            "--steps",
            "2",
            "--resolution",
            "32",
            "--detector",
            "none",
            "--aligned-resolution",
            "32",
            *extra,
        )

    assert invert("a.png").returncode == 0
    first = (out / "pyramid.safetensors").read_bytes()
    r = invert("a.png")
    assert r.returncode == 0 and "Reusing the initialisation" in r.stdout
    for image, extra, changed in (("b.png", (), "image"), ("a.png", ("--steps", "3"), "inversion")):
        r = invert(image, *extra)  # other inputs: refused, the result kept
        assert r.returncode == 2, r.stderr
        line = r.stderr.strip().splitlines()[-1]
        assert line.startswith(f"error: {out}: holds a") and changed in line and "--overwrite" in line
        assert (out / "pyramid.safetensors").read_bytes() == first
    r = invert("b.png", "--overwrite")
    assert r.returncode == 0, r.stderr
    assert (out / "pyramid.safetensors").read_bytes() != first
    assert json.load(open(out / "alignment.json"))["inputs"]["image"]["sha1"]
    # the photo edited in place (same name) is another input
    _face(tmp_path / "b.png", 3)
    assert invert("b.png").returncode == 2


def test_a_damaged_cached_step_is_recomputed(model_dir, tmp_path):
    from gan_prior.inversion import InversionConfig
    from gan_prior.portrait_init import PortraitInitConfig, initialize_portrait

    _face(tmp_path / "a.png", 1)
    G = PortraitGAN.from_checkpoint(model_dir)
    cfg = PortraitInitConfig(
        image=str(tmp_path / "a.png"),
        detector="none",
        aligned_resolution=32,
        allow_random_vgg16=True,
        inversion=InversionConfig(steps=2, resolution=32),
    )
    out = str(tmp_path / "init")
    log = []
    levels, ws = initialize_portrait(G, model_dir, cfg, out, log=log.append)
    # a truncated pyramid beside a finished inversion.json: rebuilt from w_plus, not trusted
    path = os.path.join(out, "pyramid.safetensors")
    data = open(path, "rb").read()
    open(path + ".cut", "wb").write(data[: len(data) // 2])
    os.replace(path + ".cut", path)  # a new file: the tensors loaded above may map the old one
    log.clear()
    levels2, ws2 = initialize_portrait(G, model_dir, cfg, out, log=log.append)
    assert any("Rebuilding" in line for line in log) and not any("Inverting" in line for line in log)
    assert torch.equal(ws2, ws) and all(torch.equal(levels2[r], levels[r]) for r in levels)
    # a pyramid with NaN: recomputed too
    bad = {r: t.clone() for r, t in levels.items()}
    bad[8][0, 0, 0, 0, 0] = float("nan")
    from safetensors.torch import save_file  # save_pyramid refuses NaN, as it should

    save_file(
        {**{f"trigrids_{r}": t.contiguous() for r, t in bad.items()}, "ws": ws.contiguous()}, path + ".nan"
    )
    os.replace(path + ".nan", path)
    log.clear()
    levels3, _ = initialize_portrait(G, model_dir, cfg, out, log=log.append)
    assert any("NaN" in line for line in log) and torch.isfinite(levels3[8]).all()
    # an unreadable aligned.png: the alignment (and so the inversion) is redone
    open(os.path.join(out, "bad.png"), "wb").write(b"not a png")
    os.replace(os.path.join(out, "bad.png"), os.path.join(out, "aligned.png"))
    log.clear()
    initialize_portrait(G, model_dir, cfg, out, log=log.append)
    assert any("Recomputing the alignment step" in line for line in log)
    assert any("Inverting" in line for line in log)


def test_candidates_outside_the_folder_are_not_followed(tmp_path):
    from gan_prior.portrait_init import PortraitInitConfig, _check_candidates, step_inputs

    out = tmp_path / "init"
    (out / "candidates").mkdir(parents=True)
    imageio.imwrite(out / "candidates" / "c0.png", np.zeros((8, 8, 3), np.uint8))
    secret = tmp_path / "secret.png"
    imageio.imwrite(secret, np.zeros((8, 8, 3), np.uint8))
    os.symlink(secret, out / "candidates" / "link.png")
    assert _check_candidates(str(out), {"files": ["candidates/c0.png"]}) is None
    for files in (
        [str(secret)],
        ["../secret.png"],
        ["candidates/../../secret.png"],
        ["candidates/link.png"],
        ["candidates/missing.png"],
        [],
        "candidates/c0.png",
        [5],
    ):
        assert _check_candidates(str(out), {"files": files}) is not None, files
    cfg = PortraitInitConfig(prompt="a face", allow_random_vgg16=True)
    a = step_inputs(cfg, "ckpt", "candidates")
    cfg.candidate_seed = 1
    assert step_inputs(cfg, "ckpt", "candidates") != a


def test_the_photo_is_kept_with_its_initialisation_and_errors_name_the_users_file(model_dir, tmp_path):
    """source=image: a byte copy of the photo in <init>/input/ (the report shows it from there, and a
    moved original does not break the record); a bad photo's error names the user's file, not the copy."""
    from gan_prior.inversion import InversionConfig
    from gan_prior.portrait_init import PortraitInitConfig, initialize_portrait

    _face(tmp_path / "me.png", 1)
    G = PortraitGAN.from_checkpoint(model_dir)
    settings = dict(
        detector="none",
        aligned_resolution=32,
        allow_random_vgg16=True,
        inversion=InversionConfig(steps=1, w_avg_samples=8, resolution=32),
    )
    out = tmp_path / "init"
    initialize_portrait(
        G, model_dir, PortraitInitConfig(image=str(tmp_path / "me.png"), **settings), str(out)
    )
    assert (out / "input" / "me.png").read_bytes() == (tmp_path / "me.png").read_bytes()
    assert json.load(open(out / "alignment.json"))["report"][0]["name"] == "input/me.png"
    (tmp_path / "noise.png").write_bytes(b"\x89PNG not really")
    bad = PortraitInitConfig(image=str(tmp_path / "noise.png"), **settings)
    with pytest.raises(ValueError, match="^" + re.escape(f"{tmp_path}/noise.png: not a readable image")):
        initialize_portrait(G, model_dir, bad, str(tmp_path / "init2"))

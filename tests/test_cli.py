"""`python -m gan_prior sample | render | invert` as a user runs them, on tiny random models."""

import json
import os
import subprocess
import sys

import cv2
import imageio.v2 as imageio
import pytest
import torch

from gan_prior import PortraitGAN, canonical_label, load_pyramid, save_pyramid, tiny_config
from gan_prior.media import to_uint8

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(*args):
    # nothing but this checkout on the path: gan_prior itself makes PyPI's torchvision importable on a
    # CPU-only torch (gan_prior.torchvision_compat)
    env = {**os.environ, "PYTHONPATH": ROOT}
    return subprocess.run(
        [sys.executable, "-m", "gan_prior", *args], capture_output=True, text=True, env=env, timeout=300
    )


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("model") / "tiny")
    PortraitGAN.random(tiny_config(), seed=0).save(d)
    return d


def test_sample_then_render(model_dir, tmp_path):
    out = tmp_path / "seed7"
    r = run(
        "sample",
        "--checkpoint",
        model_dir,
        "--seed",
        "7",
        "--out",
        str(out),
        "--resolution",
        "16",
        "--frames",
        "4",
    )
    assert r.returncode == 0, r.stderr
    assert "turntable" in r.stderr  # progress bar
    levels, ws = load_pyramid(str(out / "pyramid.safetensors"))
    assert sorted(levels) == [8, 16, 32] and ws.shape == (1, 6, 64)
    assert imageio.imread(out / "front.png").shape == (16, 16, 3)
    # the GAN's own output: neural render at 32² (tiny) → superresolution → 128² (512² for model_512)
    G = PortraitGAN.from_checkpoint(model_dir)
    with torch.no_grad():
        expected = G.synthesize(ws, canonical_label(1), pyramid=levels, deterministic=True)["image"][0]
    image = imageio.imread(out / "image.png")
    assert image.shape == (128, 128, 3)
    assert abs(image.astype(int) - to_uint8(expected).astype(int)).max() <= 1
    with imageio.get_reader(str(out / "turntable.mp4"), "ffmpeg") as video:
        assert video.count_frames() == 4
    # same seed, same pyramid
    r2 = run(
        "sample",
        "--checkpoint",
        model_dir,
        "--seed",
        "7",
        "--out",
        str(tmp_path / "again"),
        "--resolution",
        "16",
        "--frames",
        "0",
    )
    assert r2.returncode == 0, r2.stderr
    assert torch.equal(load_pyramid(str(tmp_path / "again" / "pyramid.safetensors"))[0][8], levels[8])

    # render the official gallery format of the same pyramid
    official = tmp_path / "000_pyramid_trigrid.pth"
    save_pyramid(str(official), levels, ws, fmt="official")
    r3 = run(
        "render",
        "--checkpoint",
        model_dir,
        "--pyramid",
        str(official),
        "--out",
        str(tmp_path / "views"),
        "--resolution",
        "16",
        "--frames",
        "0",
        "--angles",
        "0",
        "90",
    )
    assert r3.returncode == 0, r3.stderr
    front = imageio.imread(tmp_path / "views" / "azimuth_+000.0.png")
    assert (front == imageio.imread(out / "front.png")).all()
    assert imageio.imread(tmp_path / "views" / "views.png").shape == (16, 32, 3)


def test_clear_errors(model_dir, tmp_path):
    r = run(
        "render",
        "--checkpoint",
        model_dir,
        "--pyramid",
        str(tmp_path / "missing.pth"),
        "--out",
        str(tmp_path),
    )
    assert r.returncode == 2 and "missing.pth: file not found" in r.stderr
    bad = tmp_path / "noise.pkl"
    bad.write_bytes(os.urandom(64))
    r = run("sample", "--checkpoint", str(bad), "--out", str(tmp_path / "x"))
    assert r.returncode == 2 and "noise.pkl" in r.stderr


def test_invert_an_aligned_image(model_dir, tmp_path):
    G = PortraitGAN.from_checkpoint(model_dir)
    from gan_prior import canonical_label
    from gan_prior.media import save_image

    with torch.no_grad():
        c = canonical_label(1)
        ws = G.mapping(torch.randn(1, G.cfg.z_dim), c)
        target = G.render(G.synthesize_pyramid(ws), ws, c, resolution=32, deterministic=True)["image"]
    save_image(str(tmp_path / "target.png"), target[0])
    args = [
        "invert",
        "--checkpoint",
        model_dir,
        "--image",
        str(tmp_path / "target.png"),
        "--out",
        str(tmp_path / "inv"),
        "--steps",
        "5",
        "--resolution",
        "32",
        "--detector",
        "none",
        "--aligned-resolution",
        "32",
    ]
    r = run(*args)
    assert r.returncode == 0, r.stderr
    assert "inversion" in r.stderr and "random" in r.stderr  # progress bar, and the no-VGG warning
    levels, ws_out = load_pyramid(str(tmp_path / "inv" / "pyramid.safetensors"))
    assert sorted(levels) == [8, 16, 32] and ws_out.shape == ws.shape
    assert imageio.imread(tmp_path / "inv" / "comparison.png").shape == (32, 64, 3)
    assert imageio.imread(tmp_path / "inv" / "aligned.png").shape == (32, 32, 3)
    stamp = os.path.getmtime(tmp_path / "inv" / "pyramid.safetensors")
    r = run(*args)  # a second run reuses the finished steps
    assert r.returncode == 0 and "Reusing the initialisation" in r.stdout, r.stderr
    assert os.path.getmtime(tmp_path / "inv" / "pyramid.safetensors") == stamp


def test_invert_errors_name_the_problem(model_dir, tmp_path):
    imageio.imwrite(tmp_path / "wide.png", (torch.rand(16, 32, 3) * 255).byte().numpy())
    r = run(
        "invert",
        "--checkpoint",
        model_dir,
        "--image",
        str(tmp_path / "wide.png"),
        "--out",
        str(tmp_path / "x"),
        "--detector",
        "none",
    )
    assert r.returncode != 0 and "wide.png" in r.stderr and "square" in r.stderr
    imageio.imwrite(tmp_path / "flat.png", torch.full((64, 64, 3), 128, dtype=torch.uint8).numpy())
    r = run(
        "invert",
        "--checkpoint",
        model_dir,
        "--image",
        str(tmp_path / "flat.png"),
        "--out",
        str(tmp_path / "y"),
    )
    assert r.returncode != 0 and "flat.png: no face found" in r.stderr
    assert len([line for line in r.stderr.splitlines() if line.startswith("error:")]) == 1
    r = run(
        "invert",
        "--checkpoint",
        model_dir,
        "--image",
        str(tmp_path / "missing.png"),
        "--out",
        str(tmp_path / "z"),
    )
    assert r.returncode != 0 and "missing.png not found" in r.stderr


def test_invert_from_a_prompt(model_dir, tmp_path):
    from gan_prior.tiny_models import tiny_model_path

    out = tmp_path / "prompt"
    r = run(
        "invert",
        "--checkpoint",
        model_dir,
        "--prompt",
        "portrait of a woman",
        "--sd-model",
        tiny_model_path("stable-diffusion"),
        "--candidates",
        "2",
        "--seed",
        "7",
        "--sd-steps",
        "2",
        "--sd-resolution",
        "64",
        "--detector",
        "none",
        "--aligned-resolution",
        "32",
        "--steps",
        "2",
        "--resolution",
        "32",
        "--out",
        str(out),
    )
    assert r.returncode == 0, r.stderr
    cands = json.load(open(out / "candidates.json"))
    assert cands["seeds"] == [7, 8] and cands["prompt"] == "upper body photo, portrait of a woman"
    assert [imageio.imread(out / f).shape for f in cands["files"]] == [(64, 64, 3)] * 2
    chosen = json.load(open(out / "alignment.json"))["chosen"]
    aligned = imageio.imread(out / "aligned.png")
    first = imageio.imread(out / cands["files"][chosen])
    assert aligned.shape == (32, 32, 3)
    assert (
        abs(aligned.astype(int) - cv2.resize(first, (32, 32), interpolation=cv2.INTER_AREA).astype(int)).max()
        <= 1
    )
    assert sorted(load_pyramid(str(out / "pyramid.safetensors"))[0]) == [8, 16, 32]


def test_tiny_checkpoint_random_vgg16_and_defaults_in_help(tmp_path, monkeypatch):
    """What the README offers a newcomer without weights: `--checkpoint tiny` (built on first use into
    PORTRAIT3D_CACHE), `--vgg16 random`, and --help that shows each default."""
    monkeypatch.setenv("PORTRAIT3D_CACHE", str(tmp_path / "cache"))
    r = run(
        "sample", "--checkpoint", "tiny", "--out", str(tmp_path / "s"), "--resolution", "16", "--frames", "0"
    )
    assert r.returncode == 0, r.stderr
    levels, ws = load_pyramid(str(tmp_path / "s" / "pyramid.safetensors"))
    assert sorted(levels) == [8, 16, 32] and torch.isfinite(ws).all()
    assert os.listdir(tmp_path / "cache")  # the tiny GAN was built there
    assert not (tmp_path / "s" / "turntable.mp4").exists()  # --frames 0: no video asked for, none written
    imageio.imwrite(tmp_path / "face.png", (torch.rand(32, 32, 3) * 255).byte().numpy())
    r = run(
        "invert",
        "--checkpoint",
        "tiny",
        "--image",
        str(tmp_path / "face.png"),
        "--out",
        str(tmp_path / "inv"),
        "--steps",
        "1",
        "--resolution",
        "16",
        "--detector",
        "none",
        "--aligned-resolution",
        "32",
        "--vgg16",
        "random",
    )
    assert r.returncode == 0, r.stderr
    assert "randomly initialised VGG16" in r.stderr
    help_text = " ".join(run("sample", "--help").stdout.split())  # argparse wraps lines
    assert "(default: 120)" in help_text and "(default: 0.7)" in help_text


@pytest.mark.parametrize(
    "package, debug_env", [("gan_prior.cli", "GAN_PRIOR_DEBUG"), ("portrait3d.cli", "PORTRAIT3D_DEBUG")]
)
def test_one_contract_for_both_commands(package, debug_env, monkeypatch, capsys):
    """`python -m gan_prior` and `portrait3d` end the same way: a bad input (ValueError, a file that
    cannot be read, nesting too deep) is one `error:` line and exit 2, out of memory (CPU too) exit 2
    saying so, a bug one line and exit 1 naming the debug variable, which shows the traceback."""
    import argparse
    import importlib

    cli = importlib.import_module(package)
    args = argparse.Namespace(command="report", out="o", overrides=[])

    class Parser:  # the parsed command line: the command itself is what fails
        def parse_args(self, argv=None):
            return args

        def parse_known_args(self, argv=None):
            return args, []

    monkeypatch.setattr(cli, "build_parser", Parser)
    if package == "gan_prior.cli":
        monkeypatch.setattr(cli, "_check_args", lambda args: None)
    monkeypatch.delenv(debug_env, raising=False)
    argv = ["report"]

    def ends_with(error, code, *expect):
        def fail(args):
            raise error

        args.func = fail
        assert cli.main(argv) == code
        err = capsys.readouterr().err
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), err
        for text in expect:
            assert text in lines[0], err

    ends_with(ValueError("t: bad value\nsecond line"), 2, "t: bad value second line")
    ends_with(PermissionError(13, "Permission denied", "t/save"), 2, "t/save: Permission denied")
    ends_with(RecursionError("maximum recursion depth exceeded"), 2, "nested too deeply")
    ends_with(
        RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory"),
        2,
        "out of memory (RuntimeError)",
    )
    ends_with(KeyError("name"), 1, "unexpected KeyError", f"set {debug_env}=1 for the traceback")
    monkeypatch.setenv(debug_env, "1")
    args.func = lambda args: {}["name"]
    with pytest.raises(KeyError):
        cli.main(argv)

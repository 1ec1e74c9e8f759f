"""Tests for gan_prior.tiny_models: the tiny random Stable Diffusion and its build cache."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from gan_prior import tiny_models
from gan_prior.tiny_models import (
    CACHE_ENV_VAR,
    MARKER_FILE,
    register_tiny_model,
    tiny_cache_root,
    tiny_model_path,
)

SD = "stable-diffusion"


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.fixture(scope="module")
def sd_cache(tmp_path_factory):
    """Build the tiny SD once into a fresh cache that already holds debris from crashed builds."""
    cache = tmp_path_factory.mktemp("p3d_cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(CACHE_ENV_VAR, str(cache))
        root = tiny_cache_root()
        final_name = f"{SD}-{tiny_models.TINY_MODELS[SD].version}"
        # a half-written temp folder of a process that died mid-build
        dead = root / f".{final_name}.tmp-{_dead_pid()}-abc123de"
        (dead / "unet").mkdir(parents=True)
        # a user's folder that merely starts like one: not provably ours, never removed
        (root / f".{final_name}.tmp-mine" / "notes").mkdir(parents=True)
        (dead / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"\0" * 10)
        # an unfinished folder at the final path (no marker), e.g. copied by hand
        (root / final_name / "unet").mkdir(parents=True)
        (root / final_name / "model_index.json").write_text("{not json")
        path = tiny_model_path(SD)
        yield Path(path), dead


def test_build_load_and_generate(sd_cache):
    from diffusers import StableDiffusionPipeline

    path, _ = sd_cache
    assert path.parent == tiny_cache_root()
    assert (path / "model_index.json").is_file()
    assert (path / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    assert json.loads((path / MARKER_FILE).read_text())["name"] == SD

    pipe = StableDiffusionPipeline.from_pretrained(str(path))
    assert pipe.tokenizer.model_max_length == 77
    assert pipe.text_encoder.config.max_position_embeddings == 77
    assert pipe.unet.config.cross_attention_dim == pipe.text_encoder.config.hidden_size
    out = pipe(
        "a portrait of a person",
        num_inference_steps=2,
        height=64,
        width=64,
        output_type="pt",
        generator=torch.Generator().manual_seed(0),
    ).images
    assert out.shape == (1, 3, 64, 64)
    assert torch.isfinite(out).all()
    with torch.no_grad():  # SD geometry: 512x512 RGB -> 4x64x64 latents
        latents = pipe.vae.encode(torch.zeros(1, 3, 512, 512)).latent_dist.mean
    assert latents.shape == (1, 4, 64, 64)


def test_debris_is_handled(sd_cache):
    path, dead = sd_cache
    assert not dead.exists()  # the dead process's temp folder was removed
    mine = path.parent / f".{path.name}.tmp-mine"
    assert (mine / "notes").is_dir()  # the user's look-alike stays
    leftovers = [p.name for p in path.parent.iterdir() if p.name not in (path.name, mine.name)]
    assert all(n.endswith(".lock") for n in leftovers), leftovers


def test_second_call_does_not_rebuild(sd_cache, monkeypatch):
    path, _ = sd_cache
    marker = path / MARKER_FILE
    unet = path / "unet" / "diffusion_pytorch_model.safetensors"
    before = (marker.stat().st_mtime_ns, unet.stat().st_mtime_ns)

    def boom(_path: str) -> None:
        raise AssertionError("rebuilt an existing model")

    spec = tiny_models.TINY_MODELS[SD]
    monkeypatch.setitem(tiny_models.TINY_MODELS, SD, tiny_models.TinyModel(boom, spec.version))
    assert tiny_model_path(SD) == str(path)
    assert (marker.stat().st_mtime_ns, unet.stat().st_mtime_ns) == before


def test_version_change_builds_new_folder(tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_ENV_VAR, str(tmp_path))
    calls = []

    def build(path: str) -> None:
        calls.append(path)
        Path(path, "weights.txt").write_text("x")

    monkeypatch.setattr(tiny_models, "TINY_MODELS", dict(tiny_models.TINY_MODELS))
    register_tiny_model("dummy", build, "v1")
    p1 = tiny_model_path("dummy")
    assert tiny_model_path("dummy") == p1 and len(calls) == 1
    register_tiny_model("dummy", build, "v2")
    p2 = tiny_model_path("dummy")
    assert p2 != p1 and len(calls) == 2 and Path(p2, "weights.txt").is_file()


def test_losing_a_race_uses_the_winners_folder(tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_ENV_VAR, str(tmp_path))
    final = tiny_cache_root() / "racer-v1"

    def build(path: str) -> None:
        Path(path, "mine.txt").write_text("loser")
        # another process finishes first and moves its folder into place
        final.mkdir(parents=True)
        (final / "theirs.txt").write_text("winner")
        (final / MARKER_FILE).write_text(json.dumps({"name": "racer", "version": "v1"}))

    monkeypatch.setitem(tiny_models.TINY_MODELS, "racer", tiny_models.TinyModel(build, "v1"))
    assert tiny_model_path("racer") == str(final)
    assert (final / "theirs.txt").is_file() and not (final / "mine.txt").exists()
    names = [p.name for p in final.parent.iterdir() if not p.name.endswith(".lock")]
    assert names == ["racer-v1"]  # the loser's temp folder was removed


def test_unknown_name():
    with pytest.raises(KeyError):
        tiny_model_path("no-such-model")


def test_default_cache_location(monkeypatch, tmp_path):
    monkeypatch.delenv(CACHE_ENV_VAR, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert tiny_cache_root() == (tmp_path / ".cache" / "portrait3d" / "tiny").resolve()
    assert os.environ.get(CACHE_ENV_VAR) is None

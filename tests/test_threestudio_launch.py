"""threestudio's own launch.py with configs/portrait3d-tiny.yaml: train → resume → export, on CPU.

Runs in an isolated work tree (links to $THREESTUDIO_ROOT) with tiny random models built on
first use into a temporary cache; skipped, with the reason, when threestudio is absent.
"""
import csv
import glob
import math
import os

import pytest
import torch

from conftest import requires_threestudio

pytestmark = requires_threestudio


def _tail(proc) -> str:
    return (proc.stdout[-3000:] + "\n" + proc.stderr[-6000:])


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from threestudio_env import launch, make_worktree

    base = tmp_path_factory.mktemp("ts")
    tree = make_worktree(str(base / "threestudio"))
    cache = str(base / "cache")
    proc = launch(tree, cache, "--config", "configs/portrait3d-tiny.yaml", "--train", "tag=smoke",
                  "use_timestamp=false")
    assert proc.returncode == 0, _tail(proc)
    trial = os.path.join(tree, "outputs", "portrait3d-tiny", "smoke")
    return tree, cache, trial, launch


def test_train_writes_checkpoints_video_and_finite_losses(run):
    tree, cache, trial, _ = run
    assert os.path.isfile(os.path.join(trial, "ckpts", "last.ckpt"))
    assert os.path.isfile(os.path.join(trial, "save", "it6-test.mp4"))
    metrics = glob.glob(os.path.join(trial, "csv_logs", "**", "metrics.csv"), recursive=True)
    rows = list(csv.DictReader(open(metrics[0])))
    losses = [float(r["train/loss"]) for r in rows if r.get("train/loss")]
    assert len(losses) == 6 and all(math.isfinite(v) for v in losses)
    assert any(r.get("train/loss_entropy") for r in rows)


def test_pyramid_changed_decoder_and_torgb_did_not(run):
    tree, cache, trial, _ = run
    from gan_prior import PortraitGAN, canonical_label
    from gan_prior.tiny_models import tiny_model_path

    os.environ["PORTRAIT3D_CACHE"] = cache
    prior = PortraitGAN.from_checkpoint(tiny_model_path("portrait-gan"))
    state = torch.load(os.path.join(trial, "ckpts", "last.ckpt"), map_location="cpu", weights_only=True)["state_dict"]
    with torch.no_grad():  # the initializer's defaults: seed 0, truncation 0.7
        z = torch.randn(1, prior.cfg.z_dim, generator=torch.Generator().manual_seed(0))
        ws = prior.mapping(z, canonical_label(1), truncation_psi=0.7)
        init = prior.synthesize_pyramid(ws)
    for r in (8, 16, 32):
        assert not torch.allclose(state[f"geometry.trigrids_{r}"], init[r]), r  # SDS moved every level
        assert (state[f"geometry.trigrids_{r}"] - init[r]).abs().max() < 10
    assert torch.allclose(state["material.ws"], ws)
    for k, v in prior.decoder.state_dict().items():
        assert torch.equal(state[f"geometry.decoder.{k}"], v), k
    for k, v in prior.torgb.state_dict().items():
        assert torch.equal(state[f"material.torgb.{k}"], v), k
    assert not any(k.startswith("guidance.") for k in state)


def test_resume_then_export_mesh_with_vertex_colours(run):
    tree, cache, trial, launch = run
    parsed = os.path.join(trial, "configs", "parsed.yaml")
    last = os.path.join(trial, "ckpts", "last.ckpt")
    proc = launch(tree, cache, "--config", parsed, "--train", f"resume={last}", "trainer.max_steps=8")
    assert proc.returncode == 0, _tail(proc)
    assert torch.load(last, weights_only=True)["global_step"] == 8  # continued from step 6
    proc = launch(tree, cache, "--config", parsed, "--export", f"resume={last}")
    assert proc.returncode == 0, _tail(proc)
    objs = glob.glob(os.path.join(trial, "save", "it8-export", "*.obj"))
    assert objs, _tail(proc)
    verts = [line.split() for line in open(objs[0]) if line.startswith("v ")]
    assert len(verts) > 10 and all(len(v) == 7 for v in verts)  # v x y z r g b
    colours = torch.tensor([[float(x) for x in v[4:]] for v in verts])
    assert ((colours >= 0) & (colours <= 1)).all()
    positions = torch.tensor([[float(x) for x in v[1:4]] for v in verts])
    assert positions.abs().max() <= 0.35 + 1e-4  # inside the tri-grid cube

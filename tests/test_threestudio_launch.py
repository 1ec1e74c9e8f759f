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


SHORT = ["trainer.max_steps=2", "trainer.val_check_interval=2", "checkpoint.every_n_train_steps=2",
         "data.n_test_views=2"]


def swapped_guidance_config(tree, tmp_path, tag, guidance_type, guidance, loss, trained=False) -> str:
    """The tiny config with another guidance, written to a file (a swap by configuration only)."""
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(os.path.join(tree, "configs", "portrait3d-tiny.yaml"))
    sd = "${system.prompt_processor.pretrained_model_name_or_path}"
    cfg.tag, cfg.use_timestamp = tag, False
    cfg.system.guidance_type = guidance_type
    cfg.system.guidance = {"pretrained_model_name_or_path": sd, "half_precision_weights": False,
                           "min_step_percent": 0.02, "max_step_percent": 0.4, **guidance}
    cfg.system.loss = {**loss, "lambda_entropy": 0.001}
    if trained:
        cfg.system.optimizer.params["guidance"] = {"lr": 1e-3}
    path = str(tmp_path / f"{tag}.yaml")
    OmegaConf.save(cfg, path)
    return path


def test_swap_prompt_processor_options_negative_prompt_and_perp_neg(run):
    tree, cache, trial, launch = run
    proc = launch(tree, cache, "--config", "configs/portrait3d-tiny.yaml", "--train", "tag=perpneg",
                  "use_timestamp=false", "system.prompt_processor.negative_prompt=blurry, low quality",
                  "system.prompt_processor.use_perp_neg=true", *SHORT)
    assert proc.returncode == 0, _tail(proc)
    parsed = open(os.path.join(tree, "outputs", "portrait3d-tiny", "perpneg", "configs", "parsed.yaml")).read()
    assert "use_perp_neg: true" in parsed and "negative_prompt: blurry, low quality" in parsed
    assert os.path.isfile(os.path.join(tree, "outputs", "portrait3d-tiny", "perpneg", "save", "it2-test.mp4"))


def test_swap_guidance_to_unified_guidance_and_resume(run, tmp_path):
    """Another threestudio guidance by config only (threestudio's unified guidance in SDS mode)."""
    tree, cache, trial, launch = run
    path = swapped_guidance_config(tree, tmp_path, "unified", "stable-diffusion-unified-guidance",
                                   {"guidance_type": "sds", "guidance_scale": 100.0},
                                   {"lambda_sd": 1.0, "lambda_sd_img": 0.0})
    proc = launch(tree, cache, "--config", path, "--train", *SHORT)
    assert proc.returncode == 0, _tail(proc)
    out = os.path.join(tree, "outputs", "portrait3d-tiny", "unified")
    metrics = glob.glob(os.path.join(out, "csv_logs", "**", "metrics.csv"), recursive=True)
    rows = list(csv.DictReader(open(metrics[0])))
    assert any(r.get("train/loss_sd") for r in rows)  # the swapped guidance's loss was used
    proc = launch(tree, cache, "--config", os.path.join(out, "configs", "parsed.yaml"), "--train",
                  f"resume={os.path.join(out, 'ckpts', 'last.ckpt')}", "trainer.max_steps=3")
    assert proc.returncode == 0, _tail(proc)


def test_the_real_config_resolves_and_names_a_missing_checkpoint(run, tmp_path):
    """`launch.py --config configs/portrait3d.yaml --train system.prompt_processor.prompt=...` as the
    README types it: the config and every registered name resolve; without model_512.pkl the run
    stops with one line saying how to give it."""
    tree, cache, trial, launch = run
    os.environ["PORTRAIT3D_GAN_CHECKPOINT"] = str(tmp_path / "model_512.pkl")
    try:
        proc = launch(tree, cache, "--config", "configs/portrait3d.yaml", "--train",
                      "system.prompt_processor.prompt=upper body photo, a man")
    finally:
        del os.environ["PORTRAIT3D_GAN_CHECKPOINT"]
    assert proc.returncode != 0
    assert "model_512.pkl not found; set system.prior_checkpoint=/path/to/model_512.pkl" in proc.stderr
    assert "KeyError" not in proc.stderr and "IMPORT FAILED" not in proc.stdout + proc.stderr


def test_a_misspelt_component_name_gets_one_clear_line(run):
    tree, cache, trial, launch = run
    proc = launch(tree, cache, "--config", "configs/portrait3d-tiny.yaml", "--train", "tag=typo",
                  "use_timestamp=false", "system.geometry_type=pyramid-trigrids")
    assert proc.returncode != 0
    assert ("system.geometry_type: 'pyramid-trigrids' is not a registered threestudio component; "
            "did you mean pyramid-trigrid") in proc.stderr


def test_swap_guidance_to_vsd_trains_its_lora_and_resumes(run, tmp_path):
    """threestudio's VSD guidance by config only: its LoRA is optimised, checkpointed and resumed."""
    tree, cache, trial, launch = run
    path = swapped_guidance_config(tree, tmp_path, "vsd", "stable-diffusion-vsd-guidance",
                                   {"pretrained_model_name_or_path_lora":
                                    "${system.prompt_processor.pretrained_model_name_or_path}",
                                    "guidance_scale": 7.5},
                                   {"lambda_vsd": 1.0, "lambda_lora": 1.0}, trained=True)
    proc = launch(tree, cache, "--config", path, "--train", *SHORT)
    assert proc.returncode == 0, _tail(proc)
    out = os.path.join(tree, "outputs", "portrait3d-tiny", "vsd")
    state = torch.load(os.path.join(out, "ckpts", "last.ckpt"), map_location="cpu", weights_only=True)["state_dict"]
    lora_up = [v for k, v in state.items() if k.startswith("guidance.") and "lora" in k and k.endswith("up.weight")]
    assert lora_up and any(v.abs().sum() > 0 for v in lora_up)  # LoRA "up" starts at 0: it was trained
    proc = launch(tree, cache, "--config", os.path.join(out, "configs", "parsed.yaml"), "--train",
                  f"resume={os.path.join(out, 'ckpts', 'last.ckpt')}", "trainer.max_steps=3")
    assert proc.returncode == 0, _tail(proc)

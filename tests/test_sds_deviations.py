"""The five small SDS/refinement details where we followed threestudio or a guess and the official
code does otherwise (each test fails on the previous behaviour):

- classifier-free guidance ``ε_u + s·(ε_c − ε_u)`` (stable-dreamfusion ``guidance/sd_utils.py``),
  not threestudio's ``ε_c + s·(ε_c − ε_u)``;
- the EMA's decay as torch_ema computes it (count incremented first: 2/11, 3/12, …);
- the binary-entropy regulariser in bits (``log2``, ``nerf/utils.py``);
- the SDEdit inputs through an 8-bit PNG (``gen_quality_improve_data_from_triplane.py`` saves them);
- the 21 views rendered with the sampler's jitter (``render_planes`` always jitters).
"""

import os
import types

import pytest
import torch
from helpers import ROOT, requires_threestudio

pytestmark = requires_threestudio


@pytest.fixture(scope="module")
def ts():
    from threestudio_env import import_extension

    return import_extension()


@pytest.fixture(scope="module")
def prompt_utils(ts, tmp_path_factory):
    from gan_prior.tiny_models import tiny_model_path

    old = os.getcwd()
    os.chdir(tmp_path_factory.mktemp("cwd"))  # threestudio caches embeddings under cwd
    try:
        proc = ts.find("portrait3d-prompt-processor")(
            {
                "prompt": "a portrait",
                "pretrained_model_name_or_path": tiny_model_path("stable-diffusion"),
                "spawn": False,
            }
        )
        yield proc()
    finally:
        os.chdir(old)


@pytest.mark.parametrize("config", ["portrait3d.yaml", "portrait3d-tiny.yaml"])
def test_configured_guidance_uses_the_official_cfg_form(ts, prompt_utils, config):
    """The guidance the configs name computes ε̂ = ε_u + s·(ε_c − ε_u) with s = guidance_scale."""
    from omegaconf import OmegaConf

    from gan_prior.tiny_models import tiny_model_path

    cfg = OmegaConf.load(os.path.join(ROOT, "configs", config)).system
    scale = float(cfg.guidance.guidance_scale)
    guidance = ts.find(cfg.guidance_type)(
        {
            "pretrained_model_name_or_path": tiny_model_path("stable-diffusion"),
            "half_precision_weights": False,
            "guidance_scale": scale,
            "weighting_strategy": "uniform",  # grad = ε̂ − ε
        }
    )
    eps = {}

    def unet(latents, t, encoder_hidden_states):  # text half, then unconditional half
        b = latents.shape[0] // 2
        eps["c"], eps["u"] = torch.full_like(latents[:b], 0.3), torch.full_like(latents[:b], 0.1)
        return torch.cat([eps["c"], eps["u"]])

    guidance.forward_unet = unet
    latents = torch.zeros(1, 4, 8, 8)
    torch.manual_seed(0)
    grad, _, _ = guidance.compute_grad_sds(
        latents,
        None,
        torch.tensor([100]),
        prompt_utils,
        torch.zeros(1),
        torch.zeros(1),
        torch.full((1,), 2.7),
    )
    torch.manual_seed(0)
    noise = torch.randn_like(latents)  # the same draw compute_grad_sds made
    official = eps["u"] + scale * (eps["c"] - eps["u"])
    assert torch.allclose(grad, official - noise, atol=1e-5), (grad - noise).mean()
    assert guidance.cfg.guidance_scale == scale  # unchanged by the call


def test_ema_decays_as_torch_ema(ts):
    """torch_ema increments its count before the cap: updates 1, 2, … use 2/11, 3/12, … ."""
    cls = ts.find("portrait3d-system")
    level = torch.zeros(1, 3, 4, 2, 2)
    stub = types.SimpleNamespace(
        geometry=types.SimpleNamespace(levels={8: level}),
        ema_updates=torch.zeros((), dtype=torch.long),
        cfg=types.SimpleNamespace(ema_decay=0.95),
        ema_trigrids_8=torch.ones_like(level),
    )
    expected, shadow = [], 1.0
    for n in range(1, 21):
        decay = min(0.95, (1 + n) / (10 + n))
        shadow = decay * shadow  # the pyramid is 0: the shadow only decays
        expected.append(shadow)
        cls.update_ema(stub)
        assert stub.ema_trigrids_8.mean().item() == pytest.approx(shadow, rel=1e-5), n
    assert int(stub.ema_updates) == 20
    assert expected[0] == pytest.approx(2 / 11)


def test_entropy_regulariser_is_in_bits(ts):
    from importlib import import_module

    module = import_module(ts.find("portrait3d-system").__module__)
    w = torch.tensor([0.5, 0.5])
    assert module.binary_entropy(w).item() == pytest.approx(1.0)  # 1 bit (natural log: 0.693)
    w = torch.tensor([0.1])
    assert module.binary_entropy(w).item() == pytest.approx(0.4689956, rel=1e-6)


def _refinement_stub(ts, calls):
    """The refinement stage's methods on a stub system whose renderer and SDEdit record their inputs."""
    from importlib import import_module

    system = ts.find("portrait3d-system").__module__  # <extension>.system.portrait3d
    stage = import_module(system.rsplit(".", 1)[0] + ".refinement_stage")
    refine = stage.RefineConfig(resolution=16, view_samples=(4, 4))

    def render_labels(label, resolution, deterministic=True, **kw):
        calls.setdefault("deterministic", []).append(deterministic)
        return {"image": torch.rand(1, 3, resolution, resolution) * 2.2 - 1.1}  # jitter stands for the draws

    def sdedit_views(views):
        calls["sdedit_input"] = views.clone()
        return "model", "prompt", views

    stub = types.SimpleNamespace(
        cfg=types.SimpleNamespace(refine=refine),
        device="cpu",
        seed=7,
        guidance_is_trained=True,
        renderer=types.SimpleNamespace(render_labels=render_labels),
        load_ema=lambda: None,
        sdedit_views=sdedit_views,
        save_refinement_views=lambda *a: None,
        reset_geometry_optimizer=lambda lr: None,
    )
    stub.render_refinement_views = lambda labels: stage.RefinementStage.render_refinement_views(stub, labels)
    return stage, stub


def test_sdedit_inputs_pass_through_8_bit_png(ts):
    calls = {}
    stage, stub = _refinement_stub(ts, calls)
    stage.RefinementStage.prepare_refinement(stub)
    x = calls["sdedit_input"]
    assert x.shape == (21, 3, 16, 16)
    pixels = x * 127.5 + 127.5  # u / 127.5 − 1 → u
    assert (
        torch.allclose(pixels, pixels.round(), atol=1e-3)
        and pixels.min() >= -1e-3
        and pixels.max() <= 255.001
    )


def test_refinement_views_are_rendered_with_jitter_seeded_by_the_run(ts):
    calls = {}
    stage, stub = _refinement_stub(ts, calls)
    stage.RefinementStage.prepare_refinement(stub)
    assert calls["deterministic"] == [False] * 21
    first = calls["sdedit_input"]
    stage.RefinementStage.prepare_refinement(stub)  # a resumed run: the same draws
    assert torch.equal(calls["sdedit_input"], first)
    stub.seed = 8  # another run: other draws
    stage.RefinementStage.prepare_refinement(stub)
    assert not torch.equal(calls["sdedit_input"], first)

"""Tests for gan_prior.diffusion on the tiny random Stable Diffusion (64² images, 8² latents)."""

import os

import numpy as np
import pytest
import torch

from gan_prior import diffusion as D
from gan_prior.tiny_models import tiny_model_path

RES = 64
# A 50-step DDIM schedule with steps_offset = 1 is 981, 961, …, 1; the official SDEdit runs those <= 200.
OFFICIAL_SDEDIT_TIMESTEPS = [181, 161, 141, 121, 101, 81, 61, 41, 21, 1]


@pytest.fixture(scope="module")
def sd_path():
    return tiny_model_path("stable-diffusion")


@pytest.fixture(scope="module")
def pipe(sd_path):
    return D.load_pipeline(sd_path)


@pytest.fixture
def images():
    return torch.rand(2, 3, RES, RES, generator=torch.Generator().manual_seed(0)) * 2 - 1


def _spy_timesteps(monkeypatch, unet) -> list:
    """Record the timestep of every UNet call."""
    seen, forward = [], unet.forward

    def spy(sample, timestep, *args, **kwargs):
        seen.append(int(timestep))
        return forward(sample, timestep, *args, **kwargs)

    monkeypatch.setattr(unet, "forward", spy)
    return seen


def _spy_decoded_latents(monkeypatch, vae) -> list:
    """Record the latents handed to the VAE decoder, times the scaling factor (i.e. as the UNet sees them)."""
    seen, decode = [], vae.decode

    def spy(z, *args, **kwargs):
        seen.append(z * vae.config.scaling_factor)
        return decode(z, *args, **kwargs)

    monkeypatch.setattr(vae, "decode", spy)
    return seen


# --------------------------------------------------------------------------- #
# prompts
# --------------------------------------------------------------------------- #


def test_portrait_prompt_prefixes_and_keeps():
    assert D.portrait_prompt("  portrait of a knight ") == "upper body photo, portrait of a knight"
    assert D.portrait_prompt("Upper Body Photo of a knight") == "Upper Body Photo of a knight"
    assert D.portrait_prompt("upper body photo, a knight\n") == "upper body photo, a knight"
    for empty in ("", "   \n"):
        with pytest.raises(ValueError, match="prompt is empty; give e.g. 'upper body photo, portrait of"):
            D.portrait_prompt(empty)


# --------------------------------------------------------------------------- #
# load_pipeline
# --------------------------------------------------------------------------- #


def test_load_pipeline_errors(tmp_path, monkeypatch):
    with pytest.raises(
        D.DiffusionModelError, match=r"^--sd-model: folder /nonexistent/sd does not exist"
    ) as err:
        D.load_pipeline("/nonexistent/sd", option="--sd-model")
    assert "\n" not in str(err.value) and isinstance(err.value, ValueError)

    with pytest.raises(D.DiffusionModelError, match=r"^model: .* \(no model_index\.json\)"):
        D.load_pipeline(str(tmp_path))

    (tmp_path / "model_index.json").write_text("{}")
    for sub in ("vae", "text_encoder", "tokenizer", "scheduler"):
        (tmp_path / sub).mkdir()
    with pytest.raises(D.DiffusionModelError, match=r"^sd: .*missing unet/\)"):
        D.load_pipeline(str(tmp_path), option="sd")

    (tmp_path / "unet").mkdir()  # complete layout, but nothing loadable inside
    with pytest.raises(D.DiffusionModelError, match=r"^sd: cannot load the pipeline in "):
        D.load_pipeline(str(tmp_path), option="sd")

    with pytest.raises(D.DiffusionModelError, match="is a file, not a diffusers pipeline folder"):
        D.load_pipeline(str(tmp_path / "model_index.json"), option="sd")

    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(
        D.DiffusionModelError, match=r"^--sd-model: cannot load 'nobody/no-such-model-p3d'"
    ) as err:
        D.load_pipeline("nobody/no-such-model-p3d", option="--sd-model")
    assert "huggingface-cli download nobody/no-such-model-p3d" in str(err.value) and "\n" not in str(
        err.value
    )


def test_load_pipeline_cache(sd_path, pipe, tmp_path):
    from diffusers import StableDiffusionPipeline

    assert isinstance(pipe, StableDiffusionPipeline) and pipe.safety_checker is None
    assert D.load_pipeline(sd_path) is pipe
    assert D.load_pipeline(sd_path + os.sep, device=torch.device("cpu"), dtype=torch.float32) is pipe
    link = tmp_path / "linked-sd"
    link.symlink_to(sd_path, target_is_directory=True)
    assert D.load_pipeline(str(link)) is pipe  # keyed by the real path
    other = D.load_pipeline(sd_path, dtype=torch.bfloat16)
    assert other is not pipe and other.unet.dtype == torch.bfloat16 and pipe.unet.dtype == torch.float32


# --------------------------------------------------------------------------- #
# text → candidates
# --------------------------------------------------------------------------- #


def test_generate_candidates_seeds_and_images(pipe, monkeypatch):
    scheduler, config = pipe.scheduler, dict(pipe.scheduler.config)
    seen = _spy_timesteps(monkeypatch, pipe.unet)
    cfg = D.TextToImageConfig(steps=3, resolution=RES, num_candidates=2, seed=5)
    first = D.generate_candidates(pipe, "upper body photo, a knight", cfg, progress=False)
    # PLMS = PNDM without Runge-Kutta steps: 3 steps are 667, 334, 334 (improved-Euler first step), 1
    assert seen == [667, 334, 334, 1] * 2
    assert [c.seed for c in first] == [5, 6]
    for c in first:
        assert c.image.shape == (RES, RES, 3) and c.image.dtype == np.uint8
    assert not np.array_equal(first[0].image, first[1].image)  # different seeds
    again = D.generate_candidates(
        pipe,
        "upper body photo, a knight",
        D.TextToImageConfig(steps=3, resolution=RES, num_candidates=1, seed=6),
        progress=False,
    )
    assert again[0].seed == 6 and np.array_equal(again[0].image, first[1].image)  # same seed, same image
    other_prompt = D.generate_candidates(
        pipe,
        "upper body photo, a witch",
        D.TextToImageConfig(steps=3, resolution=RES, num_candidates=1, seed=6),
        progress=False,
    )
    assert not np.array_equal(other_prompt[0].image, first[1].image)
    # the cached pipeline keeps its own scheduler, untouched
    assert pipe.scheduler is scheduler and type(scheduler).__name__ == "DDIMScheduler"
    assert dict(pipe.scheduler.config) == config and pipe.scheduler.num_inference_steps is None


@pytest.mark.parametrize("resolution", [60, 32, 0])
def test_generate_candidates_bad_resolution(pipe, resolution):
    with pytest.raises(
        ValueError, match=f"resolution must be a multiple of 8 and at least 64, got {resolution}"
    ):
        D.generate_candidates(
            pipe, "upper body photo", D.TextToImageConfig(resolution=resolution), progress=False
        )


# --------------------------------------------------------------------------- #
# SDEdit
# --------------------------------------------------------------------------- #


def _official_sdedit(pipe, images, prompt, cfg):
    """``guidance/sdedit.py`` transcribed (global RNG replaced by one seeded generator)."""
    from diffusers import DDIMScheduler

    scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    scheduler.set_timesteps(50)
    tok = pipe.tokenizer

    def embed(text):
        ids = tok(
            [text], padding="max_length", max_length=tok.model_max_length, return_tensors="pt"
        ).input_ids
        return pipe.text_encoder(ids)[0]

    text = torch.cat([embed(cfg.negative_prompt), embed(prompt)])
    scale = pipe.vae.config.scaling_factor
    gen = torch.Generator().manual_seed(cfg.seed)
    out = []
    with torch.no_grad():
        for image in images:
            latents = pipe.vae.encode(image[None]).latent_dist.sample(generator=gen) * scale
            noise = torch.randn(latents.shape, generator=gen)
            latents = scheduler.add_noise(latents, noise, torch.tensor([cfg.strength_t]))
            for t in scheduler.timesteps:
                if t > cfg.strength_t:
                    continue
                uncond, cond = pipe.unet(
                    torch.cat([latents] * 2), t, encoder_hidden_states=text
                ).sample.chunk(2)
                latents = scheduler.step(
                    uncond + cfg.guidance_scale * (cond - uncond), t, latents
                ).prev_sample
            out.append(pipe.vae.decode(latents / scale).sample.clamp(-1, 1))
    return torch.cat(out)


def test_sdedit_runs_the_official_timesteps(pipe, images, monkeypatch):
    assert pipe.scheduler.config.steps_offset == 1  # as SD 1.5's and Realistic Vision's configs
    assert D.sdedit_timesteps(pipe.scheduler.config) == OFFICIAL_SDEDIT_TIMESTEPS
    seen = _spy_timesteps(monkeypatch, pipe.unet)
    out = D.sdedit(pipe, images, "upper body photo, a knight", progress=False)
    assert seen == OFFICIAL_SDEDIT_TIMESTEPS * 2  # 10 steps per image
    assert out.shape == images.shape and out.dtype == images.dtype
    assert out.min() >= -1 and out.max() <= 1
    assert pipe.scheduler.num_inference_steps is None  # the pipeline's scheduler is not used


def test_sdedit_matches_official_loop(pipe, images):
    cfg = D.SDEditConfig(seed=3)
    out = D.sdedit(pipe, images, "upper body photo, a knight", cfg, progress=False)
    ref = _official_sdedit(pipe, images, "upper body photo, a knight", cfg)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-5)
    # same seed, same result; another seed, another result
    assert torch.equal(D.sdedit(pipe, images, "upper body photo, a knight", cfg, progress=False), out)
    assert not torch.allclose(
        D.sdedit(pipe, images, "upper body photo, a knight", D.SDEditConfig(seed=4), progress=False), out
    )


def test_sdedit_depends_on_prompts(pipe, images):
    base = D.sdedit(pipe, images[:1], "upper body photo, a knight", progress=False)
    other = D.sdedit(pipe, images[:1], "upper body photo, a witch", progress=False)
    neg = D.sdedit(
        pipe, images[:1], "upper body photo, a knight", D.SDEditConfig(negative_prompt=""), progress=False
    )
    assert (base - other).abs().mean() > 1e-3
    assert (base - neg).abs().mean() > 1e-3


def test_sdedit_one_generator_for_the_batch(pipe, images):
    twice = images[:1].expand(2, -1, -1, -1).contiguous()
    out = D.sdedit(pipe, twice, "upper body photo", progress=False)
    assert not torch.allclose(out[0], out[1])  # the second image draws fresh noise
    assert torch.equal(out[:1], D.sdedit(pipe, twice[:1], "upper body photo", progress=False))


def test_sdedit_noise_level(pipe, images, monkeypatch):
    """strength_t=0 runs no step and decodes ≈ the clean latents; t=200 stays far closer to them than t=999."""
    seen = _spy_timesteps(monkeypatch, pipe.unet)
    decoded = _spy_decoded_latents(monkeypatch, pipe.vae)
    x = images[:1]
    D.sdedit(pipe, x, "upper body photo", D.SDEditConfig(strength_t=0, seed=7), progress=False)
    assert seen == []
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        clean = pipe.vae.encode(x).latent_dist.sample(generator=gen) * pipe.vae.config.scaling_factor
    noise = torch.randn(clean.shape, generator=gen)
    alpha = pipe.scheduler.alphas_cumprod[0]
    torch.testing.assert_close(decoded[0], alpha.sqrt() * clean + (1 - alpha).sqrt() * noise)

    dist = {}
    for t in (200, 999):
        decoded.clear()
        D.sdedit(pipe, x, "upper body photo", D.SDEditConfig(strength_t=t, seed=7), progress=False)
        dist[t] = float((decoded[0] - clean).abs().mean())
    assert dist[200] < dist[999] / 5, dist


def test_sdedit_bad_inputs(pipe, images):
    with pytest.raises(ValueError, match="multiples of 8, got 60x64"):
        D.sdedit(pipe, images[:, :, :60], "upper body photo", progress=False)
    with pytest.raises(ValueError, match=r"images must be \[N, 3, H, W\]"):
        D.sdedit(pipe, images[0], "upper body photo", progress=False)
    with pytest.raises(ValueError, match=r"strength_t must be in \[0, 999\], got 1000"):
        D.sdedit(pipe, images, "upper body photo", D.SDEditConfig(strength_t=1000), progress=False)

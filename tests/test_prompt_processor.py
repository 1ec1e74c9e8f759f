"""``portrait3d-prompt-processor``: the official SDS view prompts, interpolated by azimuth.

The expected embeddings are written here from the official ``train_step``
(``stable-dreamfusion-3DPortrait/nerf/utils.py``), branch for branch, independently of the
processor's vectorised weights.
"""

import os

import pytest
import torch
from helpers import requires_threestudio

pytestmark = requires_threestudio

PROMPT = "portrait of a woman"
# the boundaries (0, ±90, ±180, wrap-around) and points inside each of the four half-quadrants
AZIMUTHS = [
    0.0,
    30.0,
    -30.0,
    89.9,
    90.0,
    -90.0,
    90.1,
    135.0,
    -135.0,
    179.0,
    180.0,
    -180.0,
    270.0,
    -270.0,
    360.0,
    45.0,
]


def official_embedding(az: float, front, side, back):
    """The official non-Perp-Neg branch for one azimuth in [-180, 180]."""
    if -90 <= az < 90:
        r = 1 - az / 90 if az >= 0 else 1 + az / 90
        return r * front + (1 - r) * side
    r = 1 - (az - 90) / 90 if az >= 0 else 1 + (az + 90) / 90
    return r * side + (1 - r) * back


@pytest.fixture(scope="module")
def processor(tmp_path_factory):
    from threestudio_env import import_extension

    from gan_prior.tiny_models import tiny_model_path

    ts = import_extension()
    old = os.getcwd()
    os.chdir(tmp_path_factory.mktemp("cwd"))  # threestudio caches embeddings under cwd
    try:
        proc = ts.find("portrait3d-prompt-processor")(
            {
                "prompt": PROMPT,
                "pretrained_model_name_or_path": tiny_model_path("stable-diffusion"),
                "spawn": False,
            }
        )
        yield proc
    finally:
        os.chdir(old)


def test_official_view_prompts(processor):
    assert processor.prompts_vd == [f"front view {PROMPT}", f"side view {PROMPT}", f"back view {PROMPT}"]
    assert processor.negative_prompt == ""


def test_embedding_at_each_azimuth_is_the_official_interpolation(processor):
    out = processor()
    front, side, back = (processor.load_from_cache(f"{v} view {PROMPT}") for v in ("front", "side", "back"))
    uncond = processor.load_from_cache("")
    assert not torch.allclose(front, side) and not torch.allclose(side, back)
    az = torch.tensor(AZIMUTHS)
    n = len(AZIMUTHS)
    emb = out.get_text_embeddings(torch.zeros(n), az, torch.full((n,), 2.7))
    assert emb.shape == (2 * n, *front.shape)
    for i, a in enumerate(AZIMUTHS):
        wrapped = (a + 180) % 360 - 180  # official azimuths lie in [-180, 180]
        expected = official_embedding(wrapped, front, side, back)
        assert torch.allclose(emb[i], expected, atol=1e-6), f"azimuth {a}"
        assert torch.equal(emb[n + i], uncond), f"unconditional embedding at azimuth {a}"
    # the named views exactly
    named = {0.0: front, 90.0: side, -90.0: side, 180.0: back, -180.0: back}
    for a, e in named.items():
        assert torch.allclose(emb[AZIMUTHS.index(a)], e, atol=1e-6), f"azimuth {a}"
    # half-way between front and side is the mean of the two
    assert torch.allclose(emb[AZIMUTHS.index(45.0)], (front + side) / 2, atol=1e-6)


def test_view_independent_mode_uses_the_plain_prompt(processor):
    out = processor()
    emb = out.get_text_embeddings(
        torch.zeros(2), torch.tensor([0.0, 120.0]), torch.full((2,), 2.7), view_dependent_prompting=False
    )
    assert torch.equal(emb[0], processor.load_from_cache(PROMPT)) and torch.equal(emb[1], emb[0])


def test_guidance_receives_the_interpolated_embeddings(processor):
    """threestudio's stable-diffusion-guidance takes its text embeddings from our output."""
    import threestudio

    from gan_prior.tiny_models import tiny_model_path

    guidance = threestudio.find("stable-diffusion-guidance")(
        {
            "pretrained_model_name_or_path": tiny_model_path("stable-diffusion"),
            "half_precision_weights": False,
            "guidance_scale": 100.0,
        }
    )
    seen = []
    unet_forward = guidance.forward_unet

    def spy(latents, t, encoder_hidden_states):
        seen.append(encoder_hidden_states)
        return unet_forward(latents, t, encoder_hidden_states=encoder_hidden_states)

    guidance.forward_unet = spy
    rgb = torch.rand(1, 32, 32, 3)
    guidance(rgb, processor(), torch.zeros(1), torch.tensor([60.0]), torch.full((1,), 2.7))
    front, side = (processor.load_from_cache(f"{v} view {PROMPT}") for v in ("front", "side"))
    r = 1 - 60.0 / 90
    assert torch.allclose(seen[0][0], r * front + (1 - r) * side, atol=1e-6)


def test_rejects_perp_neg(tmp_path):
    from threestudio_env import import_extension

    ts = import_extension()
    with pytest.raises(ValueError, match="use_perp_neg"):
        ts.find("portrait3d-prompt-processor")({"prompt": PROMPT, "use_perp_neg": True, "spawn": False})


@pytest.mark.parametrize("config", ["portrait3d.yaml", "portrait3d-tiny.yaml"])
def test_configs_use_the_official_view_prompts(config):
    from omegaconf import OmegaConf
    from threestudio_env import import_extension

    ts = import_extension()
    cfg = OmegaConf.load(os.path.join(os.path.dirname(__file__), "..", "configs", config))
    cls = ts.find(cfg.system.prompt_processor_type)
    assert cls.__name__ == "Portrait3DPromptProcessor"
    assert cfg.system.prompt_processor.get("negative_prompt", "") == ""  # official --negative default


def test_embeddings_reach_the_shared_cache_whole(tmp_path, monkeypatch):
    """Runs sharing threestudio's cache (the workers of `portrait3d batch`) read each other's files:
    while an embedding is being written, the cache holds no partial file of it (a batch worker read
    one and stopped with EOFError); afterwards the file is whole and no staging folder is left."""
    from threestudio_env import import_extension

    from gan_prior.tiny_models import tiny_model_path

    ts = import_extension()
    from threestudio.models.prompt_processors.base import hash_prompt
    from threestudio.models.prompt_processors.stable_diffusion_prompt_processor import (
        StableDiffusionPromptProcessor,
    )

    model = tiny_model_path("stable-diffusion")
    cache = tmp_path / ".threestudio_cache" / "text_embeddings"
    seen_while_writing = []
    real_save = torch.save

    def save_and_look(obj, path, *args, **kwargs):  # what a concurrent reader would find meanwhile
        seen_while_writing.append(sorted(p.name for p in cache.glob("*.pt")))
        with open(path, "wb") as f:
            f.write(b"PK")  # the first bytes of a torch file: a reader now would get EOFError
            f.flush()
            seen_while_writing.append(sorted(p.name for p in cache.glob("*.pt")))
        real_save(obj, path, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save_and_look)
    monkeypatch.chdir(tmp_path)
    assert ts.find("portrait3d-prompt-processor").spawn_func is not StableDiffusionPromptProcessor.spawn_func
    proc = ts.find("portrait3d-prompt-processor")(
        {"prompt": PROMPT, "pretrained_model_name_or_path": model, "spawn": False, "use_cache": False}
    )
    assert seen_while_writing and all(names == [] for names in seen_while_writing), seen_while_writing
    path = cache / f"{hash_prompt(model, PROMPT)}.pt"
    assert torch.equal(torch.load(path, weights_only=True), proc.text_embeddings[0].cpu())
    assert [p.name for p in cache.iterdir() if not p.name.endswith(".pt")] == []

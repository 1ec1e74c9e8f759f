"""Stable Diffusion helpers: text → candidate portraits (official
``stable-diffusion/scripts/txt2realistic_human.py``) and SDEdit of rendered views (official
``stable-dreamfusion-3DPortrait/guidance/sdedit.py``).

Follows the official code:

* candidates (``stable-diffusion/scripts/txt2realistic_human.py``): Realistic Vision V5.1, PLMS with
  50 steps and eta 0, CFG 5 against the empty prompt, 512², one image per run, six runs. diffusers'
  ``PNDMScheduler(skip_prk_steps=True)`` is the same sampler as CompVis' ``PLMSSampler``: timesteps
  1, 21, …, 981, an improved-Euler first step, then 2nd-, 3rd- and 4th-order Adams–Bashforth steps.
  Pixels are stored as ``uint8(255·x)`` (truncated, as the script does).
* SDEdit (``stable-dreamfusion-3DPortrait/guidance/sdedit.py``): fp32; VAE ``posterior.sample()``
  × scaling factor; ``add_noise`` at t = 200; a 50-step DDIM schedule of which only the timesteps
  ≤ 200 run (181, 161, …, 1 for SD's ``steps_offset = 1``: 10 steps, the first one from 181 although
  the latents were noised to 200, as in the official loop); CFG 7.5 with
  :data:`REFINE_NEGATIVE_PROMPT` as the unconditional text; eta 0; decode, clamp.

Differences: the official text-to-image script draws ``seed = random.randint(0, 100000)`` and seeds
the global RNG; here candidate ``i`` uses ``seed + i`` through a ``torch.Generator`` (recorded,
reproducible; the same seed still gives other pixels than CompVis' sampler would). SDEdit draws the
posterior sample and the noise from one seeded generator instead of the global RNG, and takes and
returns tensors in [−1, 1] instead of 8-bit PNG files. The official script runs SD's safety checker
on the candidates; pipelines here are loaded without it.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Union

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

if TYPE_CHECKING:  # diffusers is imported lazily: it takes seconds
    from diffusers import StableDiffusionPipeline

__all__ = [
    "DEFAULT_TEXT_TO_IMAGE_MODEL",
    "PORTRAIT_PROMPT_PREFIX",
    "REFINE_NEGATIVE_PROMPT",
    "DiffusionModelError",
    "load_pipeline",
    "clear_pipeline_cache",
    "portrait_prompt",
    "TextToImageConfig",
    "Candidate",
    "generate_candidates",
    "SDEditConfig",
    "sdedit_timesteps",
    "sdedit",
]

#: The SD-1.5 fine-tune the official pipeline samples and refines with (``txt2realistic_human.py``, ``guidance/sdedit.py``).
DEFAULT_TEXT_TO_IMAGE_MODEL = "SG161222/Realistic_Vision_V5.1_noVAE"
#: The official pipeline expects every prompt to start with this (``stable-diffusion/get_test_data_df.py``).
PORTRAIT_PROMPT_PREFIX = "upper body photo"
#: Unconditional text of the official SDEdit (``guidance/sdedit.py``).
REFINE_NEGATIVE_PROMPT = "worst quality, low quality, jpeg artifacts, blurry"

#: Sub-folders a diffusers Stable Diffusion pipeline folder must hold.
_REQUIRED_COMPONENTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
#: ``owner/name`` (or a bare name) as the Hugging Face hub spells repository ids.
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
#: The VAE downsamples by 8: image sides must be multiples of it.
_VAE_FACTOR = 8

_PIPELINES: dict[tuple[str, str, torch.dtype], "StableDiffusionPipeline"] = {}


class DiffusionModelError(ValueError):
    """A diffusion model option names something that cannot be loaded (one-line message with the fix)."""


# --------------------------------------------------------------------------- #
# Loading
# --------------------------------------------------------------------------- #


def _check_pipeline_folder(folder: str, option: str) -> None:
    if not os.path.isfile(os.path.join(folder, "model_index.json")):
        raise DiffusionModelError(
            f"{option}: {folder} is not a diffusers pipeline folder (no model_index.json); give a folder written by "
            f"StableDiffusionPipeline.save_pretrained or a hub id such as {DEFAULT_TEXT_TO_IMAGE_MODEL}"
        )
    missing = [c for c in _REQUIRED_COMPONENTS if not os.path.isdir(os.path.join(folder, c))]
    if missing:
        raise DiffusionModelError(
            f"{option}: {folder} is not a complete Stable Diffusion pipeline (missing {', '.join(missing)}/); "
            "give a folder with unet/, vae/, text_encoder/, tokenizer/ and scheduler/"
        )


def _from_pretrained(source: str, dtype: torch.dtype, **kwargs) -> "StableDiffusionPipeline":
    from diffusers import StableDiffusionPipeline

    # The official text-to-image script runs SD's safety checker on every sample; this port does not load it.
    return StableDiffusionPipeline.from_pretrained(
        source, torch_dtype=dtype, safety_checker=None, requires_safety_checker=False, **kwargs
    )


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def check_pipeline_source(model: str, option: str = "model") -> bool:
    """Cheap pre-flight of a :func:`load_pipeline` argument (nothing is loaded): ``True`` for a complete
    pipeline folder, ``False`` for a hub id; anything else raises :class:`DiffusionModelError`."""
    if not isinstance(model, str) or not model.strip():
        raise DiffusionModelError(
            f"{option}: no model given; give a diffusers folder or a hub id such as {DEFAULT_TEXT_TO_IMAGE_MODEL}"
        )
    local = os.path.expanduser(model)
    if os.path.isdir(local):
        _check_pipeline_folder(local, option)
        return True
    if os.path.exists(local):
        raise DiffusionModelError(
            f"{option}: {model} is a file, not a diffusers pipeline folder; give its folder"
        )
    if not _HUB_ID.match(model):
        raise DiffusionModelError(
            f"{option}: folder {model} does not exist; give a diffusers pipeline folder or a hub id such as "
            f"{DEFAULT_TEXT_TO_IMAGE_MODEL}"
        )
    return False


def load_pipeline(
    model: str,
    device: Union[str, torch.device] = "cpu",
    dtype: torch.dtype = torch.float32,
    option: str = "model",
) -> "StableDiffusionPipeline":
    """Load (once) a Stable Diffusion 1.x pipeline from a local diffusers folder or a hub id.

    Hub ids are read from the local Hugging Face cache first and downloaded only when that fails
    and the hub is not offline (``HF_HUB_OFFLINE``). Pipelines are cached per (absolute path or id,
    device, dtype), so text-to-image and SDEdit share one copy; :func:`clear_pipeline_cache` drops them.

    Args:
        model: a folder written by ``StableDiffusionPipeline.save_pretrained`` or a hub id.
        device: where the pipeline's modules go.
        dtype: their dtype (the official SDEdit runs in fp32).
        option: the user-facing name of the option that gave ``model``, used in error messages.

    Raises:
        DiffusionModelError: ``model`` is missing, not a Stable Diffusion pipeline, or not loadable.
    """
    is_folder = check_pipeline_source(model, option)
    local = os.path.expanduser(model)
    key = (os.path.realpath(local) if is_folder else model, str(torch.device(device)), dtype)
    if key in _PIPELINES:
        return _PIPELINES[key]

    if is_folder:
        try:
            pipe = _from_pretrained(local, dtype)
        except (OSError, ValueError, KeyError) as err:
            raise DiffusionModelError(
                f"{option}: cannot load the pipeline in {local}: {_first_line(err)}"
            ) from err
    else:
        pipe = _load_hub_pipeline(model, dtype, option)
    pipe = pipe.to(device)
    _PIPELINES[key] = pipe
    return pipe


def _load_hub_pipeline(model_id: str, dtype: torch.dtype, option: str) -> "StableDiffusionPipeline":
    from huggingface_hub import constants

    try:
        return _from_pretrained(model_id, dtype, local_files_only=True)
    except (OSError, ValueError, KeyError) as err:
        cache_error = err
    if not constants.HF_HUB_OFFLINE:
        try:
            return _from_pretrained(model_id, dtype)
        except (OSError, ValueError, KeyError) as err:
            cache_error = err
    raise DiffusionModelError(
        f"{option}: cannot load {model_id!r}: no such folder, and not in the Hugging Face cache or on the hub "
        f"({_first_line(cache_error)}); "
        f"give a local diffusers folder, or pre-download it with `huggingface-cli download {model_id}`"
    ) from cache_error


def clear_pipeline_cache() -> None:
    """Forget every pipeline :func:`load_pipeline` has cached (frees their memory once unreferenced)."""
    _PIPELINES.clear()


# --------------------------------------------------------------------------- #
# Text → candidate portraits
# --------------------------------------------------------------------------- #


def portrait_prompt(prompt: str) -> str:
    """Strip ``prompt`` and make it start with :data:`PORTRAIT_PROMPT_PREFIX` (checked case-insensitively)."""
    text = (prompt or "").strip()
    if not text:
        raise ValueError(f"the prompt is empty; give e.g. '{PORTRAIT_PROMPT_PREFIX}, portrait of ...'")
    if text.lower().startswith(PORTRAIT_PROMPT_PREFIX):
        return text
    return f"{PORTRAIT_PROMPT_PREFIX}, {text}"


@dataclass
class TextToImageConfig:
    steps: int = 50  # PLMS steps (``--ddim_steps``)
    guidance_scale: float = 5.0  # ``--scale 5`` (the README suggests 3 for some characters)
    resolution: int = 512
    negative_prompt: str = ""  # the official unconditional prompt is ""
    num_candidates: int = 6  # ``--n_iter 6``, one sample each
    seed: int = 0  # candidate i uses seed + i (the official script draws random.randint(0, 100000))


@dataclass
class Candidate:
    seed: int
    image: np.ndarray  # uint8 [H, W, 3]


def _check_text_to_image(cfg: TextToImageConfig) -> None:
    if cfg.resolution < 64 or cfg.resolution % _VAE_FACTOR:
        raise ValueError(
            f"resolution must be a multiple of {_VAE_FACTOR} and at least 64, got {cfg.resolution}"
        )
    if cfg.steps < 1:
        raise ValueError(f"steps must be at least 1, got {cfg.steps}")
    if cfg.num_candidates < 1:
        raise ValueError(f"num_candidates must be at least 1, got {cfg.num_candidates}")


def generate_candidates(
    pipe: "StableDiffusionPipeline",
    prompt: str,
    cfg: TextToImageConfig = TextToImageConfig(),
    progress: bool = True,
) -> list[Candidate]:
    """Sample ``cfg.num_candidates`` portraits of ``prompt`` with the official PLMS settings.

    The prompt is used as given: pass it through :func:`portrait_prompt` first. ``pipe`` is not
    modified: sampling runs on a sibling pipeline that shares its modules and has its own PLMS
    scheduler.

    Returns:
        One :class:`Candidate` per seed ``cfg.seed``, ``cfg.seed + 1``, …; images are
        ``[resolution, resolution, 3]`` uint8.
    """
    from diffusers import PNDMScheduler, StableDiffusionPipeline

    _check_text_to_image(cfg)
    plms = PNDMScheduler.from_config(pipe.scheduler.config, skip_prk_steps=True)
    sampler = StableDiffusionPipeline(
        **{**pipe.components, "scheduler": plms},
        requires_safety_checker=bool(getattr(pipe.config, "requires_safety_checker", False)),
    )
    sampler.set_progress_bar_config(disable=True)
    candidates = []
    seeds = range(cfg.seed, cfg.seed + cfg.num_candidates)
    for seed in tqdm(seeds, desc="text-to-image", disable=not progress):
        images = sampler(
            prompt,
            height=cfg.resolution,
            width=cfg.resolution,
            num_inference_steps=cfg.steps,
            guidance_scale=cfg.guidance_scale,
            negative_prompt=cfg.negative_prompt or None,  # None and "" both mean the empty prompt
            eta=0.0,
            generator=torch.Generator().manual_seed(seed),
            output_type="np",
        ).images
        candidates.append(Candidate(seed=seed, image=(255.0 * images[0]).astype(np.uint8)))
    return candidates


# --------------------------------------------------------------------------- #
# SDEdit
# --------------------------------------------------------------------------- #


@dataclass
class SDEditConfig:
    strength_t: int = 200  # noise level: ``noise_level = 200`` in the official sdedit.py
    steps: int = 50  # DDIM schedule length; only its timesteps <= strength_t run
    guidance_scale: float = 7.5
    negative_prompt: str = REFINE_NEGATIVE_PROMPT
    seed: int = 42  # ``--seed 42`` from portrait3d_main.py


def _sdedit_schedule(scheduler_config, cfg: SDEditConfig):
    """A fresh DDIM scheduler set to ``cfg.steps`` steps, and the timesteps of it that SDEdit runs."""
    from diffusers import DDIMScheduler

    scheduler = DDIMScheduler.from_config(scheduler_config)
    n_train = scheduler.config.num_train_timesteps
    if not 0 <= cfg.strength_t < n_train:
        raise ValueError(f"strength_t must be in [0, {n_train - 1}], got {cfg.strength_t}")
    if cfg.steps < 1:
        raise ValueError(f"steps must be at least 1, got {cfg.steps}")
    scheduler.set_timesteps(cfg.steps)
    return scheduler, [t for t in scheduler.timesteps if t <= cfg.strength_t]


def sdedit_timesteps(scheduler_config, cfg: SDEditConfig = SDEditConfig()) -> list[int]:
    """The DDIM timesteps :func:`sdedit` runs: those of a ``cfg.steps`` schedule that are ``<= cfg.strength_t``."""
    return [int(t) for t in _sdedit_schedule(scheduler_config, cfg)[1]]


@torch.no_grad()
def sdedit(
    pipe: "StableDiffusionPipeline",
    images: Tensor,
    prompt: str,
    cfg: SDEditConfig = SDEditConfig(),
    progress: bool = True,
) -> Tensor:
    """Refine renders with SDEdit as the official ``guidance/sdedit.py`` does.

    Args:
        pipe: a Stable Diffusion pipeline (see :func:`load_pipeline`); not modified.
        images: ``[N, 3, H, W]`` in [−1, 1]; H and W multiples of 8.
        prompt: used as given (the official code passes the raw prompt, with no view prefix).
        cfg: noise level, schedule, guidance and seed.
        progress: show a tqdm bar over the images.

    Returns:
        ``[N, 3, H, W]`` in [−1, 1], on the device and with the dtype of ``images``. Images are
        processed one at a time; one generator seeded with ``cfg.seed`` serves the whole batch.
    """
    from diffusers.utils.torch_utils import randn_tensor

    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be [N, 3, H, W], got {list(images.shape)}")
    height, width = images.shape[-2:]
    if height % _VAE_FACTOR or width % _VAE_FACTOR:
        raise ValueError(f"image height and width must be multiples of {_VAE_FACTOR}, got {height}x{width}")
    scheduler, timesteps = _sdedit_schedule(pipe.scheduler.config, cfg)

    device = pipe._execution_device
    vae, unet = pipe.vae, pipe.unet
    scale = vae.config.scaling_factor
    cond, uncond = pipe.encode_prompt(prompt, device, 1, True, negative_prompt=cfg.negative_prompt)
    text = torch.cat([uncond, cond])  # official order: [negative, positive]
    noise_level = torch.tensor([cfg.strength_t], dtype=torch.long, device=device)
    generator = torch.Generator().manual_seed(cfg.seed)

    refined = []
    for image in tqdm(images, desc="SDEdit", disable=not progress):
        x = image[None].to(device=device, dtype=vae.dtype)
        latents = vae.encode(x).latent_dist.sample(generator=generator) * scale
        noise = randn_tensor(latents.shape, generator=generator, device=device, dtype=latents.dtype)
        latents = scheduler.add_noise(latents, noise, noise_level)
        for t in timesteps:
            noise_uncond, noise_cond = unet(
                torch.cat([latents] * 2), t, encoder_hidden_states=text
            ).sample.chunk(2)
            noise_pred = noise_uncond + cfg.guidance_scale * (noise_cond - noise_uncond)
            latents = scheduler.step(noise_pred, t, latents, eta=0.0).prev_sample
        out = vae.decode(latents / scale).sample.clamp(-1, 1)
        refined.append(out.to(device=images.device, dtype=images.dtype))
    if not refined:
        return images.clone()
    return torch.cat(refined)

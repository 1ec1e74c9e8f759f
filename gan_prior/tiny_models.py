"""Tiny, random, offline stand-ins for the pretrained models the project uses.

Tests and CPU smoke runs cannot download Stable Diffusion (or anything else), so
this module builds small randomly initialised models with the *same interfaces
and tensor shapes* as the real ones, saves them as ordinary diffusers /
transformers folders and caches them outside any repository.

* :func:`build_tiny_stable_diffusion` writes an SD-1.x-style diffusers folder
  (``model_index.json``, tokenizer, text encoder, UNet, VAE, DDIM scheduler).
  ``StableDiffusionPipeline.from_pretrained(path)`` loads it, and so do
  threestudio's ``stable-diffusion-prompt-processor``, ``stable-diffusion-guidance``
  and ``stable-diffusion-vsd-guidance``: 77 token positions, 512x512 images give
  64x64 latents, and the UNet's time embedding is 1280 wide because the VSD
  guidance hard-codes a ``TimestepEmbedding(16, 1280)`` camera embedding.
* :func:`tiny_model_path` returns a cached folder for a registered name,
  building it on first use (atomically: build into a temporary folder next to
  it, then ``os.replace`` it into place).
* :data:`TINY_MODELS` is the registry (name -> builder + recipe version). Add
  builders with :func:`register_tiny_model`.

Only diffusers / transformers / torch are imported (never threestudio).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Iterator

import torch

from .files import CACHE_ENV_VAR, cache_root, pid_alive
from .generator import PortraitGAN, tiny_config

__all__ = [
    "TinyModel",
    "TINY_MODELS",
    "register_tiny_model",
    "tiny_model_path",
    "is_tiny_model",
    "tiny_cache_root",
    "build_tiny_stable_diffusion",
    "CACHE_ENV_VAR",
    "MARKER_FILE",
]

#: Written last inside every finished model folder; records name and recipe version.
MARKER_FILE = ".portrait3d_tiny.json"

_TMP_TAG = ".tmp-"


@dataclass(frozen=True)
class TinyModel:
    """A registered tiny model.

    Attributes:
        builder: ``builder(path)`` writes the complete model into the (existing,
            empty) folder ``path``.
        version: recipe version. It is part of the cache folder name, so changing
            it makes :func:`tiny_model_path` build (and return) a new folder.
            Bump it whenever the builder's output changes.
    """

    builder: Callable[[str], None]
    version: str


#: Registry of tiny models: name -> :class:`TinyModel`.
TINY_MODELS: Dict[str, TinyModel] = {}


def register_tiny_model(name: str, builder: Callable[[str], None], version: str) -> None:
    """Register (or replace) the builder for ``name`` with recipe ``version``."""
    if not name or "/" in name or os.sep in name or name.startswith("."):
        raise ValueError(f"invalid tiny model name: {name!r}")
    if not version or "/" in version or os.sep in version:
        raise ValueError(f"invalid tiny model version: {version!r}")
    TINY_MODELS[name] = TinyModel(builder=builder, version=version)


# --------------------------------------------------------------------------- #
# Tiny Stable Diffusion
# --------------------------------------------------------------------------- #

_SD_MAX_LENGTH = 77  # CLIP context length; threestudio pads prompts to it
_SD_TEXT_DIM = 32  # text hidden size == UNet cross-attention dim
_SD_TIME_EMBED_DIM = 1280  # SD's width; VSD guidance hard-codes TimestepEmbedding(16, 1280)


def _write_byte_level_tokenizer_files(folder: Path) -> None:
    """Write ``vocab.json``/``merges.txt`` for a 514-token byte-level BPE without merges.

    Every ``bytes_to_unicode()`` character is a token, once bare and once with the
    end-of-word suffix ``</w>`` (CLIP's BPE appends it to a word's last symbol), plus
    ``<|startoftext|>`` and ``<|endoftext|>``. With no merges any text tokenizes to
    single bytes, so no vocabulary from the internet is needed.
    """
    from transformers.models.clip.tokenization_clip import bytes_to_unicode

    chars = list(bytes_to_unicode().values())
    tokens = chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"]
    vocab = {tok: i for i, tok in enumerate(tokens)}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")


def byte_level_tokenizer():
    """A ``CLIPTokenizer`` over :func:`_write_byte_level_tokenizer_files`, 77 positions."""
    from transformers import CLIPTokenizer

    with tempfile.TemporaryDirectory() as tok_src:
        _write_byte_level_tokenizer_files(Path(tok_src))
        return CLIPTokenizer(
            vocab_file=str(Path(tok_src) / "vocab.json"),
            merges_file=str(Path(tok_src) / "merges.txt"),
            model_max_length=_SD_MAX_LENGTH,
        )


def stable_diffusion_from_parts(vae, text_encoder, tokenizer, unet):
    """A ``StableDiffusionPipeline`` of these modules with SD 1.x's DDIM schedule (scaled-linear
    betas 0.00085…0.012, ``steps_offset=1``) and no safety checker (tiny and real-size random builds)."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    scheduler = DDIMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def build_tiny_stable_diffusion(path: str, seed: int = 0) -> None:
    """Build a tiny random SD-1.x-style diffusers pipeline and save it to ``path``.

    The folder has the layout of ``runwayml/stable-diffusion-v1-5`` (``model_index.json``,
    ``tokenizer/``, ``text_encoder/``, ``unet/``, ``vae/``, ``scheduler/``; weights as
    safetensors; no safety checker) but only ~10 MB of random weights:

    * tokenizer: hand-made byte-level BPE (514 tokens), ``model_max_length=77``;
    * text encoder: ``CLIPTextModel``, hidden size 32, 2 layers, 77 positions;
    * UNet: 3 levels (16, 32, 32 channels; attention only at the coarsest, 16x16 for
      64x64 latents, which keeps a pass ~5x cheaper on CPU than attention at 32x32),
      cross-attention dim 32, time embedding 1280 (needed by
      ``stable-diffusion-vsd-guidance``), ``sample_size`` 8; latent sides must be
      multiples of 4;
    * VAE: 4 blocks of 8 channels, ``norm_num_groups=4``: 512x512 RGB -> 4x64x64
      latents, like SD, and cheap on CPU;
    * scheduler: ``DDIMScheduler`` with SD's scaled-linear betas and ``steps_offset=1``.

    The weights depend only on ``seed`` (each component is seeded separately, so
    changing one does not change the others; the caller's RNG state is restored).

    Args:
        path: destination folder (created if needed; existing files are overwritten).
        seed: seed for the random weights.
    """
    from diffusers import (
        AutoencoderKL,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel

    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)

    tokenizer = byte_level_tokenizer()

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        text_encoder = CLIPTextModel(
            CLIPTextConfig(
                vocab_size=len(tokenizer),
                hidden_size=_SD_TEXT_DIM,
                intermediate_size=37,
                num_hidden_layers=2,
                num_attention_heads=4,
                max_position_embeddings=_SD_MAX_LENGTH,
                projection_dim=_SD_TEXT_DIM,
                bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id,
            )
        )
        torch.manual_seed(seed + 1)
        unet = UNet2DConditionModel(
            sample_size=8,
            in_channels=4,
            out_channels=4,
            layers_per_block=1,
            block_out_channels=(16, 32, 32),
            down_block_types=("DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
            cross_attention_dim=_SD_TEXT_DIM,
            attention_head_dim=8,
            norm_num_groups=8,
            time_embedding_dim=_SD_TIME_EMBED_DIM,
        )
        torch.manual_seed(seed + 2)
        vae = AutoencoderKL(
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            block_out_channels=(8,) * 4,
            layers_per_block=1,
            latent_channels=4,
            norm_num_groups=4,
            sample_size=512,
        )
    pipe = stable_diffusion_from_parts(vae, text_encoder, tokenizer, unet)
    pipe.save_pretrained(str(out), safe_serialization=True)


#: Bump when build_tiny_stable_diffusion's output changes.
TINY_SD_VERSION = "v2"

register_tiny_model("stable-diffusion", build_tiny_stable_diffusion, TINY_SD_VERSION)


# --------------------------------------------------------------------------- #
# Cache
# --------------------------------------------------------------------------- #


def tiny_cache_root() -> Path:
    """Folder that holds the tiny models: ``$PORTRAIT3D_CACHE/tiny`` or ``~/.cache/portrait3d/tiny``."""
    return cache_root() / "tiny"


def _marker_ok(folder: Path, name: str, version: str) -> bool:
    try:
        data = json.loads((folder / MARKER_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and data.get("name") == name and data.get("version") == version


def is_tiny_model(path: str) -> bool:
    """True for a folder :func:`tiny_model_path` built: random weights (a tiny GAN renders no faces)."""
    try:
        data = json.loads((Path(path) / MARKER_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and data.get("name") in TINY_MODELS


def _remove_stale_temp_dirs(parent: Path, final_name: str) -> None:
    """Delete temp folders for ``final_name`` left by processes that no longer run: only folders
    named exactly as :func:`tiny_model_path` names them (mkdtemp's 8 random characters), owned by
    this user, whose pid is dead; anything else in the cache is left alone."""
    ours = re.compile(re.escape(f".{final_name}{_TMP_TAG}") + r"([1-9][0-9]{0,9})-[a-z0-9_]{8}$")
    for entry in parent.glob(f".{final_name}{_TMP_TAG}*"):
        m = ours.match(entry.name)
        if not m:
            continue
        pid = int(m.group(1))
        if pid == os.getpid() or pid_alive(pid):
            continue
        try:
            st = entry.lstat()
        except OSError:
            continue
        if stat.S_ISDIR(st.st_mode) and st.st_uid == os.getuid():
            shutil.rmtree(entry, ignore_errors=True)


@contextlib.contextmanager
def _install_lock(lock_path: Path) -> Iterator[None]:
    """Exclusive inter-process lock for the short "move into place" step (POSIX; no-op elsewhere)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - non-POSIX
        yield
        return
    with open(lock_path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def tiny_model_folder(name: str) -> str:
    """The folder :func:`tiny_model_path` builds tiny model ``name`` in, without building it."""
    if name not in TINY_MODELS:
        raise KeyError(f"unknown tiny model {name!r}; known: {sorted(TINY_MODELS)}")
    return str(tiny_cache_root() / f"{name}-{TINY_MODELS[name].version}")


def tiny_model_path(name: str) -> str:
    """Return the folder of tiny model ``name``, building it on first use.

    The folder is ``<tiny_cache_root()>/<name>-<version>``; a finished folder holds
    :data:`MARKER_FILE`. A missing or unfinished folder is built into a private
    temporary folder next to it and moved into place with ``os.replace`` (atomic;
    the move is serialised by a lock file), so concurrent callers never see a
    partial model: if two processes race, both build, the loser deletes its copy
    and returns the winner's folder. Temp folders left by dead processes are removed.

    Args:
        name: a key of :data:`TINY_MODELS` (e.g. ``"stable-diffusion"``).

    Returns:
        Absolute path of the model folder, as a string.
    """
    final = Path(tiny_model_folder(name))  # (an unknown name: KeyError)
    spec, root, final_name = TINY_MODELS[name], final.parent, final.name
    if _marker_ok(final, name, spec.version):
        return str(final)

    root.mkdir(parents=True, exist_ok=True)
    _remove_stale_temp_dirs(root, final_name)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final_name}{_TMP_TAG}{os.getpid()}-", dir=root))
    try:
        spec.builder(str(tmp))
        marker = {"name": name, "version": spec.version}
        (tmp / MARKER_FILE).write_text(json.dumps(marker), encoding="utf-8")
        os.chmod(tmp, 0o755)  # mkdtemp makes it 0700
        with _install_lock(root / f".{final_name}.lock"):
            if _marker_ok(final, name, spec.version):
                return str(final)  # lost a race: use the winner's folder
            if final.exists():
                # An unfinished folder at the final path (never made by this code,
                # which only renames finished folders there): move it aside, drop it.
                trash = Path(tempfile.mkdtemp(prefix=f".{final_name}{_TMP_TAG}{os.getpid()}-", dir=root))
                os.replace(final, trash / "old")
                shutil.rmtree(trash, ignore_errors=True)
            try:
                os.replace(tmp, final)
            except OSError:
                # Lost a race with a process that does not take the lock (no fcntl).
                if not _marker_ok(final, name, spec.version):
                    raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return str(final)


# --------------------------------------------------------------------------- #
# Tiny 3DPortraitGAN (same architecture, levels 8…32, narrow background)
# --------------------------------------------------------------------------- #
def build_tiny_portrait_gan(path: str, seed: int = 0) -> None:
    """A randomly initialised :class:`~gan_prior.generator.PortraitGAN` saved with ``save``."""
    PortraitGAN.random(tiny_config(), seed=seed).save(path)


TINY_GAN_VERSION = "v2"  # v2: with the superresolution module
register_tiny_model("portrait-gan", build_tiny_portrait_gan, TINY_GAN_VERSION)


# --------------------------------------------------------------------------- #
# Tiny CLIP (evaluation: CLIP score)
# --------------------------------------------------------------------------- #


def build_tiny_clip(path: str, seed: int = 4) -> None:
    """A tiny random ``CLIPModel`` + ``CLIPProcessor`` folder (hidden 32, 2 layers, 32² images,
    byte-level tokenizer, 77 positions): ``CLIPModel.from_pretrained(path)`` and
    ``CLIPProcessor.from_pretrained(path)`` load it offline. Seed 4 gives positive image–text
    cosines (many seeds give only negative ones, which the CLIP score clamps to 0)."""
    from transformers import (
        CLIPConfig,
        CLIPImageProcessor,
        CLIPModel,
        CLIPProcessor,
        CLIPTextConfig,
        CLIPVisionConfig,
    )

    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = byte_level_tokenizer()
    text = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=_SD_MAX_LENGTH,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    vision = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=32,
        patch_size=8,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CLIPModel(
            CLIPConfig(text_config=text.to_dict(), vision_config=vision.to_dict(), projection_dim=16)
        )
    images = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    model.save_pretrained(str(out), safe_serialization=True)
    CLIPProcessor(image_processor=images, tokenizer=tokenizer).save_pretrained(str(out))


#: Bump when build_tiny_clip's output changes.
TINY_CLIP_VERSION = "v2"

register_tiny_model("clip", build_tiny_clip, TINY_CLIP_VERSION)

"""``gan-prior-initializer``: fills the pyramid tri-grid (and ws) from the GAN prior.

Sources:

- ``prompt`` (paper §3.4; official ``portrait3d_main.py`` steps 1–4): text → candidate portraits
  (any diffusers SD model) → automatic alignment and choice → w+ inversion → pyramid, via
  :func:`gan_prior.portrait_init.initialize_portrait`; ``image``: the same from a user's photo,
  without the text-to-image step; both read their settings from ``portrait`` (the fields of
  :class:`gan_prior.portrait_init.PortraitInitConfig`). Everything is written to ``<trial>/save/init/<key>/`` (``key``
  hashes the inputs; ``cache_dir`` overrides the parent folder) and reused when present, so a
  resumed or repeated run does not recompute it.
- ``seed``: z from a seed through the mapping at the frontal camera, truncation ψ;
- ``pyramid``: any file :func:`gan_prior.load_pyramid` reads (ours, ``inversion_trigrid.pkl``,
  ``df.pth``, ``epoch_*.pth``, the gallery's ``NNN_pyramid_trigrid.pth``).
"""

import os
from dataclasses import dataclass, field

import threestudio
import torch
from threestudio.utils.base import BaseObject
from threestudio.utils.typing import *

from gan_prior import CheckpointError, canonical_label, load_pyramid
from gan_prior.alignment import check_detector_spec
from gan_prior.portrait_init import PortraitInitConfig, init_key, initialize_portrait

from ..prior import load_prior

SOURCES = ("prompt", "image", "seed", "pyramid")


@threestudio.register("gan-prior-initializer")
class GANPriorInitializer(BaseObject):
    @dataclass
    class Config(BaseObject.Config):
        checkpoint: str = ""
        source: str = "seed"  # one of SOURCES
        # seed
        seed: int = 0
        truncation_psi: float = 0.7
        # pyramid
        pyramid_path: Optional[str] = None
        # prompt / image: gan_prior.portrait_init.PortraitInitConfig fields (inversion: InversionConfig
        # fields); vgg16: "random" = a random perceptual network, for smoke tests only
        portrait: dict = field(default_factory=dict)
        cache_dir: Optional[str] = None  # parent of the init/<key>/ folders (default: <trial>/save/init)

    cfg: Config

    def configure(self) -> None:
        if self.cfg.source not in SOURCES:
            raise ValueError(
                f"system.initializer.source must be one of {list(SOURCES)}, got {self.cfg.source!r}"
            )
        if self.cfg.source in ("prompt", "image"):  # a detector this config may not name fails now
            try:
                check_detector_spec(str(self.cfg.portrait.get("detector", "haar")))
            except ValueError as e:
                raise ValueError(f"system.initializer.portrait.detector: {e}") from None

    @staticmethod
    def check_keys(cfg: "GANPriorInitializer.Config") -> None:
        """The keys and numbers of ``portrait`` and ``portrait.inversion`` (no file read; the system
        checks them so before a run, and ``portrait3d batch`` before it starts)."""
        portrait = PortraitInitConfig.from_dict(dict(cfg.portrait), "system.initializer.portrait")
        try:
            portrait.check_settings()
        except ValueError as e:
            raise ValueError(f"system.initializer.portrait.{e}") from None

    def check(self) -> None:
        """The settings a fresh run will use, checked before any work (the system's configure): the
        photo, the perceptual network, the detector for this GAN."""
        if self.cfg.source in ("prompt", "image"):
            try:
                self.portrait_config().validate(self.cfg.checkpoint)
            except ValueError as e:
                raise self._named(e) from None

    def _named(self, e: Exception) -> ValueError:
        """``e`` as one line naming the config key (``system.initializer.portrait.<field>: ...``)."""
        message = str(e)
        field = message.split(":")[0].split(".")[0]  # "inversion.steps: …" is a setting of inversion
        if field in PortraitInitConfig.__dataclass_fields__:
            message = f"system.initializer.portrait.{message}"
        elif not message.startswith("system."):
            message = f"system.initializer ({self.cfg.source}): {message}"
        return ValueError(message)

    def portrait_config(self) -> PortraitInitConfig:
        """``portrait`` as a :class:`PortraitInitConfig`, for this ``source`` (prompt or image)."""
        d = dict(self.cfg.portrait)
        if self.cfg.source == "prompt":
            if not (d.get("prompt") or "").strip():
                raise ValueError(
                    'system.initializer.portrait.prompt is empty; set system.prompt_processor.prompt="'
                    'upper body photo, ..." (the initializer uses it) or system.initializer.portrait.prompt'
                )
            d["image"] = None
        else:
            d["prompt"] = None
        return PortraitInitConfig.from_dict(d, "system.initializer.portrait")

    def __call__(
        self, save_dir: Optional[str] = None, device: str = "cpu"
    ) -> Tuple[Dict[int, Tensor], Tensor]:
        """→ (levels ``{R: [1, 3, 36, R, R]}``, ws ``[1, num_ws, w_dim]``)."""
        prior = load_prior(self.cfg.checkpoint, "system.initializer.checkpoint")
        if self.cfg.source in ("prompt", "image"):
            return self.from_portrait(prior, save_dir, device)
        with torch.no_grad():
            if self.cfg.source == "seed":
                z = torch.randn(1, prior.cfg.z_dim, generator=torch.Generator().manual_seed(self.cfg.seed))
                ws = prior.mapping(z, canonical_label(1), truncation_psi=self.cfg.truncation_psi)
                threestudio.info(f"Initialised the pyramid tri-grid from seed {self.cfg.seed}")
                return prior.synthesize_pyramid(ws), ws
        return self.from_file(prior)

    def from_portrait(self, prior, save_dir: Optional[str], device: str) -> Tuple[Dict[int, Tensor], Tensor]:
        try:
            cfg = self.portrait_config()
            parent = self.cfg.cache_dir or (os.path.join(save_dir, "init") if save_dir else None)
            if parent is None:
                raise ValueError("system.initializer: no folder for the initialisation; set cache_dir")
            out_dir = os.path.join(parent, init_key(cfg, self.cfg.checkpoint))
            levels, ws = initialize_portrait(
                prior, self.cfg.checkpoint, cfg, out_dir, device, log=threestudio.info
            )
        except (ValueError, CheckpointError) as e:
            raise self._named(e) from None
        finally:
            prior.cpu()
        return {r: t[:1] for r, t in levels.items()}, ws[:1]

    def from_file(self, prior) -> Tuple[Dict[int, Tensor], Tensor]:
        if not self.cfg.pyramid_path:
            raise ValueError("system.initializer.source=pyramid needs system.initializer.pyramid_path")
        try:
            levels, ws = load_pyramid(self.cfg.pyramid_path)
        except CheckpointError as e:
            raise ValueError(f"system.initializer.pyramid_path: {e}") from None
        if ws is None:
            raise ValueError(
                f"system.initializer.pyramid_path: {self.cfg.pyramid_path} holds no 'ws'; "
                "the ToRGB needs the latent the pyramid was made from"
            )
        if ws.shape[-1] != prior.cfg.w_dim:
            raise ValueError(
                f"system.initializer.pyramid_path: ws width {ws.shape[-1]} does not match the "
                f"checkpoint's w_dim {prior.cfg.w_dim}"
            )
        threestudio.info(f"Initialised the pyramid tri-grid from {self.cfg.pyramid_path}")
        return {r: t[:1] for r, t in levels.items()}, ws[:1]

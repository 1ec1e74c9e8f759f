"""``gan-prior-initializer``: fills the pyramid tri-grid (and ws) from the GAN prior.

Sources: ``seed`` (z from a seed through the mapping at the frontal camera, truncation ψ), or
``pyramid`` (any file :func:`gan_prior.load_pyramid` reads: ours, ``inversion_trigrid.pkl``,
``df.pth``, ``epoch_*.pth``, the gallery's ``NNN_pyramid_trigrid.pth``). Issue 4 adds ``prompt``
and ``image`` (inversion).
"""
from dataclasses import dataclass

import torch
import threestudio
from threestudio.utils.base import BaseObject
from threestudio.utils.typing import *

from gan_prior import CheckpointError, canonical_label, load_pyramid

from ..prior import load_prior


@threestudio.register("gan-prior-initializer")
class GANPriorInitializer(BaseObject):
    @dataclass
    class Config(BaseObject.Config):
        checkpoint: str = ""
        source: str = "seed"  # "seed" or "pyramid"
        seed: int = 0
        truncation_psi: float = 0.7
        pyramid_path: Optional[str] = None

    cfg: Config

    def configure(self) -> None:
        if self.cfg.source not in ("seed", "pyramid"):
            raise ValueError(f"system.initializer.source must be 'seed' or 'pyramid', got {self.cfg.source!r}")

    @torch.no_grad()
    def __call__(self) -> Tuple[Dict[int, Tensor], Tensor]:
        """→ (levels ``{R: [1, 3, 36, R, R]}``, ws ``[1, num_ws, w_dim]``)."""
        prior = load_prior(self.cfg.checkpoint, "system.initializer.checkpoint")
        if self.cfg.source == "seed":
            z = torch.randn(1, prior.cfg.z_dim, generator=torch.Generator().manual_seed(self.cfg.seed))
            ws = prior.mapping(z, canonical_label(1), truncation_psi=self.cfg.truncation_psi)
            threestudio.info(f"Initialised the pyramid tri-grid from seed {self.cfg.seed}")
            return prior.synthesize_pyramid(ws), ws
        if not self.cfg.pyramid_path:
            raise ValueError("system.initializer.source=pyramid needs system.initializer.pyramid_path")
        try:
            levels, ws = load_pyramid(self.cfg.pyramid_path)
        except CheckpointError as e:
            raise ValueError(f"system.initializer.pyramid_path: {e}") from None
        if ws is None:
            raise ValueError(f"system.initializer.pyramid_path: {self.cfg.pyramid_path} holds no 'ws'; "
                             "the ToRGB needs the latent the pyramid was made from")
        if ws.shape[-1] != prior.cfg.w_dim:
            raise ValueError(f"system.initializer.pyramid_path: ws width {ws.shape[-1]} does not match the "
                             f"checkpoint's w_dim {prior.cfg.w_dim}")
        threestudio.info(f"Initialised the pyramid tri-grid from {self.cfg.pyramid_path}")
        return {r: t[:1] for r, t in levels.items()}, ws[:1]

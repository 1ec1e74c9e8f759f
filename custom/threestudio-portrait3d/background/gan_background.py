"""``portrait3d-gan-background``: what empty pixels show.

- ``mode: torgb-bias`` (the official SDS stage, which renders without the GAN background): a
  feature of 0 through ToRGB, i.e. the ToRGB bias colour;
- ``mode: gan`` (the refinement targets and the official videos): the GAN's background generator
  (:func:`gan_prior.generator.background_features`, fed ``ws[:, :12]``) through the same ToRGB —
  compositing it after ToRGB equals the official feature-space compositing because ToRGB is affine.

The latent ``ws`` is the material's (``portrait3d-gan-material``): ``portrait3d-renderer`` passes it.
"""

from dataclasses import dataclass

import threestudio
import torch
from threestudio.models.background.base import BaseBackground
from threestudio.utils.typing import *

from gan_prior.generator import background_features, to_rgb

from ..prior import frozen_copy, load_prior

MODES = ("torgb-bias", "gan")


@threestudio.register("portrait3d-gan-background")
class GANBackground(BaseBackground):
    @dataclass
    class Config(BaseBackground.Config):
        checkpoint: str = ""
        mode: str = "torgb-bias"  # or "gan"

    cfg: Config

    def configure(self) -> None:
        if self.cfg.mode not in MODES:
            raise ValueError(f"system.background.mode must be 'torgb-bias' or 'gan', got {self.cfg.mode!r}")
        prior = load_prior(self.cfg.checkpoint, "system.background.checkpoint")
        if self.cfg.mode == "gan" and prior.bcg_synthesis is None:
            raise ValueError(
                f"system.background.mode=gan but {self.cfg.checkpoint} has no background generator"
            )
        self.torgb = frozen_copy(prior.torgb)
        # the refinement views and the official videos use the GAN background whatever the mode
        self.bcg_synthesis = frozen_copy(prior.bcg_synthesis) if prior.bcg_synthesis is not None else None
        self._cache: Dict[tuple, Tuple[Tensor, Tensor]] = {}

    def features(self, ws: Float[Tensor, "1 N D"], size: int) -> Float[Tensor, "1 Nf size size"]:
        """The GAN background's feature image at ``size²``, before the ToRGB (``render_labels``
        composites features over it, as the official code)."""
        return self._cached(ws, size)[0]

    def image(self, ws: Float[Tensor, "1 N D"], size: int) -> Float[Tensor, "1 size size 3"]:
        """The GAN background's colour in [0, 1] (ToRGB·0.5 + 0.5, not clamped) at ``size²``."""
        return self._cached(ws, size)[1]

    def _cached(self, ws: Tensor, size: int) -> Tuple[Tensor, Tensor]:
        if self.bcg_synthesis is None:
            raise ValueError(
                f"{self.cfg.checkpoint} has no background generator; the GAN background is unavailable"
            )
        key = (size, ws.data_ptr(), ws._version, ws.device)  # ws changes in place on set_ws / resume
        if key not in self._cache:
            with torch.no_grad():
                feats = background_features(self.bcg_synthesis, ws, size)
                rgb = (to_rgb(self.torgb, feats, ws) * 0.5 + 0.5).permute(0, 2, 3, 1)
                self._cache = {key: (feats, rgb)}
        return self._cache[key]

    def forward(
        self, dirs: Float[Tensor, "B H W 3"], ws: Optional[Float[Tensor, "1 N D"]] = None
    ) -> Float[Tensor, "B H W 3"]:
        b, h, w, _ = dirs.shape
        if self.cfg.mode == "torgb-bias":
            return (self.torgb.bias * 0.5 + 0.5).to(dirs).expand(b, h, w, 3)
        if ws is None:
            raise ValueError(
                "portrait3d-gan-background (mode gan) needs the latent ws: use it with portrait3d-renderer"
            )
        if h != w:
            raise ValueError(f"portrait3d-gan-background (mode gan) renders square images, got {h}x{w}")
        return self.image(ws, h).to(dirs).expand(b, -1, -1, -1)

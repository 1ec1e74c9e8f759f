"""``portrait3d-gan-material``: the frozen, w-modulated ToRGB of the GAN as a per-sample material.

ToRGB is a per-pixel affine map ``A f + b`` (``A`` modulated by ``ws[:, -1]``), so applying it to
each sample's 32-channel feature and compositing equals the official "composite features, then
ToRGB". Colours are returned as ``(A f + b)·0.5 + 0.5`` (the SDS stage's ``[0, 1]`` mapping); the
renderer clamps only after compositing, as the official code.
"""

from dataclasses import dataclass

import threestudio
import torch
from threestudio.models.materials.base import BaseMaterial
from threestudio.utils.typing import *

from gan_prior.generator import to_rgb

from ..prior import frozen_copy, load_prior


@threestudio.register("portrait3d-gan-material")
class GANToRGBMaterial(BaseMaterial):
    @dataclass
    class Config(BaseMaterial.Config):
        checkpoint: str = ""

    cfg: Config
    requires_normal = False

    def configure(self) -> None:
        prior = load_prior(self.cfg.checkpoint, "system.material.checkpoint")
        self.torgb = frozen_copy(prior.torgb)
        self.register_buffer("ws", torch.zeros(1, prior.num_ws, prior.cfg.w_dim))

    @torch.no_grad()
    def set_ws(self, ws: Float[Tensor, "1 N D"]) -> None:
        self.ws.copy_(ws[:1].to(self.ws))

    def forward(self, features: Float[Tensor, "*B Nf"], **kwargs) -> Float[Tensor, "*B 3"]:
        a, b = self.torgb.affine_map(self.ws[:, -1])
        return (features @ a[0].T + b) * 0.5 + 0.5

    def to_rgb(self, features: Float[Tensor, "B Nf H W"]) -> Float[Tensor, "B 3 H W"]:
        """The ToRGB of a composited feature image, in its own range (the official order: composite,
        then ToRGB; ``render_labels``)."""
        return to_rgb(self.torgb, features, self.ws)

    def export(self, features: Float[Tensor, "*N Nf"], **kwargs) -> Dict[str, Any]:
        return {"albedo": self(features).clamp(0.0, 1.0)}

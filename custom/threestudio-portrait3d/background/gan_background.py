"""``portrait3d-gan-background``: what empty pixels show.

- ``mode: torgb-bias`` (the official SDS stage, which renders without the GAN background): a
  feature of 0 through ToRGB, i.e. the ToRGB bias colour;
- ``mode: gan`` (the refinement targets and the official videos): the GAN's background generator
  (fed ``ws[:, :12]``), resized to the image and passed through the same ToRGB — compositing it
  after ToRGB equals the official feature-space compositing because ToRGB is affine.
"""
from dataclasses import dataclass

import torch
import torch.nn.functional as F
import threestudio
from threestudio.models.background.base import BaseBackground
from threestudio.utils.typing import *

from ..prior import frozen_copy, load_prior


@threestudio.register("portrait3d-gan-background")
class GANBackground(BaseBackground):
    @dataclass
    class Config(BaseBackground.Config):
        checkpoint: str = ""
        mode: str = "torgb-bias"  # or "gan"

    cfg: Config

    def configure(self) -> None:
        if self.cfg.mode not in ("torgb-bias", "gan"):
            raise ValueError(f"system.background.mode must be 'torgb-bias' or 'gan', got {self.cfg.mode!r}")
        prior = load_prior(self.cfg.checkpoint, "system.background.checkpoint")
        if self.cfg.mode == "gan" and prior.bcg_synthesis is None:
            raise ValueError(f"system.background.mode=gan but {self.cfg.checkpoint} has no background generator")
        self.torgb = frozen_copy(prior.torgb)
        self.bcg_synthesis = frozen_copy(prior.bcg_synthesis) if self.cfg.mode == "gan" else None
        self.register_buffer("ws", torch.zeros(1, prior.num_ws, prior.cfg.w_dim))
        self._cache: Dict[int, Tensor] = {}

    @torch.no_grad()
    def set_ws(self, ws: Float[Tensor, "1 N D"]) -> None:
        self.ws.copy_(ws[:1].to(self.ws))
        self._cache.clear()

    def _load_from_state_dict(self, *args, **kwargs):
        self._cache.clear()  # ws may change on resume
        return super()._load_from_state_dict(*args, **kwargs)

    def forward(self, dirs: Float[Tensor, "B H W 3"]) -> Float[Tensor, "B H W 3"]:
        b, h, w, _ = dirs.shape
        if self.cfg.mode == "torgb-bias":
            colour = self.torgb.bias * 0.5 + 0.5
            return colour.to(dirs).expand(b, h, w, 3)
        if h not in self._cache:
            with torch.no_grad():
                feats = self.bcg_synthesis(self.ws)
                feats = F.interpolate(feats, size=(h, w), mode="bilinear", align_corners=False, antialias=True)
                self._cache[h] = (self.torgb(feats, self.ws[:, -1]) * 0.5 + 0.5).permute(0, 2, 3, 1)
        return self._cache[h].to(dirs).expand(b, -1, -1, -1)

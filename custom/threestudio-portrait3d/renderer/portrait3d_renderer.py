"""``portrait3d-renderer``: the official importance-sampling renderer in threestudio's contract.

Rays (threestudio world, unit directions) are rotated into the GAN world and rendered by
:func:`gan_prior.renderer.render_rays` with the geometry + material as the field: stratified +
importance samples on ``[ray_start, ray_end]`` along unit rays from the same camera centre (exact
for threestudio cameras on the radius-2.7 sphere, see camera-check.md), the x/z crop, midpoint
quadrature. Training jitters (as the official renderer always does); evaluation is deterministic.
"""
from dataclasses import dataclass

import torch
import threestudio
from threestudio.models.renderers.base import VolumeRenderer
from threestudio.utils.typing import *

from gan_prior.camera import gan_to_threestudio_points, threestudio_to_gan_points
from gan_prior.renderer import RenderConfig, render_rays


@threestudio.register("portrait3d-renderer")
class Portrait3DRenderer(VolumeRenderer):
    @dataclass
    class Config(VolumeRenderer.Config):
        # defaults: gan_prior.renderer.RenderConfig, the official rendering_kwargs
        radius: float = RenderConfig.box_warp / 2
        ray_start: float = RenderConfig.ray_start
        ray_end: float = RenderConfig.ray_end
        depth_resolution: int = RenderConfig.depth_resolution
        depth_resolution_importance: int = RenderConfig.depth_resolution_importance
        box_warp: float = RenderConfig.box_warp
        triplane_crop: float = RenderConfig.triplane_crop
        randomized: bool = True  # stratified jitter + random importance samples while training
        eval_chunk_size: int = 16384  # rays per call at evaluation

    cfg: Config

    def configure(self, geometry, material, background) -> None:
        super().configure(geometry, material, background)
        self.render_cfg = RenderConfig().replace(
            **{f: getattr(self.cfg, f) for f in ("ray_start", "ray_end", "depth_resolution",
                                                 "depth_resolution_importance", "box_warp", "triplane_crop")})

    def _field(self, points_e: Tensor) -> Tuple[Tensor, Tensor]:
        geo = self.geometry(gan_to_threestudio_points(points_e))
        return geo["density"], self.material(**geo)

    def forward(self, rays_o: Float[Tensor, "B H W 3"], rays_d: Float[Tensor, "B H W 3"],
                light_positions: Optional[Float[Tensor, "B 3"]] = None, bg_color: Optional[Tensor] = None,
                **kwargs) -> Dict[str, Float[Tensor, "..."]]:
        b, h, w, _ = rays_o.shape
        origins = threestudio_to_gan_points(rays_o.reshape(b, h * w, 3))
        dirs = threestudio_to_gan_points(torch.nn.functional.normalize(rays_d.reshape(b, h * w, 3), dim=-1))
        deterministic = not (self.training and self.cfg.randomized)
        chunk = None if self.training else self.cfg.eval_chunk_size
        rendered = render_rays(self._field, origins, dirs, self.render_cfg, deterministic, chunk)
        fg = rendered["features"].reshape(b, h, w, 3)
        opacity = rendered["opacity"].reshape(b, h, w, 1)
        depth = rendered["depth"].reshape(b, h, w, 1)
        if bg_color is None:
            bg = self.background(dirs=rays_d)
        else:
            bg = bg_color.reshape(b, 1, 1, -1).expand(b, h, w, -1) if bg_color.ndim == 2 else bg_color
        comp = fg + (1.0 - opacity) * bg
        out = {"comp_rgb": comp.clamp(0.0, 1.0), "comp_rgb_fg": fg, "comp_rgb_bg": bg, "opacity": opacity,
               "depth": depth}
        if self.training:
            out["weights"] = rendered["weights"]  # [B, HW, S-1, 1], for the entropy loss
        return out

"""``portrait3d-renderer``: the official importance-sampling renderer in threestudio's contract.

Rays (threestudio world, unit directions) are rotated once into the GAN world and rendered by
:func:`gan_prior.renderer.render_rays` with the geometry (its GAN-world ``gan_field()``) + material as
the field: stratified +
importance samples on ``[ray_start, ray_end]`` along unit rays from the same camera centre (exact
for threestudio cameras on the radius-2.7 sphere, see camera-check.md), the x/z crop, midpoint
quadrature. Training jitters (as the official renderer always does); evaluation is deterministic.
``render_labels`` renders official camera labels through the same components with
:func:`gan_prior.renderer.render_view`, the render path of ``PortraitGAN.render`` (features
composited over the GAN background, then the material's ToRGB): stage 2 of ``portrait3d-system``
(refinement views, fit, official videos) has no other render path.
"""

import functools
from dataclasses import dataclass

import threestudio
import torch
from threestudio.models.renderers.base import VolumeRenderer
from threestudio.utils.typing import *

from gan_prior.camera import threestudio_to_gan_points
from gan_prior.checks import check_render_options
from gan_prior.renderer import RenderConfig, render_rays, render_view

from ..background.gan_background import GANBackground
from ..material.gan_material import GANToRGBMaterial


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
        options = {
            f: getattr(self.cfg, f)
            for f in (
                "ray_start",
                "ray_end",
                "depth_resolution",
                "depth_resolution_importance",
                "box_warp",
                "triplane_crop",
            )
        }
        check_render_options(options, "system.renderer.")  # bounded before any render allocates
        self.render_cfg = RenderConfig().replace(**options)

    def field(self) -> Callable[[Tensor], Tuple[Tensor, Tensor]]:
        """The render field: GAN-world points ``[B, N, 3]`` → (raw σ, the material's colour); the
        geometry's levels laid out once for all of one render's passes and chunks."""
        geometry_field = self.geometry.gan_field()  # samples stay in the GAN world

        def evaluate(
            points_e: Float[Tensor, "B N 3"],
        ) -> Tuple[Float[Tensor, "B N 1"], Float[Tensor, "B N 3"]]:
            sigma, feats = geometry_field(points_e)
            return sigma, self.material(features=feats)

        return evaluate

    def forward(
        self,
        rays_o: Float[Tensor, "B H W 3"],
        rays_d: Float[Tensor, "B H W 3"],
        light_positions: Optional[Float[Tensor, "B 3"]] = None,
        bg_color: Optional[Tensor] = None,
        **kwargs,
    ) -> Dict[str, Float[Tensor, "..."]]:
        b, h, w, _ = rays_o.shape
        origins = threestudio_to_gan_points(rays_o.reshape(b, h * w, 3))
        dirs = threestudio_to_gan_points(torch.nn.functional.normalize(rays_d.reshape(b, h * w, 3), dim=-1))
        deterministic = not (self.training and self.cfg.randomized)
        chunk = None if self.training else self.cfg.eval_chunk_size
        rendered = render_rays(self.field(), origins, dirs, self.render_cfg, deterministic, chunk)
        fg = rendered["features"].reshape(b, h, w, 3)
        opacity = rendered["opacity"].reshape(b, h, w, 1)
        depth = rendered["depth"].reshape(b, h, w, 1)
        if bg_color is None:
            gan_bg = isinstance(self.background, GANBackground)  # reads the material's ws
            bg = self.background(dirs=rays_d, ws=self.material.ws) if gan_bg else self.background(dirs=rays_d)
        else:
            bg = bg_color.reshape(b, 1, 1, -1).expand(b, h, w, -1) if bg_color.ndim == 2 else bg_color
        comp = fg + (1.0 - opacity) * bg
        out = {
            "comp_rgb": comp.clamp(0.0, 1.0),
            "comp_rgb_fg": fg,
            "comp_rgb_bg": bg,
            "opacity": opacity,
            "depth": depth,
        }
        if self.training:
            out["weights"] = rendered["weights"]  # [B, HW, S-1, 1], for the entropy loss
        return out

    def render_labels(
        self,
        labels: Float[Tensor, "B 25"],
        resolution: int,
        deterministic: bool = True,
        background: bool = True,
        patch: Optional[Tuple[int, int, int]] = None,
        chunk: Optional[int] = None,
        **render_options,
    ) -> Dict[str, Float[Tensor, "..."]]:
        """The official cameras' view (``PortraitGAN.render``'s contract) through this renderer's
        geometry, material and background: the refinement views, the fit and the official videos.

        ``image`` ``[B, 3, H, W]`` in the ToRGB range (not clamped), ``mask`` ``[B, 1, H, W]`` (the
        official ``image_mask``), ``features``, ``opacity``, ``depth``; ``background`` = the GAN
        background, else the ToRGB bias (a zero feature, as ``PortraitGAN.render(background=False)``),
        both in feature space before the ToRGB, as the official code; ``patch = (top, left, size)``
        renders that window of the ``resolution²`` image; ``render_options`` override
        :class:`~gan_prior.renderer.RenderConfig` fields (e.g. ``depth_resolution``).
        """
        if not isinstance(self.background, GANBackground) or not isinstance(self.material, GANToRGBMaterial):
            raise ValueError(
                "system.background_type must be portrait3d-gan-background and system.material_type "
                "portrait3d-gan-material for the refinement and the official videos (they composite the "
                "GAN background or the ToRGB bias)"
            )
        cfg = self.render_cfg.replace(**render_options) if render_options else self.render_cfg
        ws = self.material.ws
        bcg = functools.partial(self.background.features, ws, resolution) if background else None
        out = render_view(
            self.geometry.gan_field(), labels, resolution, cfg, deterministic, patch, chunk, bcg
        )
        return {"image": self.material.to_rgb(out["features"]), **out}

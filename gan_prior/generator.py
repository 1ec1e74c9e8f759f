"""``PortraitGAN``: the 3DPortraitGAN▲ generator (mapping → pyramid tri-grid → neural render).

Module names mirror the official ``TriPlaneGenerator`` so official state dicts load as they
are: ``backbone.mapping``, ``backbone.synthesis`` (2D blocks ``b{r}`` and 3D-aware blocks
``b3d{r}``), ``decoder``, ``torgb``, ``bcg_synthesis`` and ``superresolution``. The body-pose
branch and the SMPL buffers of the official file are not built (every stage renders the
canonical, undeformed pyramid).

    G = PortraitGAN.from_checkpoint(path)
    ws = G.mapping(z, c)                      # [B, 14, 512]
    pyramid = G.synthesize_pyramid(ws)        # {8: [B,3,36,8,8], …, 512: [B,3,36,512,512]}
    out = G.render(pyramid, ws, c, resolution=64)   # image / depth / mask
    out = G.synthesize(ws, c)                 # official synthesis: image (SR, 512²) + image_raw (128²)
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Mapping, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .decoder import TriGridDecoder
from .layers import ToRGBLayer
from .mapping import MappingNetwork
from .pyramid_trigrid import TRIGRID_CHANNELS, TRIGRID_DEPTH, sample_pyramid
from .renderer import RenderConfig, rays_from_label, render_rays
from .superresolution import SR_CONV_CLAMP, Superresolution
from .synthesis import BackgroundSynthesis, PyramidSynthesis

MASK_EPS = 0.001  # official image_mask = opacity·(1 + 2·0.001) − 0.001


@dataclass
class PortraitGANConfig:
    """Architecture of the generator. Defaults are the released ``model_512`` configuration."""

    z_dim: int = 512
    w_dim: int = 512
    c_dim: int = 25  # camera label (16 cam2world + 9 intrinsics)
    pose_dim: int = 6  # neck + head axis-angle, appended to the label (0 = canonical)
    mapping_layers: int = 2
    synthesis_resolution: int = 256  # 2D branch; pyramid levels are 8 … 2·resolution
    trigrid_channels: int = TRIGRID_CHANNELS
    trigrid_depth: int = TRIGRID_DEPTH
    feature_channels: int = 32  # decoder output / ToRGB input
    background: bool = True
    background_resolution: int = 128
    background_channel_base: int = 32768
    background_channel_max: int = 512
    # Official SuperresolutionHybrid8XDC: input = the background resolution (the official
    # bcg_synthesis is built at superresolution.input_resolution), output 4× that.
    superresolution: bool = True
    superresolution_channels: tuple[int, int] = (256, 128)
    superresolution_conv_clamp: Optional[float] = SR_CONV_CLAMP  # None when sr_num_fp16_res = 0
    render: RenderConfig = field(default_factory=RenderConfig)

    @classmethod
    def from_dict(cls, d: Mapping, source: str = "config") -> "PortraitGANConfig":
        names = {f.name for f in fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"{source}: unknown generator option(s) {sorted(unknown)}; valid: {sorted(names)}")
        d = dict(d)
        # Folders saved before the superresolution port hold no SR weights.
        d.setdefault("superresolution", False)
        if "superresolution_channels" in d:
            d["superresolution_channels"] = tuple(d["superresolution_channels"])
        if "render" in d and not isinstance(d["render"], RenderConfig):
            d["render"] = RenderConfig().replace(**d["render"])
        return cls(**d)

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def plane_channels(self) -> int:
        return self.trigrid_channels * self.trigrid_depth

    @property
    def level_sizes(self) -> list[int]:
        return [2 ** i for i in range(3, int(math.log2(self.synthesis_resolution)) + 2)]

    @property
    def neural_rendering_resolution(self) -> int:
        """The official ``neural_rendering_resolution`` of ``synthesize`` (128 for model_512)."""
        return self.background_resolution

    @property
    def image_resolution(self) -> int:
        """Side of the superresolved ``image`` (512 for model_512)."""
        return 4 * self.background_resolution


def tiny_config(**overrides) -> PortraitGANConfig:
    """A small configuration of the same architecture (levels 8…32, narrow background),
    for tests and the tiny pipeline."""
    base = dict(z_dim=64, w_dim=64, synthesis_resolution=16, background_resolution=32,
                background_channel_base=512, background_channel_max=32,
                superresolution_channels=(16, 8),
                render=RenderConfig(depth_resolution=12, depth_resolution_importance=12))
    base.update(overrides)
    return PortraitGANConfig(**base)


class _Backbone(nn.Module):
    """Holds ``mapping`` and ``synthesis`` under the official ``backbone.`` prefix."""

    def __init__(self, cfg: PortraitGANConfig):
        super().__init__()
        self.synthesis = PyramidSynthesis(cfg.w_dim, cfg.synthesis_resolution, 3 * cfg.plane_channels)
        self.mapping = MappingNetwork(cfg.z_dim, cfg.c_dim + cfg.pose_dim, cfg.w_dim,
                                      self.synthesis.num_ws, cfg.mapping_layers)


class PortraitGAN(nn.Module):
    def __init__(self, cfg: Optional[PortraitGANConfig] = None):
        super().__init__()
        self.cfg = cfg = cfg or PortraitGANConfig()
        self.backbone = _Backbone(cfg)
        self.decoder = TriGridDecoder(cfg.trigrid_channels, 32, cfg.feature_channels)
        self.torgb = ToRGBLayer(cfg.feature_channels, 3, cfg.w_dim)
        self.bcg_synthesis = (BackgroundSynthesis(cfg.w_dim, cfg.background_resolution, cfg.feature_channels,
                                                  cfg.background_channel_base, cfg.background_channel_max)
                              if cfg.background else None)
        self.superresolution = (Superresolution(cfg.feature_channels, cfg.w_dim, cfg.background_resolution,
                                                cfg.superresolution_channels, cfg.superresolution_conv_clamp)
                                if cfg.superresolution else None)

    # ---------------------------------------------------------------- construction / files
    @classmethod
    def random(cls, cfg: Optional[PortraitGANConfig] = None, seed: int = 0) -> "PortraitGAN":
        """A randomly initialised generator (StyleGAN2 init: weights ~ N(0, 1), affine bias 1),
        with non-zero noise strengths and ``w_avg`` so that every path is exercised."""
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            g = cls(cfg)
            for name, p in g.named_parameters():
                if name.endswith("noise_strength"):
                    p.data.normal_(0, 0.1)
            g.backbone.mapping.w_avg.normal_(0, 0.5)
        return g.eval().requires_grad_(False)

    @classmethod
    def from_checkpoint(cls, path: str, map_location="cpu") -> "PortraitGAN":
        """Official ``model_512.pkl``, a ``torch.save``'d official-key state dict, or our folder."""
        from .checkpoint import load_generator

        return load_generator(path, map_location=map_location)

    def save(self, folder: str) -> None:
        from .checkpoint import save_generator

        save_generator(self, folder)

    # ---------------------------------------------------------------- the three stages
    @property
    def num_ws(self) -> int:
        return self.backbone.mapping.num_ws

    def mapping(self, z: Tensor, c: Tensor, pose: Optional[Tensor] = None, truncation_psi: float = 1.0,
                truncation_cutoff: Optional[int] = None) -> Tensor:
        """z ``[B, z_dim]``, label c ``[B, 25]``, body pose ``[B, 6]`` (default 0) → ws ``[B, num_ws, w_dim]``."""
        if pose is None:
            pose = torch.zeros(c.shape[0], self.cfg.pose_dim, device=c.device, dtype=c.dtype)
        return self.backbone.mapping(z, torch.cat([c, pose], 1), truncation_psi, truncation_cutoff)

    def synthesize_pyramid(self, ws: Tensor, noise_mode: str = "const") -> dict[int, Tensor]:
        """ws ``[B, num_ws, w_dim]`` → ``{R: [B, 3, 36, R, R]}`` for every level size R."""
        return self.backbone.synthesis(ws, noise_mode)

    def field(self, pyramid: Mapping[int, Tensor]):
        """The renderer's field for a pyramid: points ``[B, N, 3]`` → (σ_raw, 32-ch features)."""

        def evaluate(points: Tensor) -> tuple[Tensor, Tensor]:
            return self.decoder(sample_pyramid(pyramid, points, self.cfg.render.box_warp, self.cfg.trigrid_depth))

        return evaluate

    def background_features(self, ws: Tensor, size: int, noise_mode: str = "const") -> Tensor:
        """The background generator's feature image resized to ``size²``: ``[B, 32, size, size]``
        (bilinear, antialiased, as the official ``sr_antialias``)."""
        bcg = self.bcg_synthesis(ws, noise_mode)
        return F.interpolate(bcg, size=(size, size), mode="bilinear", align_corners=False, antialias=True)

    def to_rgb(self, features: Tensor, ws: Tensor) -> Tensor:
        """The w-modulated ToRGB (with ``ws[:, -1]``) on a ``[B, 32, H, W]`` feature image."""
        return self.torgb(features, ws[:, -1])

    def render(self, pyramid: Mapping[int, Tensor], ws: Tensor, c: Tensor, resolution: int = 64,
               deterministic: bool = False, background: bool = True,
               patch: Optional[tuple[int, int, int]] = None, chunk: Optional[int] = None,
               noise_mode: str = "const", **render_options) -> dict[str, Tensor]:
        """Render a pyramid (any subset of levels) from cameras ``c`` ``[B, 25]``.

        Returns ``image`` ``[B, 3, H, W]`` (the official ``image_raw``: ToRGB output, roughly
        [−1, 1], no clamp), ``depth`` and ``mask`` (``opacity·1.002 − 0.001``) ``[B, 1, H, W]``,
        ``opacity`` and ``features`` (``[B, 32, H, W]``, after background compositing).
        ``patch=(top, left, size)`` renders a window of the ``resolution²`` image; ``chunk`` caps
        rays per renderer call; ``render_options`` override :class:`RenderConfig` fields.
        """
        if not pyramid:
            raise ValueError("render needs at least one pyramid level")
        cfg = self.cfg.render.replace(**render_options) if render_options else self.cfg.render
        origins, dirs = rays_from_label(c.float(), resolution, patch)
        b = origins.shape[0]
        side = patch[2] if patch else resolution
        out = render_rays(self.field(pyramid), origins, dirs, cfg, deterministic, chunk)

        def image(x: Tensor) -> Tensor:
            return x.transpose(1, 2).reshape(b, x.shape[-1], side, side)

        features, depth, opacity = image(out["features"]), image(out["depth"]), image(out["opacity"])
        if background and self.bcg_synthesis is not None:
            bcg = self.background_features(ws, resolution, noise_mode)
            if patch:  # the official code resizes to the patch instead; it never renders patches with background
                top, left, size = patch
                bcg = bcg[:, :, top:top + size, left:left + size]
            features = features + (1 - opacity) * bcg
        return {"image": self.to_rgb(features, ws), "depth": depth,
                "mask": opacity * (1 + 2 * MASK_EPS) - MASK_EPS, "opacity": opacity, "features": features}

    # ---------------------------------------------------------------- the official synthesis
    # ``G.superresolution(rgb [B,3,H,W], features [B,32,H,W], ws)`` → ``[B, 3, 512, 512]`` is the
    # module itself (gan_prior.superresolution); ``synthesize`` chains render and SR.
    def synthesize(self, ws: Tensor, c: Tensor, pyramid: Optional[Mapping[int, Tensor]] = None,
                   resolution: Optional[int] = None, deterministic: bool = False,
                   noise_mode: str = "const", **render_kwargs) -> dict[str, Tensor]:
        """The official ``TriPlaneGenerator.synthesis`` (``training/smpl_triplane.py``), canonical pose.

        Renders the pyramid (synthesised from ``ws`` unless given) at the neural rendering
        resolution (default 128) with the GAN background, then superresolves. Returns ``image``
        ``[B, 3, 512, 512]`` (the GAN's output image), ``image_raw`` ``[B, 3, R, R]`` and the
        render's ``depth``, ``mask``, ``opacity``, ``features``.
        """
        if self.superresolution is None:
            raise ValueError("this generator has no superresolution module (its checkpoint holds no "
                             "'superresolution.*' weights); render image_raw with G.render instead")
        if pyramid is None:
            pyramid = self.synthesize_pyramid(ws, noise_mode)
        out = self.render(pyramid, ws, c, resolution=resolution or self.cfg.neural_rendering_resolution,
                          deterministic=deterministic, noise_mode=noise_mode, **render_kwargs)
        out["image_raw"] = out["image"]
        # G.superresolution(rgb, features, ws): the official module (any input size, no noise)
        out["image"] = self.superresolution(out["image_raw"], out["features"], ws)
        return out

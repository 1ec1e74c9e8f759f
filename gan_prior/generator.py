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

import json
import os
from typing import Any, Mapping, Optional

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import Tensor, nn

from .checkpoint import (
    FORMAT_VERSION,
    CheckpointError,
    Record,
    Stub,
    flatten_module,
    read_checkpoint,
    read_safetensors,
)
from .checks import (
    MAX_GENERATOR_ELEMENTS,
    SAVE_FIX,
    check_generator_config,
    require_finite,
    require_own_storage,
)
from .decoder import TriGridDecoder
from .files import atomic_path
from .generator_config import PortraitGANConfig, config_from_init_kwargs, infer_config, tiny_config
from .layers import ToRGBLayer
from .mapping import MappingNetwork
from .pyramid_trigrid import pyramid_field
from .renderer import rays_from_label, render_rays
from .superresolution import Superresolution
from .synthesis import BackgroundSynthesis, PyramidSynthesis

__all__ = [
    "PortraitGAN",
    "PortraitGANConfig",
    "tiny_config",
    "load_generator",
    "save_generator",
    "load_state_into",
    "load_decoder_checkpoint",
]

MASK_EPS = 0.001  # official image_mask = opacity·(1 + 2·0.001) − 0.001
MODEL_WEIGHTS = "model.safetensors"  # our generator folder: weights (official key names) …
MODEL_CONFIG = "config.json"  # … and the architecture


def background_features(
    bcg_synthesis: BackgroundSynthesis, ws: Tensor, size: int, noise_mode: str = "const"
) -> Tensor:
    """``bcg_synthesis``'s feature image for ws ``[B, num_ws, w_dim]`` resized to ``[B, 32, size, size]``
    (bilinear, antialiased, as the official ``sr_antialias``)."""
    bcg = bcg_synthesis(ws, noise_mode)
    return F.interpolate(bcg, size=(size, size), mode="bilinear", align_corners=False, antialias=True)


def to_rgb(torgb: ToRGBLayer, features: Tensor, ws: Tensor) -> Tensor:
    """The w-modulated ToRGB (with ``ws[:, -1]``) on a ``[B, 32, H, W]`` feature image."""
    return torgb(features, ws[:, -1])


def opacity_to_mask(opacity: Tensor) -> Tensor:
    """The official ``image_mask``: ``opacity·(1 + 2·MASK_EPS) − MASK_EPS``."""
    return opacity * (1 + 2 * MASK_EPS) - MASK_EPS


class _Backbone(nn.Module):
    """Holds ``mapping`` and ``synthesis`` under the official ``backbone.`` prefix."""

    def __init__(self, cfg: PortraitGANConfig):
        super().__init__()
        self.synthesis = PyramidSynthesis(cfg.w_dim, cfg.synthesis_resolution, 3 * cfg.plane_channels)
        self.mapping = MappingNetwork(
            cfg.z_dim, cfg.c_dim + cfg.pose_dim, cfg.w_dim, self.synthesis.num_ws, cfg.mapping_layers
        )


class PortraitGAN(nn.Module):
    def __init__(self, cfg: Optional[PortraitGANConfig] = None):
        super().__init__()
        self.cfg = cfg = cfg or PortraitGANConfig()
        self.backbone = _Backbone(cfg)
        self.decoder = TriGridDecoder(cfg.trigrid_channels, 32, cfg.feature_channels)
        self.torgb = ToRGBLayer(cfg.feature_channels, 3, cfg.w_dim)
        self.bcg_synthesis = (
            BackgroundSynthesis(
                cfg.w_dim,
                cfg.background_resolution,
                cfg.feature_channels,
                cfg.background_channel_base,
                cfg.background_channel_max,
            )
            if cfg.background
            else None
        )
        self.superresolution = (
            Superresolution(
                cfg.feature_channels,
                cfg.w_dim,
                cfg.background_resolution,
                cfg.superresolution_channels,
                cfg.superresolution_conv_clamp,
            )
            if cfg.superresolution
            else None
        )

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
        return load_generator(path, map_location=map_location)

    def save(self, folder: str) -> None:
        save_generator(self, folder)

    # ---------------------------------------------------------------- the three stages
    @property
    def num_ws(self) -> int:
        return self.backbone.mapping.num_ws

    def mapping(
        self,
        z: Tensor,
        c: Tensor,
        pose: Optional[Tensor] = None,
        truncation_psi: float = 1.0,
        truncation_cutoff: Optional[int] = None,
    ) -> Tensor:
        """z ``[B, z_dim]``, label c ``[B, 25]``, body pose ``[B, 6]`` (default 0) → ws ``[B, num_ws, w_dim]``."""
        if pose is None:
            pose = torch.zeros(c.shape[0], self.cfg.pose_dim, device=c.device, dtype=c.dtype)
        return self.backbone.mapping(z, torch.cat([c, pose], 1), truncation_psi, truncation_cutoff)

    def synthesize_pyramid(self, ws: Tensor, noise_mode: str = "const") -> dict[int, Tensor]:
        """ws ``[B, num_ws, w_dim]`` → ``{R: [B, 3, 36, R, R]}`` for every level size R."""
        return self.backbone.synthesis(ws, noise_mode)

    def field(self, pyramid: Mapping[int, Tensor]):
        """The renderer's field for a pyramid: points ``[B, N, 3]`` → (σ_raw, 32-ch features)."""
        return pyramid_field(pyramid, self.decoder, self.cfg.render.box_warp, self.cfg.trigrid_depth)

    def background_features(self, ws: Tensor, size: int, noise_mode: str = "const") -> Tensor:
        """The background generator's feature image resized to ``size²``: ``[B, 32, size, size]``."""
        return background_features(self.bcg_synthesis, ws, size, noise_mode)

    def to_rgb(self, features: Tensor, ws: Tensor) -> Tensor:
        """The w-modulated ToRGB (with ``ws[:, -1]``) on a ``[B, 32, H, W]`` feature image."""
        return to_rgb(self.torgb, features, ws)

    def render(
        self,
        pyramid: Mapping[int, Tensor],
        ws: Tensor,
        c: Tensor,
        resolution: int = 64,
        deterministic: bool = False,
        background: bool = True,
        patch: Optional[tuple[int, int, int]] = None,
        chunk: Optional[int] = None,
        noise_mode: str = "const",
        **render_options,
    ) -> dict[str, Tensor]:
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
            if (
                patch
            ):  # the official code resizes to the patch instead; it never renders patches with background
                top, left, size = patch
                bcg = bcg[:, :, top : top + size, left : left + size]
            features = features + (1 - opacity) * bcg
        return {
            "image": self.to_rgb(features, ws),
            "depth": depth,
            "mask": opacity_to_mask(opacity),
            "opacity": opacity,
            "features": features,
        }

    # ---------------------------------------------------------------- the official synthesis
    # ``G.superresolution(rgb [B,3,H,W], features [B,32,H,W], ws)`` → ``[B, 3, 512, 512]`` is the
    # module itself (gan_prior.superresolution); ``synthesize`` chains render and SR.
    def synthesize(
        self,
        ws: Tensor,
        c: Tensor,
        pyramid: Optional[Mapping[int, Tensor]] = None,
        resolution: Optional[int] = None,
        deterministic: bool = False,
        noise_mode: str = "const",
        **render_kwargs,
    ) -> dict[str, Tensor]:
        """The official ``TriPlaneGenerator.synthesis`` (``training/smpl_triplane.py``), canonical pose.

        Renders the pyramid (synthesised from ``ws`` unless given) at the neural rendering
        resolution (default 128) with the GAN background, then superresolves. Returns ``image``
        ``[B, 3, 512, 512]`` (the GAN's output image), ``image_raw`` ``[B, 3, R, R]`` and the
        render's ``depth``, ``mask``, ``opacity``, ``features``.
        """
        if self.superresolution is None:
            raise ValueError(
                "this generator has no superresolution module (its checkpoint holds no "
                "'superresolution.*' weights); render image_raw with G.render instead"
            )
        if pyramid is None:
            pyramid = self.synthesize_pyramid(ws, noise_mode)
        out = self.render(
            pyramid,
            ws,
            c,
            resolution=resolution or self.cfg.neural_rendering_resolution,
            deterministic=deterministic,
            noise_mode=noise_mode,
            **render_kwargs,
        )
        out["image_raw"] = out["image"]
        out["image"] = self.superresolution(out["image_raw"], out["features"], ws)
        return out


# ---------------------------------------------------------------- files
def _official_generator_state(obj: Any, path: str) -> tuple[dict[str, Tensor], dict]:
    """``(state_dict, init_kwargs)`` of ``G_ema`` from an official pickle's top-level dict."""
    if not isinstance(obj, dict) or "G_ema" not in obj:
        raise CheckpointError.at(
            path, "no 'G_ema' entry; expected the official model_512.pkl network snapshot"
        )
    g = obj["G_ema"]
    if not isinstance(g, (Record, Stub)):
        raise CheckpointError.at(path, "'G_ema' is not a network record")
    kwargs = g.init_kwargs if isinstance(g, Record) else {}
    return flatten_module(g), kwargs


def check_generator_size(cfg, source: str = "config") -> int:
    """Count the values of the generator ``cfg`` describes without allocating them (meta device);
    refuse more than :data:`MAX_GENERATOR_ELEMENTS`. Returns the count."""
    with torch.device("meta"):
        model = PortraitGAN(cfg)
    count = sum(t.numel() for t in model.parameters()) + sum(t.numel() for t in model.buffers())
    if count > MAX_GENERATOR_ELEMENTS:
        raise ValueError(
            f"{source}: this config describes a generator of {count / 1e9:.1f} G values (over the "
            f"{MAX_GENERATOR_ELEMENTS / 1e9:g} G limit); check its resolutions and channel counts"
        )
    return count


def load_generator(path: str, map_location="cpu") -> PortraitGAN:
    """Build a :class:`PortraitGAN` from any supported generator file."""
    if os.path.isdir(path):
        cfg_path = os.path.join(path, MODEL_CONFIG)
        if not os.path.isfile(cfg_path):
            raise CheckpointError.at(
                path, f"folder has no {MODEL_CONFIG}; expected a folder written by PortraitGAN.save"
            )
        try:
            with open(cfg_path, encoding="utf-8") as f:
                meta = json.load(f)
        except (ValueError, RecursionError) as e:  # JSONDecodeError, bad UTF-8, absurd nesting
            raise CheckpointError.at(cfg_path, f"invalid JSON ({type(e).__name__}: {str(e)[:120]})") from None
        if not isinstance(meta, dict):
            raise CheckpointError.at(
                cfg_path,
                f"holds a {type(meta).__name__}, expected an object "
                "{'kind': 'portrait-gan', 'config': {...}}",
            )
        if meta.get("kind") != "portrait-gan":
            raise CheckpointError.at(cfg_path, f"kind is {meta.get('kind')!r:.60}, expected 'portrait-gan'")
        try:
            check_generator_config(meta.get("config", {}), cfg_path)
            cfg = PortraitGANConfig.from_dict(meta.get("config", {}), cfg_path)
        except (TypeError, ValueError) as e:
            raise CheckpointError(str(e) if str(e).startswith(cfg_path) else f"{cfg_path}: {e}") from None
        check_generator_size(cfg, cfg_path)
        state = read_safetensors(os.path.join(path, MODEL_WEIGHTS))
    else:
        obj = read_checkpoint(path)
        if isinstance(obj, dict) and "G_ema" in obj:
            state, kwargs = _official_generator_state(obj, path)
            cfg = config_from_init_kwargs(kwargs, state, path)
        elif isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            state = obj
            if not any(k.startswith("backbone.") for k in state):
                kind = "a decoder checkpoint" if "decoder.net.0.weight" in state else "a state dict"
                raise CheckpointError.at(
                    path,
                    f"this is {kind} without the generator backbone; expected model_512.pkl, "
                    "a full official-key state dict, or a PortraitGAN.save folder",
                )
            cfg = infer_config(state, path)
        elif isinstance(obj, dict) and "state_dict" in obj:
            raise CheckpointError.at(
                path,
                "this is a decoder checkpoint (decoder_512.ckpt): it has no generator; "
                "use gan_prior.generator.load_decoder_checkpoint",
            )
        else:
            raise CheckpointError.at(
                path,
                "not a generator checkpoint; expected model_512.pkl, an official-key "
                "state dict, or a PortraitGAN.save folder",
            )
        check_generator_config(cfg.to_dict(), path)  # a config inferred from a file's shapes or kwargs
        check_generator_size(cfg, path)  # before anything is allocated
    g = PortraitGAN(cfg)
    load_state_into(g, state, path)
    return g.to(map_location).eval().requires_grad_(False)


# Official entries that this port does not build (body-pose branch, SMPL buffers, the dataset
# label statistics).
_UNUSED_PREFIXES = ("pose_branch.", "renderer.", "dataset_label_std")


def load_state_into(model: nn.Module, state: Mapping[str, Tensor], path: str) -> None:
    """Strictly load ``state`` (ignoring the official modules we do not build)."""
    own = model.state_dict()
    state = {k: v for k, v in state.items() if not k.startswith(_UNUSED_PREFIXES)}
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise CheckpointError.at(
            path,
            f"weights do not match the architecture: missing {missing[:4]}"
            f"{'…' if len(missing) > 4 else ''}, unexpected {unexpected[:4]}"
            f"{'…' if len(unexpected) > 4 else ''}",
        )
    bad = [k for k in own if tuple(own[k].shape) != tuple(state[k].shape)]
    if bad:
        k = bad[0]
        raise CheckpointError.at(
            path, f"shape mismatch for {k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        )
    try:
        for k, v in state.items():
            require_own_storage(v, f"weight {k}")
            require_finite(v, f"weight {k}")
    except ValueError as e:
        raise CheckpointError.at(path, str(e)) from None
    model.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)


def save_generator(model: PortraitGAN, folder: str) -> None:
    """Our format: ``config.json`` (architecture) + ``model.safetensors`` (official key names)."""
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    for k, v in state.items():
        require_finite(v, f"{folder}: weight {k}", SAVE_FIX)
    os.makedirs(folder, exist_ok=True)
    with atomic_path(os.path.join(folder, MODEL_WEIGHTS), ".safetensors") as tmp:
        save_file(state, tmp)
    with atomic_path(os.path.join(folder, MODEL_CONFIG), ".json") as tmp:
        json.dump(
            {"kind": "portrait-gan", "format_version": FORMAT_VERSION, "config": model.cfg.to_dict()},
            open(tmp, "w"),
            indent=2,
        )


def load_decoder_checkpoint(path: str) -> dict[str, Tensor]:
    """The official ``decoder_512.ckpt``: ``decoder.*`` and ``torgb.*`` weights (pose branch dropped)."""
    obj = read_checkpoint(path)
    state = obj.get("state_dict") if isinstance(obj, dict) else None
    if not isinstance(state, dict) or "decoder.net.0.weight" not in state:
        raise CheckpointError.at(
            path, "expected the official decoder checkpoint {'params', 'state_dict'} with decoder.* keys"
        )
    return {k: v for k, v in state.items() if k.startswith(("decoder.", "torgb."))}

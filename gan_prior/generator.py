"""``PortraitGAN``: the 3DPortraitGAN▲ generator (mapping → pyramid tri-grid → neural render).

Module names mirror the official ``TriPlaneGenerator`` so official state dicts load as they
are: ``backbone.mapping``, ``backbone.synthesis`` (2D blocks ``b{r}`` and 3D-aware blocks
``b3d{r}``), ``decoder``, ``torgb``, ``bcg_synthesis`` and ``superresolution``; where the file
holds them, ``pose_branch`` (the generator's body-pose predictor, :mod:`gan_prior.pose`) and
``renderer`` (the SMPL buffers of the mesh-guided deformation, :mod:`gan_prior.deformation`, under
the official ``renderer.`` names). Every stage renders the canonical pyramid; only the inversion
renders posed (``pose=`` in :meth:`PortraitGAN.render` / :meth:`PortraitGAN.synthesize`).

    G = PortraitGAN.from_checkpoint(path)
    ws = G.mapping(z, c)                      # [B, 14, 512]
    pyramid = G.synthesize_pyramid(ws)        # {8: [B,3,36,8,8], …, 512: [B,3,36,512,512]}
    out = G.render(pyramid, ws, c, resolution=64)   # image / depth / mask
    out = G.synthesize(ws, c)                 # official synthesis: image (SR, 512²) + image_raw (128²)
"""

from __future__ import annotations

import functools
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
    looks_like_safetensors,
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
from .deformation import MeshDeformation
from .files import atomic_path
from .generator_config import PortraitGANConfig, config_from_init_kwargs, infer_config, tiny_config
from .layers import ToRGBLayer
from .mapping import MappingNetwork
from .pose import PoseBranch
from .pyramid_trigrid import pyramid_field
from .renderer import render_view
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
        self.pose_branch = PoseBranch(cfg.z_dim, cfg.c_dim) if cfg.pose_branch else None
        self.renderer = (
            MeshDeformation(cfg.smpl_vertices, cfg.smpl_faces, cfg.smpl_joints, cfg.smpl_betas, cfg.thickness)
            if cfg.deformable
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

    def pose_params(self, z: Tensor, c: Tensor) -> Tensor:
        """The generator's body pose for z ``[B, z_dim]`` and label c ``[B, 25]`` → ``[B, 6]``
        (official ``TriPlaneGenerator.get_pose_params``, with the mirror trick)."""
        if self.pose_branch is None:
            raise ValueError(
                "this generator has no pose branch (its checkpoint holds no 'pose_branch.*' weights)"
            )
        return self.pose_branch(z, c, symmetric=self.cfg.explicitly_symmetry)

    def pose_warp(self, pose: Optional[Tensor]):
        """The render's sample-point warp for body pose ``pose`` ``[B, 6]`` (None: canonical)."""
        if pose is None:
            return None
        if self.renderer is None:
            raise ValueError(
                "this generator has no SMPL buffers (its checkpoint holds no 'renderer.aligned_SMPL.*'): "
                "it renders the canonical pose only; pass pose=None"
            )
        return self.renderer.warp_for(pose)

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
        pose: Optional[Tensor] = None,
        **render_options,
    ) -> dict[str, Tensor]:
        """Render a pyramid (any subset of levels) from cameras ``c`` ``[B, 25]``.

        ``pose`` ``[B, 6]``: render in that body pose with the SMPL mesh-guided deformation (the
        official ``apply_def=True``, used by the inversion only); None = canonical.

        Returns ``image`` ``[B, 3, H, W]`` (the official ``image_raw``: ToRGB output, roughly
        [−1, 1], no clamp), ``depth`` and ``mask`` (``opacity·1.002 − 0.001``) ``[B, 1, H, W]``,
        ``opacity`` and ``features`` (``[B, 32, H, W]``, after background compositing).
        ``patch=(top, left, size)`` renders a window of the ``resolution²`` image; ``chunk`` caps
        rays per renderer call; ``render_options`` override :class:`RenderConfig` fields.
        """
        if not pyramid:
            raise ValueError("render needs at least one pyramid level")
        cfg = self.cfg.render.replace(**render_options) if render_options else self.cfg.render
        with_bcg = background and self.bcg_synthesis is not None
        bcg = functools.partial(self.background_features, ws, resolution, noise_mode) if with_bcg else None
        field, warp = self.field(pyramid), self.pose_warp(pose)
        out = render_view(field, c, resolution, cfg, deterministic, patch, chunk, bcg, warp)
        return {"image": self.to_rgb(out["features"], ws), **out}

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
        """The official ``TriPlaneGenerator.synthesis`` (``training/smpl_triplane.py``); ``pose=p``
        (in ``render_kwargs``) is its ``apply_def=True, pose_params=p``.

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
def _official_generator_state(obj: Any, path: str) -> tuple[dict[str, Tensor], dict, dict]:
    """``(state_dict, init_kwargs, stored attributes)`` of ``G_ema`` from an official pickle's dict."""
    if not isinstance(obj, dict) or "G_ema" not in obj:
        raise CheckpointError.at(
            path, "no 'G_ema' entry; expected the official model_512.pkl network snapshot"
        )
    g = obj["G_ema"]
    if not isinstance(g, (Record, Stub)):
        raise CheckpointError.at(path, "'G_ema' is not a network record")
    kwargs = g.init_kwargs if isinstance(g, Record) else {}
    attrs = {k: v for k, v in g.state.items() if k == "neural_rendering_resolution"}
    return flatten_module(g), kwargs, attrs


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
        _require_plain_tensors(state, path)
    else:
        if looks_like_safetensors(path):  # e.g. a pyramid file given where the generator goes
            raise CheckpointError.at(
                path,
                "a safetensors file is not a generator checkpoint; give model_512.pkl, an official-key "
                "state dict or a PortraitGAN.save folder (pyramid files are read with --pyramid)",
            )
        obj = read_checkpoint(path)
        if isinstance(obj, dict) and "G_ema" in obj:
            state, kwargs, attrs = _official_generator_state(obj, path)
            _require_plain_tensors(state, path)
            cfg = config_from_init_kwargs(kwargs, state, path, attrs)
        elif isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            state = obj
            if not any(k.startswith("backbone.") for k in state):
                kind = "a decoder checkpoint" if "decoder.net.0.weight" in state else "a state dict"
                raise CheckpointError.at(
                    path,
                    f"this is {kind} without the generator backbone; expected model_512.pkl, "
                    "a full official-key state dict, or a PortraitGAN.save folder",
                )
            _require_plain_tensors(state, path)
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


# Official entries that this port never reads: the dataset label statistics, the head-face mask
# (unused by the deformation), the SMPL model's trained parameters (betas, global_orient, body_pose,
# transl: the inversion rebuilds SMPL at zero, see gan_prior.smpl), its extra-joint selector, the
# joint regressor of the alignment point (align_points is stored) and the copy of the faces.
_UNUSED_KEYS = ("dataset_label_std", "renderer.head_face_mask", "renderer.aligned_SMPL.smpl_joint_regressor")
_UNUSED_SMPL_MODEL = (
    "betas",
    "global_orient",
    "body_pose",
    "transl",
    "faces_tensor",
    "vertex_joint_selector.",
)


def _unused(key: str, own: Mapping[str, Tensor]) -> bool:
    if key in _UNUSED_KEYS or key.startswith("renderer.aligned_SMPL.model." + _UNUSED_SMPL_MODEL[-1]):
        return True
    if key.startswith("renderer.aligned_SMPL.model.") and key.rsplit(".", 1)[-1] in _UNUSED_SMPL_MODEL:
        return True
    # official modules this generator does not build (a checkpoint without all of the SMPL buffers)
    return key.startswith(("pose_branch.", "renderer.")) and key not in own


def official_state(state: Mapping[str, Tensor], own: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """``state`` with the official entries we never read dropped, and the SMPL buffers that the
    official renderer keeps once per training batch row (``shaped_smpl`` ``[B, V, 3]``,
    ``align_points`` ``[B, 1, 3]``, equal rows) reduced to row 0, as the batch-1 inversion uses."""
    out = {k: v for k, v in state.items() if not _unused(k, own)}
    for k in ("renderer.shaped_smpl", "renderer.align_points"):
        if k in out and k in own and out[k].ndim == 3 and out[k].shape[0] > 1:
            out[k] = out[k][:1]
    return out


def check_smpl_values(state: Mapping[str, Tensor], path: str) -> None:
    """The SMPL buffers' values: a kinematic tree (parent before child, root −1), faces that index
    vertices, a face mask that keeps faces; one-line errors naming the tensor."""
    m = "renderer.aligned_SMPL."
    parents, faces, mask = state[m + "model.parents"], state[m + "faces"], state["renderer.face_mask"]
    v = state[m + "model.v_template"].shape[0]
    idx = torch.arange(parents.shape[0])
    if (
        parents.is_floating_point()
        or int(parents[0]) != -1
        or bool(((parents[1:] < 0) | (parents[1:] >= idx[1:])).any())
    ):
        raise CheckpointError.at(
            path, f"{m}model.parents is not a kinematic tree (root −1, each parent before its child)"
        )
    if faces.is_floating_point() or bool(((faces < 0) | (faces >= v)).any()):
        raise CheckpointError.at(path, f"{m}faces holds indices outside the {v} vertices")
    if mask.dtype != torch.bool or not bool(mask.any()):
        raise CheckpointError.at(path, "renderer.face_mask must be a boolean mask keeping at least one face")


def _require_plain_tensors(state: Mapping[str, Tensor], path: str) -> None:
    """Refuse expanded or overlapping tensors (a few MB that materialise as many GB) as soon as a
    file is read, before its shapes are compared or a config is inferred from them."""
    try:
        for k, v in state.items():
            require_own_storage(v, f"weight {k}")
    except ValueError as e:
        raise CheckpointError.at(path, str(e)) from None


def load_state_into(model: nn.Module, state: Mapping[str, Tensor], path: str) -> None:
    """Strictly load ``state`` (ignoring the official entries we do not read)."""
    own = model.state_dict()
    state = official_state(state, own)
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
    _require_plain_tensors(state, path)
    try:
        for k, v in state.items():
            require_finite(v, f"weight {k}")
    except ValueError as e:
        raise CheckpointError.at(path, str(e)) from None
    if "renderer.face_mask" in own:
        check_smpl_values(state, path)
    model.load_state_dict(
        {k: v if v.dtype in (torch.bool, torch.long) else v.float() for k, v in state.items()}, strict=True
    )


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

"""``PortraitGANConfig``: the generator's architecture, from defaults, JSON or an official file.

:func:`infer_config` reads the architecture from the tensor shapes of an official-key state dict;
:func:`config_from_init_kwargs` starts from an official ``G_ema`` record's ``rendering_kwargs``
(``training/triplane.py``, ``TriPlaneGenerator.__init__``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Mapping, Optional

from torch import Tensor

from .checkpoint import CheckpointError
from .pyramid_trigrid import TRIGRID_CHANNELS, TRIGRID_DEPTH
from .renderer import RenderConfig
from .superresolution import SR_CONV_CLAMP


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
    # the G_ema attribute neural_rendering_resolution stored in the pickle (0: the background side)
    rendering_resolution: int = 0
    # Official modules built when the file holds their weights (model_512.pkl does): the pose branch
    # (pose_branch.*) and the SMPL buffers of the deformation (renderer.*; 0 vertices = none).
    pose_branch: bool = False
    smpl_vertices: int = 0
    smpl_faces: int = 0
    smpl_joints: int = 24
    smpl_betas: int = 10
    thickness: float = 0.25  # init_kwargs thickness: the deformation's shell around the mesh
    explicitly_symmetry: bool = True  # the pose branch's mirror trick
    render: RenderConfig = field(default_factory=RenderConfig)

    @classmethod
    def from_dict(cls, d: Mapping, source: str = "config") -> "PortraitGANConfig":
        names = {f.name for f in fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(
                f"{source}: unknown generator option(s) {sorted(unknown)}; valid: {sorted(names)}"
            )
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
        return [2**i for i in range(3, int(math.log2(self.synthesis_resolution)) + 2)]

    @property
    def neural_rendering_resolution(self) -> int:
        """The official ``neural_rendering_resolution`` of ``synthesize``: the value the pickle
        stores (128 for model_512), else the background (= superresolution input) side."""
        return self.rendering_resolution or self.background_resolution

    @property
    def deformable(self) -> bool:
        """Whether the generator holds the SMPL buffers of the mesh-guided deformation."""
        return self.smpl_vertices > 0

    @property
    def image_resolution(self) -> int:
        """Side of the superresolved ``image`` (512 for model_512)."""
        return 4 * self.background_resolution


def tiny_config(**overrides) -> PortraitGANConfig:
    """A small configuration of the same architecture (levels 8…32, narrow background),
    for tests and the tiny pipeline."""
    base = dict(
        z_dim=64,
        w_dim=64,
        synthesis_resolution=16,
        background_resolution=32,
        background_channel_base=512,
        background_channel_max=32,
        superresolution_channels=(16, 8),
        render=RenderConfig(depth_resolution=12, depth_resolution_importance=12),
    )
    base.update(overrides)
    return PortraitGANConfig(**base)


def _max_block(state: Mapping[str, Tensor], prefix: str) -> int:
    """Largest r among ``{prefix}b{r}.*`` keys (2D blocks only, not ``b3d{r}``)."""
    sizes = [
        int(k[len(prefix) + 1 :].split(".")[0])
        for k in state
        if k.startswith(prefix + "b") and k[len(prefix) + 1 :].split(".")[0].isdigit()
    ]
    return max(sizes) if sizes else 0


def infer_config(
    state: Mapping[str, Tensor], path: str, base: Optional[PortraitGANConfig] = None
) -> PortraitGANConfig:
    """Architecture from tensor shapes of an official-key state dict (defaults from ``base``)."""
    cfg = base or PortraitGANConfig()
    try:
        w_dim, zw = state["backbone.mapping.fc0.weight"].shape
        c_dim = state["backbone.mapping.embed.weight"].shape[1] - cfg.pose_dim
        layers = len({k.split(".")[2] for k in state if k.startswith("backbone.mapping.fc")})
        synth = _max_block(state, "backbone.synthesis.")
    except KeyError as e:
        raise CheckpointError.at(
            path,
            f"missing generator weight {e}; expected a 3DPortraitGAN generator "
            "(official model_512.pkl or its state dict)",
        ) from None
    changes = dict(
        w_dim=int(w_dim),
        z_dim=int(zw - w_dim),
        c_dim=int(c_dim),
        mapping_layers=layers,
        synthesis_resolution=synth,
    )
    bcg = "bcg_synthesis.b4.const"
    changes["background"] = bcg in state
    if bcg in state:
        res = _max_block(state, "bcg_synthesis.")
        ch = {
            r: state[f"bcg_synthesis.b{r}.conv1.weight"].shape[0]
            for r in (2**i for i in range(2, res.bit_length()))
        }
        changes.update(
            background_resolution=res,
            background_channel_max=max(ch.values()),
            background_channel_base=max(c * r for r, c in ch.items()),
        )
    sr = "superresolution.block0.conv0.weight"
    changes["superresolution"] = sr in state
    if sr in state:
        changes["superresolution_channels"] = (
            int(state[sr].shape[0]),
            int(state["superresolution.block1.conv0.weight"].shape[0]),
        )
        # SR input side = background side (official: the bcg is built at the SR input resolution)
        changes["background_resolution"] = (
            int(state["superresolution.block0.conv0.noise_const"].shape[0]) // 2
        )
    changes["pose_branch"] = "pose_branch.net.0.weight" in state
    v_template = state.get(SMPL_PREFIX + "model.v_template")
    faces = state.get(SMPL_PREFIX + "faces")
    changes["smpl_vertices"] = (
        int(v_template.shape[0]) if v_template is not None and v_template.ndim == 2 else 0
    )
    if changes["smpl_vertices"]:
        j = state.get(SMPL_PREFIX + "model.J_regressor")
        k = state.get(SMPL_PREFIX + "model.shapedirs")
        if faces is None or faces.ndim != 2 or j is None or j.ndim != 2 or k is None or k.ndim != 3:
            missing = next(
                n
                for n, t in (("faces", faces), ("model.J_regressor", j), ("model.shapedirs", k))
                if t is None or t.ndim < 2
            )
            raise CheckpointError.at(
                path, f"{SMPL_PREFIX}{missing} is missing or malformed; the SMPL buffers are damaged"
            )
        changes.update(
            smpl_faces=int(faces.shape[0]), smpl_joints=int(j.shape[0]), smpl_betas=int(k.shape[-1])
        )
    return type(cfg)(**{**cfg.to_dict(), "render": cfg.render, **changes})


SMPL_PREFIX = "renderer.aligned_SMPL."


def config_from_init_kwargs(
    kwargs: Mapping, state: Mapping[str, Tensor], path: str, attrs: Optional[Mapping] = None
) -> PortraitGANConfig:
    """Architecture of an official ``G_ema`` record: its ``rendering_kwargs``, its stored attributes
    ``attrs`` (``neural_rendering_resolution``), then the tensor shapes."""
    attrs = attrs or {}
    rk = dict(kwargs.get("rendering_kwargs") or {})
    render = RenderConfig(
        # ray_start: every official stage after training overrides the training value (2.385) with 2.35
        ray_end=float(rk.get("ray_end", RenderConfig.ray_end)),
        box_warp=float(rk.get("box_warp", RenderConfig.box_warp)),
        depth_resolution=int(rk.get("depth_resolution", RenderConfig.depth_resolution)),
        depth_resolution_importance=int(
            rk.get("depth_resolution_importance", RenderConfig.depth_resolution_importance)
        ),
    )
    # official SuperresolutionHybrid8XDC: conv_clamp = 256 if sr_num_fp16_res > 0 else None
    sr_clamp = SR_CONV_CLAMP if int(kwargs.get("sr_num_fp16_res", 4)) > 0 else None
    nrr = attrs.get("neural_rendering_resolution")
    base = PortraitGANConfig(
        trigrid_depth=int(rk.get("triplane_depth", 3)),
        render=render,
        superresolution_conv_clamp=sr_clamp,
        # the resolution the training loop left in G_ema (read, not assumed: official synthesis uses it)
        rendering_resolution=nrr if isinstance(nrr, int) and not isinstance(nrr, bool) and nrr > 0 else 0,
        thickness=float(kwargs.get("thickness", 0.25)),
        explicitly_symmetry=bool(kwargs.get("explicitly_symmetry", True)),
    )
    return infer_config(state, path, base)

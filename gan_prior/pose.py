"""The body pose: the generator's pose branch and the discriminator's pose predictor.

``p`` ``[B, 6]`` is two axis-angle rotations, the SMPL neck (joint 12) and head (joint 15), relative
to the shoulders (spec §1.3). Both networks use the official mirror trick
(``explicitly_symmetry``): a camera on the left half (``atan2(c[11], c[3])`` in [−π/2, π/2]) is
mirrored before the network and components 1, 2, 4, 5 of the prediction are negated after it.

- :class:`PoseBranch` — the generator's ``pose_branch`` (official ``GPoseBranch`` and
  ``TriPlaneGenerator.get_pose_params``, ``training/smpl_triplane.py``): ``cat(z, c)`` → 6;
  used as ``PortraitGAN.pose_params(z, c)``.
- :class:`PosePredictor` — ``D_ema``'s pose path (official ``PoseShapeAwareDualDiscriminator.
  predict_pose`` and ``DPoseBranch``, ``training/dual_discriminator.py``): the discriminator
  blocks down to the 4² epilogue features, then an MLP on ``cat(features, c)``. The official
  inversion (``run_inversion_with_pose_optimization.py``) uses it for the starting pose p₀.

    predictor = PosePredictor.from_checkpoint("model_512.pkl")
    p0 = predictor(image, image_raw, image_mask, c)      # [B, 6]
    p0 = predictor.predict(image, mask, c)                # image_raw / image_mask made as the official script

The predictor runs in float32 everywhere (the official D runs its 4 highest resolutions in fp16 on
CUDA and in fp32 on the CPU; the fixture compares with the CPU path).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .checkpoint import CheckpointError, Record, Stub, flatten_module, read_checkpoint
from .checks import require_finite
from .layers import Conv2dLayer, FullyConnectedLayer, upfirdn2d

POSE_DIM = 6
MIRRORED_COMPONENTS = [1, 2, 4, 5]  # the y and z axis-angle components of neck and head
# Not in the official code: the range we call plausible for a predicted neck / head rotation (each
# axis-angle component, radians). A prediction outside it is clamped with a notice (a photo far
# from the training distribution); the official script uses the prediction as it is.
POSE_LIMIT = math.pi / 4


# ---------------------------------------------------------------------------- the mirror trick
def left_cameras(c: Tensor) -> Tensor:
    """``[B, 1]`` bool: cameras the official code mirrors (``atan2(c[11], c[3])`` in [−π/2, π/2])."""
    theta = torch.atan2(c[:, [11]], c[:, [3]])
    return (theta >= -math.pi / 2) & (theta <= math.pi / 2)


def flip_yaw(c: Tensor) -> Tensor:
    """The label of the left-right mirrored camera: cam2world entries (0,1), (0,2), (1,0), (2,0)
    and the x translation negated (official ``flip_yaw``)."""
    m = c[:, :16].reshape(-1, 4, 4).clone()
    m[:, 0, 1:4] = -m[:, 0, 1:4]
    m[:, 1:3, 0] = -m[:, 1:3, 0]
    return torch.cat([m.reshape(-1, 16), c[:, 16:]], 1)


def mirror_pose(p: Tensor, left: Tensor) -> Tensor:
    """``p`` with components 1, 2, 4, 5 negated where ``left`` ``[B, 1]``."""
    sign = torch.ones(POSE_DIM, dtype=p.dtype, device=p.device)
    sign[MIRRORED_COMPONENTS] = -1
    return torch.where(left, p * sign, p)


def clamp_pose(p: Tensor, limit: float = POSE_LIMIT, log=None, what: str = "predicted body pose") -> Tensor:
    """``p`` clamped to ``±limit`` per component; ``log`` (a callable) gets one notice line when it was
    outside. Non-finite values are an error (a damaged network), never a silent NaN."""
    require_finite(p.detach(), what, "the pose network's weights are damaged: use an intact model_512.pkl")
    outside = p.detach().abs() > limit
    if bool(outside.any()):
        if log is not None:
            deg = torch.rad2deg(p.detach().abs().max()).item()
            log(
                f"{what} is outside the range we take as the training range (±{math.degrees(limit):.0f}° per "
                f"axis-angle component; largest {deg:.0f}°): clamped"
            )
        p = p.clamp(-limit, limit)
    return p


def _mlp(sizes: list[int]) -> nn.Sequential:
    """Equalised-lr FC layers ``sizes[0] → … → sizes[-1]``, lrelu between, linear last (keys ``net.i``)."""
    layers = [
        FullyConnectedLayer(a, b, activation="lrelu" if i < len(sizes) - 2 else "linear")
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:]))
    ]
    return nn.Sequential(*layers)


class PoseBranch(nn.Module):
    """The generator's pose branch (official ``GPoseBranch``): ``cat(z, c)`` → 128 → 32 → 6."""

    def __init__(self, z_dim: int, c_dim: int = 25, hidden: tuple[int, ...] = (128, 32)):
        super().__init__()
        self.net = _mlp([z_dim + c_dim, *hidden, POSE_DIM])

    def forward(self, z: Tensor, c: Tensor, symmetric: bool = True) -> Tensor:
        """z ``[B, z_dim]``, c ``[B, 25]`` → p ``[B, 6]`` (official ``get_pose_params``)."""
        if not symmetric:  # the official code raises NotImplementedError here
            return self.net(torch.cat([z, c], 1))
        left = left_cameras(c)
        p = self.net(torch.cat([z, torch.where(left, flip_yaw(c), c)], 1))
        return mirror_pose(p, left)


# ---------------------------------------------------------------------------- the predictor
@dataclass
class PosePredictorConfig:
    """Architecture of ``D_ema``'s pose path, and how the official script makes its inputs."""

    img_resolution: int = 512
    img_channels: int = 3
    seg_channels: int = 1
    channels: dict = field(default_factory=dict)  # {res: channels} for res = img_resolution … 4
    conv_clamp: Optional[float] = 256.0  # D_kwargs.conv_clamp (256 as d_num_fp16_res = 4)
    mbstd_group_size: Optional[int] = 4
    mbstd_num_channels: int = 1
    c_dim: int = 25
    hidden: tuple = (2048, 512, 128, 32)
    explicitly_symmetry: bool = True
    # model_512.json ("pose prediction params", training_loop.py): how image_raw / image_mask are made
    neural_rendering_resolution: int = 128
    blur_sigma: float = 0.0
    filter_mode: str = "antialiased"

    def __post_init__(self):
        if not self.channels:  # the released D: channel_base 18432, channel_max 144
            self.channels = {
                2**i: min(18432 // 2**i, 144) for i in range(2, int(math.log2(self.img_resolution)) + 1)
            }
        self.channels = {int(k): int(v) for k, v in self.channels.items()}
        self.hidden = tuple(self.hidden)

    @property
    def block_resolutions(self) -> list[int]:
        return [2**i for i in range(int(math.log2(self.img_resolution)), 2, -1)]


class DiscriminatorBlock(nn.Module):
    """Official ``DiscriminatorBlock`` (resnet): fromrgb (first block), conv0, conv1 (↓2), skip (↓2)."""

    def __init__(self, in_channels: int, tmp: int, out: int, img_channels: int, conv_clamp):
        super().__init__()
        self.first = in_channels == 0
        if self.first:
            self.fromrgb = Conv2dLayer(img_channels, tmp, 1, activation="lrelu", conv_clamp=conv_clamp)
        self.conv0 = Conv2dLayer(tmp, tmp, 3, activation="lrelu", conv_clamp=conv_clamp)
        self.conv1 = Conv2dLayer(tmp, out, 3, activation="lrelu", down=2, conv_clamp=conv_clamp)
        self.skip = Conv2dLayer(tmp, out, 1, bias=False, down=2)

    def forward(self, x: Optional[Tensor], img: Tensor) -> Tensor:
        if self.first:
            x = self.fromrgb(img)
        y = self.skip(x, gain=math.sqrt(0.5))
        return y + self.conv1(self.conv0(x), gain=math.sqrt(0.5))


class _Epilogue(nn.Module):
    """The part of ``DiscriminatorEpilogue`` the pose path uses (``get_flatten_x``): mbstd + conv."""

    def __init__(self, channels: int, group_size: Optional[int], num_channels: int, conv_clamp):
        super().__init__()
        self.group_size, self.num_channels = group_size, num_channels
        self.conv = Conv2dLayer(
            channels + num_channels, channels, 3, activation="lrelu", conv_clamp=conv_clamp
        )

    def minibatch_std(self, x: Tensor) -> Tensor:
        """Official ``MinibatchStdLayer``: the batch is split in groups of ``min(group_size, N)``
        (so images of one batch see each other's statistics, as in the official code)."""
        n, c, h, w = x.shape
        g = min(self.group_size, n) if self.group_size is not None else n
        if n % g:
            raise ValueError(
                f"the pose predictor needs a batch that is a multiple of {g} (or 1…{g}); got {n}"
            )
        f = self.num_channels
        y = x.reshape(g, -1, f, c // f, h, w)
        y = (y - y.mean(0)).square().mean(0)
        y = (y + 1e-8).sqrt().mean(dim=[2, 3, 4]).reshape(-1, f, 1, 1)
        return torch.cat([x, y.repeat(g, 1, h, w)], 1)

    def forward(self, x: Tensor) -> Tensor:
        if self.num_channels > 0:
            x = self.minibatch_std(x)
        return self.conv(x).flatten(1)


def filtered_resizing(image: Tensor, size: int, filter_mode: str = "antialiased") -> Tensor:
    """Official ``filtered_resizing`` (``training/dual_discriminator.py``), modes ``antialiased`` and
    ``none`` (bilinear), and a float ``a`` ∈ (0, 1): the blend ``(1 − a)·aliased + a·antialiased``."""
    if filter_mode == "antialiased":
        return F.interpolate(image, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    if filter_mode == "none":
        return F.interpolate(image, size=(size, size), mode="bilinear", align_corners=False)
    if isinstance(filter_mode, float) and 0 < filter_mode < 1:
        a = F.interpolate(image, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        b = F.interpolate(image, size=(size, size), mode="bilinear", align_corners=False)
        return (1 - filter_mode) * b + filter_mode * a
    raise ValueError(
        f"pose prediction filter_mode {filter_mode!r} is not supported ('antialiased', 'none', or a float)"
    )


def gaussian_blur(image: Tensor, sigma: float) -> Tensor:
    """Official blur of ``run_D_pose_prediction``: the separable ``2^−(x/σ)²`` filter of half-width
    ⌊3σ⌋, normalised (``upfirdn2d.filter2d``); nothing when ``σ`` < 1/3."""
    half = math.floor(sigma * 3)
    if half <= 0:
        return image
    f = torch.arange(-half, half + 1, device=image.device, dtype=image.dtype).div(sigma).square().neg().exp2()
    f = f / f.sum()
    k = f.numel()
    return upfirdn2d(image, torch.outer(f, f), pad=(k // 2, (k - 1) // 2, k // 2, (k - 1) // 2))


class PosePredictor(nn.Module):
    """``D_ema``'s pose path. Keys are the official ones (``b512.fromrgb.weight``, …, ``b4.conv.*``,
    ``pose_branch.net.{0..4}.*``), so the official state dict loads as it is."""

    def __init__(self, cfg: Optional[PosePredictorConfig] = None):
        super().__init__()
        self.cfg = cfg = cfg or PosePredictorConfig()
        ch = cfg.channels
        in_channels = 2 * cfg.img_channels + cfg.seg_channels
        for res in cfg.block_resolutions:
            block = DiscriminatorBlock(
                ch[res] if res < cfg.img_resolution else 0, ch[res], ch[res // 2], in_channels, cfg.conv_clamp
            )
            setattr(self, f"b{res}", block)
        self.b4 = _Epilogue(ch[4], cfg.mbstd_group_size, cfg.mbstd_num_channels, cfg.conv_clamp)
        self.pose_branch = nn.Module()
        self.pose_branch.net = _mlp([ch[4] * 16 + cfg.c_dim, *cfg.hidden, POSE_DIM])

    def features(self, image: Tensor, image_raw: Tensor, image_mask: Tensor) -> Tensor:
        """The flattened 4² epilogue features ``[B, C·16]`` of the 7-channel input."""
        size = image.shape[-1]
        raw = filtered_resizing(image_raw, size)
        seg = 2 * filtered_resizing(image_mask, size) - 1  # official: normalise to [−1, 1]
        x, img = None, torch.cat([image, raw, seg], 1)
        for res in self.cfg.block_resolutions:
            x = getattr(self, f"b{res}")(x, img)
        return self.b4(x)

    def forward(self, image: Tensor, image_raw: Tensor, image_mask: Tensor, c: Tensor) -> Tensor:
        """``image`` ``[B, 3, S, S]`` (S = 512), ``image_raw`` ``[B, 3, R, R]``, ``image_mask``
        ``[B, 1, R, R]`` (in [0, 1]), ``c`` ``[B, 25]`` → p ``[B, 6]`` (official ``predict_pose``)."""
        s = self.cfg.img_resolution
        if image.shape[-2:] != (s, s) or image.shape[1] != self.cfg.img_channels:
            raise ValueError(
                f"the pose predictor takes image [B, {self.cfg.img_channels}, {s}, {s}], got {tuple(image.shape)}"
            )
        if not self.cfg.explicitly_symmetry:  # the official predict_pose raises NotImplementedError
            raise ValueError(
                "this discriminator was trained without explicitly_symmetry; its pose path is not defined"
            )
        left = left_cameras(c)[:, :, None, None]
        flip = lambda t: torch.where(left, t.flip(3), t)  # noqa: E731  (if left, flip the images)
        feats = self.features(flip(image), flip(image_raw), flip(image_mask))
        p = self.pose_branch.net(torch.cat([feats, c], 1))
        return mirror_pose(p, left[:, :, 0, 0])

    def prepare(self, image: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """``(image_raw, image_mask)`` at the neural rendering resolution from a photo ``[B, 3, S, S]``
        and its person mask ``[B, 1, H, W]``, as ``run_inversion_with_pose_optimization.py``'s
        ``get_pose_params`` makes them (filtered resizing, then the blur of ``blur_sigma``)."""
        r, mode = self.cfg.neural_rendering_resolution, self.cfg.filter_mode
        raw = gaussian_blur(filtered_resizing(image, r, mode), self.cfg.blur_sigma)
        return raw, filtered_resizing(mask, r, mode)

    @torch.no_grad()
    def predict(self, image: Tensor, mask: Tensor, c: Tensor) -> Tensor:
        """p₀ ``[B, 6]`` for a photo in [−1, 1] ``[B, 3, S, S]``, its mask in [0, 1] and camera ``c``."""
        raw, seg = self.prepare(image, mask)
        return self(image, raw, seg, c)

    # ------------------------------------------------------------------------ files
    @classmethod
    def from_checkpoint(cls, path: str, map_location="cpu") -> "PosePredictor":
        """From the official ``model_512.pkl`` (its ``D_ema``; the ``neural_rendering_resolution`` of
        ``G_ema``, or of ``model_512.json`` beside it when present)."""
        return cls.from_snapshot(read_checkpoint(path), path).to(map_location)

    @classmethod
    def from_snapshot(cls, obj: Any, path: str, pose_kwargs_path: Optional[str] = None) -> "PosePredictor":
        """From an already read official snapshot ``{'G_ema', 'D_ema', …}``."""
        if not isinstance(obj, dict) or "D_ema" not in obj:
            raise CheckpointError.at(path, "no 'D_ema' entry: this checkpoint holds no pose predictor")
        d = obj["D_ema"]
        if not isinstance(d, (Record, Stub)):
            raise CheckpointError.at(path, "'D_ema' is not a network record")
        state = {
            k: v for k, v in flatten_module(d).items() if not k.startswith(("mapping.", "b4.fc", "b4.out"))
        }
        cfg = _config_from_record(d, state, path)
        g = obj.get("G_ema")
        nrr = getattr(g, "state", {}).get("neural_rendering_resolution") if g is not None else None
        if isinstance(nrr, int) and nrr > 0:
            cfg.neural_rendering_resolution = nrr
        kwargs_path = pose_kwargs_path or os.path.splitext(path)[0] + ".json"
        if os.path.isfile(kwargs_path):
            _apply_pose_kwargs(cfg, kwargs_path)
        model = cls(cfg)
        load_checked(model, state, path, "D_ema.")
        return model.eval().requires_grad_(False)


def _config_from_record(d, state: Mapping[str, Tensor], path: str) -> PosePredictorConfig:
    st = getattr(d, "state", {}) or {}
    res = st.get("img_resolution")
    blocks = sorted(
        {
            int(k.split(".")[0][1:])
            for k in state
            if k.split(".")[0][1:].isdigit() and k.split(".")[0] != "b4"
        },
        reverse=True,
    )
    if not isinstance(res, int) or not blocks or blocks[0] != res:
        raise CheckpointError.at(path, "D_ema: no discriminator blocks b<res>; expected the official D_ema")
    try:
        channels = {r: int(state[f"b{r}.conv0.weight"].shape[0]) for r in blocks}
        channels[4] = int(state["b4.conv.weight"].shape[0])
        img_channels = int(state[f"b{res}.fromrgb.weight"].shape[1])
    except KeyError as e:
        raise CheckpointError.at(
            path, f"D_ema: missing tensor {e.args[0]}; the pose path is damaged"
        ) from None
    seg = int(st.get("_init_kwargs", {}).get("seg_channels", 1)) if isinstance(d, Record) else 1
    layers = sorted(
        int(k.split(".")[2]) for k in state if k.startswith("pose_branch.net.") and k.endswith(".weight")
    )
    hidden = tuple(int(state[f"pose_branch.net.{i}.weight"].shape[0]) for i in layers[:-1])
    conv0 = _child(d, f"b{res}", "conv0")
    mbstd = _child(d, "b4", "mbstd")
    clamp = conv0.get("conv_clamp", 256.0) if conv0 is not None else 256.0
    return PosePredictorConfig(
        img_resolution=res,
        img_channels=(img_channels - seg) // 2,
        seg_channels=seg,
        channels=channels,
        conv_clamp=None if clamp is None else float(clamp),
        mbstd_group_size=mbstd.get("group_size", 4) if mbstd is not None else None,
        mbstd_num_channels=int(mbstd.get("num_channels", 1)) if mbstd is not None else 0,
        explicitly_symmetry=bool(st.get("explicitly_symmetry", True)),
        hidden=hidden or PosePredictorConfig.hidden,
    )


def _child(node, *names) -> Optional[dict]:
    for name in names:
        node = (getattr(node, "state", {}) or {}).get("_modules", {}).get(name)
        if node is None:
            return None
    return getattr(node, "state", None)


def _apply_pose_kwargs(cfg: PosePredictorConfig, path: str) -> None:
    """``model_512.json`` (official ``pose_predict_kwargs``): blur, resolution and filter mode."""
    try:
        with open(path, encoding="utf-8") as f:
            kw = json.load(f)
        cfg.neural_rendering_resolution = int(
            kw.get("neural_rendering_resolution", cfg.neural_rendering_resolution)
        )
        cfg.blur_sigma = float(kw.get("blur_sigma", cfg.blur_sigma))
        cfg.filter_mode = kw.get("filter_mode", cfg.filter_mode)
    except (ValueError, TypeError, AttributeError) as e:
        raise CheckpointError.at(
            path, f"not the official pose prediction params JSON ({type(e).__name__})"
        ) from None
    if (
        not 0 < cfg.neural_rendering_resolution <= 4096
        or not math.isfinite(cfg.blur_sigma)
        or cfg.blur_sigma < 0
    ):
        raise CheckpointError.at(path, "neural_rendering_resolution / blur_sigma out of range")


def load_checked(model: nn.Module, state: Mapping[str, Tensor], path: str, prefix: str = "") -> None:
    """Strictly load ``state`` into ``model``; a missing, mis-shaped or non-finite tensor is a
    one-line :class:`CheckpointError` naming it (``prefix`` + key)."""
    own = model.state_dict()
    for k, v in own.items():
        t = state.get(k)
        if t is None:
            raise CheckpointError.at(path, f"{prefix}{k} is missing; the pose network is damaged")
        if tuple(t.shape) != tuple(v.shape):
            raise CheckpointError.at(
                path,
                f"{prefix}{k} has shape {tuple(t.shape)}, expected {tuple(v.shape)}; the pose network is damaged",
            )
        try:
            require_finite(t, f"{prefix}{k}")
        except ValueError as e:
            raise CheckpointError.at(path, str(e)) from None
    model.load_state_dict({k: state[k].float() for k in own}, strict=True)

"""StyleGAN2 building blocks in pure PyTorch (no custom CUDA ops).

Parameter and buffer names follow the official 3DPortraitGAN code, so an official state dict
loads without renaming. Numerics follow the official *reference* (non-CUDA) code paths:
equalised learning rate, weight modulation/demodulation, FIR resampling with the [1, 3, 3, 1]
filter, and leaky-ReLU with gain sqrt(2).

Tensor layout: images are ``[N, C, H, W]``; ``w`` latents are ``[N, w_dim]``.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

LRELU_SLOPE = 0.2
LRELU_GAIN = math.sqrt(2.0)  # StyleGAN2's default gain for lrelu
RESAMPLE_KERNEL = (1.0, 3.0, 3.0, 1.0)  # StyleGAN2's low-pass filter taps


def make_resample_filter(taps=RESAMPLE_KERNEL) -> Tensor:
    """The normalised 2-D FIR filter ``outer(a, a) / sum`` as a ``[K, K]`` float32 tensor."""
    a = torch.as_tensor(taps, dtype=torch.float32)
    f = torch.outer(a, a)
    return f / f.sum()


def normalize_2nd_moment(x: Tensor, dim: int = 1, eps: float = 1e-8) -> Tensor:
    return x * (x.square().mean(dim=dim, keepdim=True) + eps).rsqrt()


def lrelu_bias(
    x: Tensor, bias: Optional[Tensor], gain: float = LRELU_GAIN, clamp: Optional[float] = None
) -> Tensor:
    """``lrelu(x + bias) * gain``, then clamped to ``±clamp`` if given (official ``bias_act``),
    with the bias broadcast along dim 1."""
    if bias is not None:
        x = x + bias.reshape([1, -1] + [1] * (x.ndim - 2))
    x = F.leaky_relu(x, LRELU_SLOPE) * gain
    return x if clamp is None else x.clamp(-clamp, clamp)


def upfirdn2d(
    x: Tensor,
    f: Tensor,
    up: int = 1,
    pad: tuple[int, int, int, int] = (0, 0, 0, 0),
    gain: float = 1.0,
    down: int = 1,
) -> Tensor:
    """Upsample by zero insertion, pad ``(x0, x1, y0, y1)``, convolve with the FIR ``f``, then keep
    every ``down``-th pixel (official ``upfirdn2d``, reference path).

    ``x``: ``[N, C, H, W]``; ``f``: ``[K, K]`` (symmetric, so convolution = correlation).
    """
    n, c, h, w = x.shape
    if up > 1:
        x = x.reshape(n, c, h, 1, w, 1)
        x = F.pad(x, [0, up - 1, 0, 0, 0, up - 1])
        x = x.reshape(n, c, h * up, w * up)
    px0, px1, py0, py1 = pad
    x = F.pad(x, [max(px0, 0), max(px1, 0), max(py0, 0), max(py1, 0)])
    x = x[:, :, max(-py0, 0) : x.shape[2] - max(-py1, 0), max(-px0, 0) : x.shape[3] - max(-px1, 0)]
    weight = (f * gain).flip([0, 1]).to(x.dtype)[None, None].repeat(c, 1, 1, 1)
    x = F.conv2d(x, weight, groups=c)
    return x[:, :, ::down, ::down] if down > 1 else x


def upsample2d(x: Tensor, f: Tensor, up: int = 2) -> Tensor:
    """FIR upsampling by ``up`` (the skip-image path of a synthesis block)."""
    k = f.shape[-1]
    p0, p1 = (k + up - 1) // 2, (k - up) // 2
    return upfirdn2d(x, f, up=up, pad=(p0, p1, p0, p1), gain=up * up)


def modulated_conv2d(
    x: Tensor,
    weight: Tensor,
    styles: Tensor,
    demodulate: bool = True,
    up: int = 1,
    resample_filter: Optional[Tensor] = None,
) -> Tensor:
    """Style-modulated convolution, "same" padding, optional ×2 FIR upsampling.

    x: ``[N, I, H, W]``, weight: ``[O, I, k, k]``, styles: ``[N, I]`` → ``[N, O, H·up, W·up]``.
    Computed as scale-activations → shared conv → scale-outputs (the official non-fused path,
    equal to the fused grouped conv up to float rounding, and faster for batches).
    """
    n = x.shape[0]
    out_ch, _, kh, kw = weight.shape
    x = x * styles.reshape(n, -1, 1, 1)
    if up == 1:
        x = F.conv2d(x, weight, padding=kh // 2)
    else:
        # Transposed conv (stride 2, no padding) then the FIR filter; the paddings below are the
        # official conv2d_resample ones for up=2, k=3, filter 4: (k//2 + 2) - (k-1) on each side.
        fk = resample_filter.shape[-1]
        p0 = kw // 2 + (fk + up - 1) // 2 - (kw - 1)
        p1 = kw // 2 + (fk - up) // 2 - (kw - up)
        x = F.conv_transpose2d(x, weight.transpose(0, 1), stride=up)
        x = upfirdn2d(x, resample_filter, pad=(p0, p1, p0, p1), gain=up * up)
    if demodulate:
        w = weight.unsqueeze(0) * styles.reshape(n, 1, -1, 1, 1)
        dcoefs = (w.square().sum(dim=[2, 3, 4]) + 1e-8).rsqrt()
        x = x * dcoefs.reshape(n, -1, 1, 1)
    return x


class FullyConnectedLayer(nn.Module):
    """Equalised-lr linear layer: ``weight`` stored as ``randn / lr_mul``, scaled at run time."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        activation: str = "linear",
        lr_multiplier: float = 1.0,
        bias_init: float = 0.0,
    ):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.activation = activation
        self.weight = nn.Parameter(torch.randn(out_features, in_features) / lr_multiplier)
        self.bias = nn.Parameter(torch.full([out_features], float(bias_init)))
        self.weight_gain = lr_multiplier / math.sqrt(in_features)
        self.bias_gain = lr_multiplier

    def forward(self, x: Tensor) -> Tensor:
        w = self.weight * self.weight_gain
        b = self.bias * self.bias_gain
        if self.activation == "linear":
            return torch.addmm(b.unsqueeze(0), x, w.t()) if x.ndim == 2 else x @ w.t() + b
        if self.activation == "lrelu":
            return lrelu_bias(x @ w.t(), b)
        raise ValueError(f"unknown activation {self.activation!r}")


class Conv2dLayer(nn.Module):
    """Equalised-lr convolution + bias + activation, optional ×2 FIR downsampling (official
    ``Conv2dLayer`` with ``conv2d_resample``, reference path), as the discriminator uses it.

    ``forward(x, gain)``: ``act(conv(x) + bias)·act_gain·gain``, clamped to ``±conv_clamp·gain``.
    ``down=2``: a 3×3 conv is padded by 2, applied, then FIR-filtered and subsampled; a 1×1 conv
    is applied after the FIR downsampling (both as ``conv2d_resample``).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        bias: bool = True,
        activation: str = "linear",
        down: int = 1,
        conv_clamp: Optional[float] = None,
    ):
        super().__init__()
        if activation not in ("linear", "lrelu"):
            raise ValueError(f"unknown activation {activation!r}")
        self.activation, self.down, self.conv_clamp = activation, down, conv_clamp
        self.padding = kernel_size // 2
        self.register_buffer("resample_filter", make_resample_filter())
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        self.weight_gain = 1 / math.sqrt(in_channels * kernel_size**2)
        self.act_gain = LRELU_GAIN if activation == "lrelu" else 1.0

    def forward(self, x: Tensor, gain: float = 1.0) -> Tensor:
        w = self.weight * self.weight_gain
        if self.down == 1:
            x = F.conv2d(x, w, padding=self.padding)
        else:
            f = self.resample_filter
            p0 = self.padding + (f.shape[-1] - self.down + 1) // 2
            p1 = self.padding + (f.shape[-1] - self.down) // 2
            if w.shape[-1] == 1:  # conv2d_resample's fast path: downsample, then the 1×1 conv
                x = F.conv2d(upfirdn2d(x, f, pad=(p0, p1, p0, p1), down=self.down), w)
            else:
                x = upfirdn2d(F.conv2d(F.pad(x, [p0, p1, p0, p1]), w), f, down=self.down)
        clamp = self.conv_clamp * gain if self.conv_clamp is not None else None
        if self.activation == "lrelu":
            return lrelu_bias(x, self.bias, gain=self.act_gain * gain, clamp=clamp)
        if self.bias is not None:
            x = x + self.bias.reshape(1, -1, 1, 1)
        x = x * (self.act_gain * gain)
        return x if clamp is None else x.clamp(-clamp, clamp)


def aware3d(x: Tensor) -> Tensor:
    """Mimic3D's 3D-aware cross-plane pooling: ``[B·3, C, H, W]`` → ``[B·3, 3C, H, W]`` (H = W).

    The three planes P0, P1, P2 of each sample are widened with axis-pooled features of the
    other two (``ᵀ`` swaps the spatial axes; mean_W / mean_H keep dims and are broadcast back):
      P0 → [P0,            mean_W(P1ᵀ),   mean_H(P2ᵀ)]
      P1 → [mean_H(P0ᵀ),   P1,            mean_W(P2ᵀ)]
      P2 → [mean_W(P0ᵀ),   mean_H(P1ᵀ),   P2]
    """
    bp, c, h, w = x.shape
    p0, p1, p2 = x.view(-1, 3, c, h, w).unbind(1)
    t0, t1, t2 = (p.transpose(-1, -2) for p in (p0, p1, p2))

    def mean_w(p):
        return p.mean(dim=-1, keepdim=True).expand(-1, -1, h, w)

    def mean_h(p):
        return p.mean(dim=-2, keepdim=True).expand(-1, -1, h, w)

    out0 = torch.cat([p0, mean_w(t1), mean_h(t2)], 1)
    out1 = torch.cat([mean_h(t0), p1, mean_w(t2)], 1)
    out2 = torch.cat([mean_w(t0), mean_h(t1), p2], 1)
    return torch.stack([out0, out1, out2], 1).view(bp, 3 * c, h, w)


class SynthesisLayer(nn.Module):
    """Modulated 3×3 conv + noise + bias + lrelu.

    ``per_plane=True`` is the official ``roll_out='b'`` (3D-aware) variant: the input is
    ``[B·3, C, H, W]``, one style vector per plane (the affine emits ``9·C`` = 3 planes × 3C),
    and ``aware3d`` widens each plane to 3C channels before the conv. ``conv_clamp`` clamps the
    activated output to ``±conv_clamp`` (the official superresolution uses 256).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        w_dim: int,
        resolution: int,
        up: int = 1,
        per_plane: bool = False,
        conv_clamp: Optional[float] = None,
    ):
        super().__init__()
        self.conv_clamp = conv_clamp
        self.in_channels, self.out_channels = in_channels, out_channels
        self.resolution, self.up, self.per_plane = resolution, up, per_plane
        widen = 3 if per_plane else 1
        self.register_buffer("resample_filter", make_resample_filter())
        self.affine = FullyConnectedLayer(w_dim, in_channels * widen * widen, bias_init=1)
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels * widen, 3, 3))
        self.register_buffer("noise_const", torch.randn(resolution, resolution))
        self.noise_strength = nn.Parameter(torch.zeros([]))
        self.bias = nn.Parameter(torch.zeros(out_channels))

    def forward(self, x: Tensor, w: Tensor, noise_mode: str = "const") -> Tensor:
        styles = self.affine(w)
        if self.per_plane:
            styles = styles.reshape(styles.shape[0] * 3, -1)
            x = aware3d(x)
        x = modulated_conv2d(
            x, self.weight, styles, demodulate=True, up=self.up, resample_filter=self.resample_filter
        )
        if noise_mode == "const":
            x = x + self.noise_const * self.noise_strength
        elif noise_mode == "random":
            x = (
                x
                + torch.randn(x.shape[0], 1, self.resolution, self.resolution, device=x.device, dtype=x.dtype)
                * self.noise_strength
            )
        elif noise_mode != "none":
            raise ValueError(f"noise_mode must be 'const', 'random' or 'none', got {noise_mode!r}")
        return lrelu_bias(x, self.bias, clamp=self.conv_clamp)


class ToRGBLayer(nn.Module):
    """Modulated 1×1 conv without demodulation (+ bias): features → ``out_channels``."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        w_dim: int,
        per_plane: bool = False,
        conv_clamp: Optional[float] = None,
    ):
        super().__init__()
        self.per_plane, self.conv_clamp = per_plane, conv_clamp
        widen = 3 if per_plane else 1
        self.affine = FullyConnectedLayer(w_dim, in_channels * widen * widen, bias_init=1)
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels * widen, 1, 1))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.weight_gain = 1.0 / math.sqrt(in_channels)  # official: in_channels, not 3·in_channels

    def styles(self, w: Tensor) -> Tensor:
        """Per-sample input scales ``[N, in_channels]`` (``[N·3, 3·in]`` when per-plane)."""
        s = self.affine(w) * self.weight_gain
        return s.reshape(s.shape[0] * 3, -1) if self.per_plane else s

    def forward(self, x: Tensor, w: Tensor) -> Tensor:
        if self.per_plane:
            x = aware3d(x)
        x = modulated_conv2d(x, self.weight, self.styles(w), demodulate=False)
        x = x + self.bias.reshape(1, -1, 1, 1)
        return x if self.conv_clamp is None else x.clamp(-self.conv_clamp, self.conv_clamp)

    def affine_map(self, w: Tensor) -> tuple[Tensor, Tensor]:
        """The per-sample affine map this layer applies to a feature vector: ``(A [N, O, I], b [O])``.

        ``forward(f)`` at any pixel equals ``A @ f + b``; the threestudio material uses this.
        """
        a = self.weight[:, :, 0, 0].unsqueeze(0) * self.styles(w).unsqueeze(1)
        return a, self.bias


class SynthesisBlock(nn.Module):
    """One resolution of a skip-architecture StyleGAN2 synthesis network.

    ``in_channels == 0`` makes it the first block (a learned const ``[1, C, 4, 4]``, one conv).
    Otherwise: conv0 (×2 up), conv1, torgb. Returns ``(x, img)`` where ``img`` is the skip
    image (the upsampled previous ``img`` plus this block's torgb), or, with ``img=None``, just
    this block's torgb output.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        w_dim: int,
        resolution: int,
        img_channels: int,
        per_plane: bool = False,
        conv_clamp: Optional[float] = None,
    ):
        super().__init__()
        self.in_channels, self.resolution = in_channels, resolution
        self.register_buffer("resample_filter", make_resample_filter())
        if in_channels == 0:
            self.const = nn.Parameter(torch.randn(1, out_channels, resolution, resolution))
        else:
            self.conv0 = SynthesisLayer(
                in_channels, out_channels, w_dim, resolution, up=2, per_plane=per_plane, conv_clamp=conv_clamp
            )
        self.conv1 = SynthesisLayer(
            out_channels, out_channels, w_dim, resolution, per_plane=per_plane, conv_clamp=conv_clamp
        )
        self.torgb = ToRGBLayer(out_channels, img_channels, w_dim, per_plane=per_plane, conv_clamp=conv_clamp)
        self.num_conv = 1 if in_channels == 0 else 2

    def forward(
        self, x: Optional[Tensor], img: Optional[Tensor], ws: Tensor, noise_mode: str = "const"
    ) -> tuple[Tensor, Tensor]:
        """``ws``: ``[N, num_conv + 1, w_dim]``, one per conv then one for torgb."""
        w_iter = iter(ws.unbind(1))
        if self.in_channels == 0:
            x = self.const.expand(ws.shape[0], -1, -1, -1)
        else:
            x = self.conv0(x, next(w_iter), noise_mode)
        x = self.conv1(x, next(w_iter), noise_mode)
        y = self.torgb(x, next(w_iter))
        if img is None:
            return x, y
        return x, upsample2d(img, self.resample_filter) + y

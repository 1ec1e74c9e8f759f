"""Synthesis networks: the hierarchical 2D + 3D-aware branch that produces the pyramid tri-grid,
and the plain StyleGAN2 background generator.

Pyramid synthesis (official ``Hierarchy3DAwareSynthesisNetwork``): a constant-width
(``3·D·C`` = 108 channels) skip-StyleGAN2 runs at 4 … ``resolution``; its accumulated skip image
``F2D(r)`` ``[B, 108, r, r]`` is viewed as 3 planes × 36 channels. At each r a 3D-aware block
(``b3d{r}``) takes ``F2D(r) + F3D(r)`` (``F3D`` from the previous level, already at r), runs a
per-plane ×2 up-conv, conv and ToRGB with the *last* w of the 2D block's slice, and emits
``F3D(2r)`` ``[B·3, 36, 2r, 2r]``: the tri-grid level of size 2r, and the next level's input.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .layers import SynthesisBlock


def block_resolutions(resolution: int) -> list[int]:
    if resolution < 4 or resolution & (resolution - 1):
        raise ValueError(f"synthesis resolution must be a power of two >= 4, got {resolution}")
    return [2**i for i in range(2, int(math.log2(resolution)) + 1)]


def split_ws(ws: Tensor, blocks: list[SynthesisBlock]) -> list[Tensor]:
    """StyleGAN2's overlapping w slices: block i gets ``num_conv + 1`` ws, the index advancing
    by ``num_conv`` (so each block's torgb shares its w with the next block's first conv)."""
    out, idx = [], 0
    for block in blocks:
        out.append(ws.narrow(1, idx, block.num_conv + 1))
        idx += block.num_conv
    return out


class Aware3DBlock(nn.Module):
    """Wraps a per-plane ``SynthesisBlock`` (36 → 36 channels, resolution 2r, ×2 up)."""

    def __init__(self, plane_channels: int, resolution: int, w_dim: int):
        super().__init__()
        self.block = SynthesisBlock(
            plane_channels, plane_channels, w_dim, 2 * resolution, img_channels=plane_channels, per_plane=True
        )

    def forward(self, f3d_prev, f2d: Tensor, w: Tensor, noise_mode: str = "const") -> Tensor:
        """f2d ``[B, 3·C, r, r]``, f3d_prev ``[B·3, C, r, r]`` or None, w ``[B, w_dim]`` →
        ``[B·3, C, 2r, 2r]``."""
        b, c3, r, _ = f2d.shape
        x = f2d.reshape(b * 3, c3 // 3, r, r)
        if f3d_prev is not None:
            x = x + f3d_prev
        _, img = self.block(x, None, w.unsqueeze(1).expand(-1, 3, -1), noise_mode)
        return img


class PyramidSynthesis(nn.Module):
    """ws ``[B, num_ws, w_dim]`` → ``{2r: [B, 3, 3·D·C/3, 2r, 2r]}`` for r = 4 … resolution."""

    def __init__(self, w_dim: int, resolution: int, channels: int):
        super().__init__()
        self.w_dim, self.resolution, self.channels = w_dim, resolution, channels
        self.block_resolutions = block_resolutions(resolution)
        for r in self.block_resolutions:
            setattr(
                self,
                f"b{r}",
                SynthesisBlock(0 if r == 4 else channels, channels, w_dim, r, img_channels=channels),
            )
            setattr(self, f"b3d{r}", Aware3DBlock(channels // 3, r, w_dim))
        self.num_ws = sum(getattr(self, f"b{r}").num_conv for r in self.block_resolutions) + 1

    @property
    def level_sizes(self) -> list[int]:
        return [2 * r for r in self.block_resolutions]

    def forward(self, ws: Tensor, noise_mode: str = "const") -> dict[int, Tensor]:
        blocks = [getattr(self, f"b{r}") for r in self.block_resolutions]
        x = img = f3d = None
        levels = {}
        for r, block, block_ws in zip(self.block_resolutions, blocks, split_ws(ws.float(), blocks)):
            x, img = block(x, img, block_ws, noise_mode)
            f3d = getattr(self, f"b3d{r}")(f3d, img, block_ws[:, -1], noise_mode)
            levels[2 * r] = f3d.reshape(ws.shape[0], 3, *f3d.shape[1:])
        return levels


class BackgroundSynthesis(nn.Module):
    """Plain skip StyleGAN2 (official ``SynthesisNetwork``): ws → ``[B, img_channels, R, R]``.

    Channels per resolution are ``min(channel_base // r, channel_max)``.
    """

    def __init__(self, w_dim: int, resolution: int, img_channels: int, channel_base: int, channel_max: int):
        super().__init__()
        self.block_resolutions = block_resolutions(resolution)
        ch = {r: min(channel_base // r, channel_max) for r in self.block_resolutions}
        for r in self.block_resolutions:
            setattr(
                self,
                f"b{r}",
                SynthesisBlock(ch[r // 2] if r > 4 else 0, ch[r], w_dim, r, img_channels=img_channels),
            )
        self.num_ws = sum(getattr(self, f"b{r}").num_conv for r in self.block_resolutions) + 1

    def forward(self, ws: Tensor, noise_mode: str = "const") -> Tensor:
        """ws with fewer than ``num_ws`` entries is padded by repeating its last w (official)."""
        ws = ws[:, : self.num_ws].float()
        if ws.shape[1] < self.num_ws:
            ws = torch.cat([ws, ws[:, -1:].expand(-1, self.num_ws - ws.shape[1], -1)], 1)
        blocks = [getattr(self, f"b{r}") for r in self.block_resolutions]
        x = img = None
        for block, block_ws in zip(blocks, split_ws(ws, blocks)):
            x, img = block(x, img, block_ws, noise_mode)
        return img

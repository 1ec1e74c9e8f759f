"""The superresolution network: the 128² neural render → the 512² ``image`` of the GAN.

A pure-PyTorch port of the official ``SuperresolutionHybrid8XDC``
(``3DPortraitGAN_pyramid/training/superresolution.py``, from EG3D): two skip-StyleGAN2 blocks,
``block0`` (32 → 256 channels, 128 → 256) and ``block1`` (256 → 128 channels, 256 → 512), each
adding its ToRGB to the upsampled RGB, every layer modulated by the generator's *last* w
(``ws[:, -1]`` repeated 3×). The released model was trained with ``sr_num_fp16_res = 4`` (train.py
default), so the official blocks clamp activations to ±256 (``conv_clamp``); we compute in float32
with the same clamp. The official ``superresolution_noise_mode`` is ``'none'``: no noise is added.

Used by the official inversion (``TriPlaneGenerator.synthesis`` in ``training/smpl_triplane.py``:
``image`` = SR(``image_raw``, feature image, ws)); the later stages render ``image_raw`` directly.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from .layers import SynthesisBlock

SR_CONV_CLAMP = 256.0  # official: conv_clamp = 256 if sr_num_fp16_res > 0 (4 in train.py)


class Superresolution(nn.Module):
    """rgb ``[B, 3, H, W]``, features ``[B, C, H, W]``, ws ``[B, num_ws, w_dim]`` →
    ``[B, 3, 4·input_resolution, 4·input_resolution]``.

    Inputs whose width is not ``input_resolution`` are first resized to it (bilinear,
    ``align_corners=False``, antialiased: the official ``sr_antialias = True``), as the official
    ``forward`` does. Parameter names are the official ones (``block0.*``, ``block1.*``).
    """

    def __init__(
        self,
        channels: int = 32,
        w_dim: int = 512,
        input_resolution: int = 128,
        block_channels: tuple[int, int] = (256, 128),
        conv_clamp: float = SR_CONV_CLAMP,
        antialias: bool = True,
    ):
        super().__init__()
        self.input_resolution, self.antialias = input_resolution, antialias
        c0, c1 = block_channels
        self.block0 = SynthesisBlock(
            channels, c0, w_dim, 2 * input_resolution, img_channels=3, conv_clamp=conv_clamp
        )
        self.block1 = SynthesisBlock(
            c0, c1, w_dim, 4 * input_resolution, img_channels=3, conv_clamp=conv_clamp
        )

    def resize(self, x: Tensor) -> Tensor:
        """``[B, C, H, W]`` → ``[B, C, input_resolution, input_resolution]`` (official resize)."""
        size = (self.input_resolution, self.input_resolution)
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=self.antialias)

    def forward(self, rgb: Tensor, features: Tensor, ws: Tensor) -> Tensor:
        if rgb.ndim != 4 or features.ndim != 4 or rgb.shape[1] != 3 or rgb.shape[-2:] != features.shape[-2:]:
            raise ValueError(
                f"superresolution needs rgb [B, 3, H, W] and features [B, C, H, W] of the same "
                f"size, got {tuple(rgb.shape)} and {tuple(features.shape)}"
            )
        ws = ws[:, -1:].float().expand(-1, 3, -1)
        if features.shape[-1] != self.input_resolution:  # the official test is on the width only
            features, rgb = self.resize(features.float()), self.resize(rgb.float())
        x, img = self.block0(features.float(), rgb.float(), ws, noise_mode="none")
        _, img = self.block1(x, img, ws, noise_mode="none")
        return img

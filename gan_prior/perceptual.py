"""A VGG16 perceptual distance (LPIPS-style) for GAN inversion.

Features are taken after the five ``relu{1_2,2_2,3_3,4_3,5_3}`` layers of torchvision's VGG16
``features`` stack, unit-normalised over channels; the distance is the sum over layers of the
spatial mean of the squared difference. The official projector uses NVIDIA's TorchScript
``vgg16.pt`` (the same network and taps); loading TorchScript would run code from a file, so we
read plain weights only: a torchvision VGG16 state dict (``features.N.weight`` keys, e.g. from
``torchvision.models.vgg16(weights=...).state_dict()`` saved with ``torch.save``). Values are on
a different scale than the official distance; only their gradients' direction matters here.

Images are ``[B, 3, H, W]`` in ``[-1, 1]``; they are area-downsampled to 256² (official) if larger.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# torchvision VGG16 "D" layout: channels per conv, "M" = max-pool
VGG16_LAYOUT = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)
TAP_AFTER_CONV = (2, 4, 7, 10, 13)  # relu1_2, relu2_2, relu3_3, relu4_3, relu5_3 (1-based conv index)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
COMPARE_SIZE = 256  # official: images compared at 256²


class VGG16Distance(nn.Module):
    def __init__(self):
        super().__init__()
        layers, c_in = [], 3
        for item in VGG16_LAYOUT:
            if item == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(c_in, item, 3, padding=1), nn.ReLU(inplace=False)]
                c_in = item
        self.features = nn.Sequential(*layers)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).reshape(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).reshape(1, 3, 1, 1))

    @classmethod
    def load(cls, path: Optional[str] = None, seed: int = 0) -> "VGG16Distance":
        """From a torchvision VGG16 state dict file; ``None`` = random weights (tests only)."""
        from .checkpoint import CheckpointError, read_checkpoint

        with torch.random.fork_rng():
            torch.manual_seed(seed)
            net = cls()
        if path is not None:
            state = read_checkpoint(path)
            feats = {k[len("features."):]: v for k, v in state.items() if k.startswith("features.")} \
                if isinstance(state, dict) else {}
            try:
                net.features.load_state_dict(feats, strict=True)
            except RuntimeError as e:
                raise CheckpointError(f"{path}: not a torchvision VGG16 state dict "
                                      f"({str(e).splitlines()[0]})") from None
        return net.eval().requires_grad_(False)

    def taps(self, images: Tensor) -> list[Tensor]:
        x = (images + 1) / 2
        if x.shape[-1] > COMPARE_SIZE:
            x = F.adaptive_avg_pool2d(x, COMPARE_SIZE)
        x = (x - self.mean) / self.std
        out, conv = [], 0
        for layer in self.features:
            x = layer(x)
            if isinstance(layer, nn.Conv2d):
                conv += 1
            elif isinstance(layer, nn.ReLU) and conv in TAP_AFTER_CONV:
                out.append(x / (x.square().sum(1, keepdim=True) + 1e-10).sqrt())
        return out

    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        """Distance per image ``[B]`` between image batches ``a`` and ``b``."""
        return sum((fa - fb).square().sum(1).mean((1, 2)) for fa, fb in zip(self.taps(a), self.taps(b)))

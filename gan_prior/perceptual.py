"""A VGG16 perceptual distance (LPIPS-style) for GAN inversion.

Features are taken after the five ``relu{1_2,2_2,3_3,4_3,5_3}`` layers of torchvision's VGG16
``features`` stack, unit-normalised over channels; the distance is the sum over layers of the
spatial mean of the (channel-weighted) squared difference — LPIPS-VGG. Weights load from:

- the official ``vgg16.pt`` (NVIDIA's StyleGAN2-ADA metrics network, a TorchScript archive): its
  tensors are read as data (:func:`gan_prior.checkpoint.read_torchscript_tensors`, never
  ``torch.jit.load``, which would run the archive's code) and matched to the VGG16 layers by shape
  in archive order, with the five LPIPS channel weights (``[1, C, 1, 1]``) when present;
- a torchvision VGG16 state dict (``features.N.weight`` keys, e.g.
  ``torch.save(torchvision.models.vgg16(weights="IMAGENET1K_V1").state_dict(), "vgg16.pth")``);
  channel weights are then 1 (plain VGG perceptual distance).

Inputs are normalised with the ImageNet mean/std on [0, 1] images; features are divided by their
channel norm + 1e−10 (LPIPS's ``normalize_tensor``). ``tests/test_perceptual.py`` compares this
forward with a TorchScript archive built like the official one (module names ``layers.conv1…13``,
``layers.fc1…3``, the five ``lpips0…4`` channel weights; ``forward(img, resize_images,
return_lpips)`` on [0, 255] images returning features whose squared difference sums to the
distance), and with torch-fidelity's LPIPS, whose own tests compare it with the released
``vgg16.pt``. The real file's code could not be read here (README, *Inversion*).

Images are ``[B, 3, H, W]`` in ``[-1, 1]``; they are area-downsampled to 256² (official) if larger.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .checkpoint import CheckpointError, is_torchscript_archive, read_checkpoint, read_torchscript_tensors

# torchvision VGG16 "D" layout: channels per conv, "M" = max-pool
VGG16_LAYOUT = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)
TAP_AFTER_CONV = (2, 4, 7, 10, 13)  # relu1_2, relu2_2, relu3_3, relu4_3, relu5_3 (1-based conv index)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
COMPARE_SIZE = 256  # official: images compared at 256²
TAP_CHANNELS = (64, 128, 256, 512, 512)


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
        for i, c in enumerate(TAP_CHANNELS):
            self.register_buffer(f"lin{i}", torch.ones(1, c, 1, 1))  # LPIPS channel weights
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).reshape(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).reshape(1, 3, 1, 1))

    @classmethod
    def load(cls, path: Optional[str] = None, seed: int = 0) -> "VGG16Distance":
        """From a torchvision VGG16 state dict file; ``None`` = random weights (tests only)."""
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            net = cls()
        if path is not None:
            feats, lin = _read_weights(path)
            try:
                net.features.load_state_dict(feats, strict=True)
            except RuntimeError as e:
                raise CheckpointError(
                    f"{path}: not a VGG16 (torchvision state dict or the official vgg16.pt) "
                    f"({str(e).splitlines()[0]})"
                ) from None
            for i, w in enumerate(lin or []):
                getattr(net, f"lin{i}").copy_(w.reshape(1, -1, 1, 1))
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
                out.append(x / (x.norm(dim=1, keepdim=True) + 1e-10))
        return out

    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        """Distance per image ``[B]`` between image batches ``a`` and ``b``."""
        return sum(
            ((fa - fb).square() * getattr(self, f"lin{i}")).sum(1).mean((1, 2))
            for i, (fa, fb) in enumerate(zip(self.taps(a), self.taps(b)))
        )


def _conv_shapes() -> list[tuple[int, int]]:
    shapes, c_in = [], 3
    for item in VGG16_LAYOUT:
        if item != "M":
            shapes.append((item, c_in))
            c_in = item
    return shapes


def _read_weights(path: str) -> tuple[dict[str, Tensor], Optional[list[Tensor]]]:
    """``(features state dict, LPIPS channel weights or None)`` from either supported file."""
    if is_torchscript_archive(path):
        return _match_script_tensors(read_torchscript_tensors(path), path)
    state = read_checkpoint(path)
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: not a VGG16 state dict")
    return {k[len("features.") :]: v for k, v in state.items() if k.startswith("features.")}, None


def _match_script_tensors(
    tensors: dict[str, Tensor], path: str
) -> tuple[dict[str, Tensor], Optional[list[Tensor]]]:
    """Map a TorchScript VGG16's tensors to torchvision's ``features`` keys by shape, in order."""
    items = list(tensors.values())
    feats, pos, index = {}, 0, 0
    for out_c, in_c in _conv_shapes():
        while index < len(VGG16_LAYOUT) and VGG16_LAYOUT[index] == "M":
            index += 1
        layer = 2 * index - sum(1 for x in VGG16_LAYOUT[:index] if x == "M")  # conv+relu pairs, one pool each
        w = next((i for i in range(pos, len(items)) if tuple(items[i].shape) == (out_c, in_c, 3, 3)), None)
        b = (
            None
            if w is None
            else next((i for i in range(w + 1, len(items)) if tuple(items[i].shape) == (out_c,)), None)
        )
        if w is None or b is None:
            raise CheckpointError(
                f"{path}: a TorchScript archive without the VGG16 conv layer {out_c}x{in_c}x3x3; "
                "give the official vgg16.pt or a torchvision VGG16 state dict"
            )
        feats[f"{layer}.weight"], feats[f"{layer}.bias"] = items[w], items[b]
        pos, index = b + 1, index + 1
    # the five LPIPS channel weights: named lpips0…lpips4 in the official archive (shape [C, 1, 1]
    # or [1, C, 1, 1]); else the tensors of C elements (C = 64, 128, 256, 512, 512) after the convs
    named = [tensors.get(f"lpips{i}") for i in range(len(TAP_CHANNELS))]
    if all(t is not None for t in named):
        lin = named
    else:
        used = {id(t) for t in feats.values()}
        lin = [
            t
            for t in items
            if id(t) not in used and t.ndim >= 1 and t.numel() == max(t.shape) in TAP_CHANNELS
        ]
    if [t.numel() for t in lin] != list(TAP_CHANNELS):
        return {k: v.float() for k, v in feats.items()}, None
    return {k: v.float() for k, v in feats.items()}, [t.float().reshape(1, -1, 1, 1) for t in lin]

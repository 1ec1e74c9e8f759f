"""Images and videos of renders, written atomically.

Renders are ``[B, 3, H, W]`` in the ToRGB range (≈[−1, 1]); they are saved as
``clamp(x·127.5 + 128, 0, 255)`` like the official scripts, and pixels come back as ``x / 127.5 − 1``
(:func:`from_uint8`). :func:`as_rgb` brings any image file's array to uint8 RGB.
"""

from __future__ import annotations

import math
from typing import Callable, Iterable, Iterator, Mapping, Optional, Sequence

import imageio.v2 as imageio
import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from .camera import CANONICAL_RADIUS, GAN_FOCAL, camera_label, lookat_pose
from .files import atomic_path


def as_rgb(image: np.ndarray) -> np.ndarray:
    """uint8 (or uint16, or 1-bit bool) gray ``[H, W]``/``[H, W, 1]``, gray + alpha ``[H, W, 2]``, RGB or
    RGBA (alpha dropped) → uint8 ``[H, W, 3]``."""
    image = np.asarray(image)
    if image.dtype == np.uint16:
        image = (image // 257).astype(np.uint8)
    if image.dtype == np.bool_:  # a 1-bit PNG
        image = image.astype(np.uint8) * 255
    if image.ndim == 3 and image.shape[2] == 2:  # gray + alpha (PNG "LA")
        image = image[:, :, :1]
    if image.dtype != np.uint8:
        raise ValueError(f"expected a uint8 image, got {image.dtype}")
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3 or image.shape[2] not in (1, 3, 4):
        raise ValueError(f"expected an image [H, W], [H, W, 1], [H, W, 3] or [H, W, 4], got {image.shape}")
    if image.shape[2] == 1:
        image = np.repeat(image, 3, axis=2)
    return np.ascontiguousarray(image[:, :, :3])


def from_uint8(pixels: Tensor) -> Tensor:
    """uint8 pixels ``[..., 3, H, W]`` → the ToRGB range, ``x / 127.5 − 1`` (the official image loaders)."""
    return pixels.float() / 127.5 - 1


def to_uint8(image: Tensor) -> np.ndarray:
    """``[3, H, W]`` ToRGB output → ``[H, W, 3]`` uint8 (official ``x·127.5 + 128``)."""
    return (image.detach().float().cpu() * 127.5 + 128).clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()


def png_round_trip(images: Tensor) -> Tensor:
    """``[N, 3, H, W]`` renders (ToRGB range) as the official scripts pass them on through 8-bit PNGs:
    ``clamp(x·127.5 + 128, 0, 255)`` truncated to uint8, read back as ``u / 127.5 − 1``."""
    pixels = (images.detach().float() * 127.5 + 128).clamp(0, 255).to(torch.uint8)
    return from_uint8(pixels).to(images.dtype)


def save_image(path: str, image) -> None:
    """Write a ``[3, H, W]`` render (ToRGB range) or a uint8 ``[H, W, 3]`` array, atomically."""
    pixels = to_uint8(image) if isinstance(image, Tensor) else image
    suffix = "." + path.rsplit(".", 1)[-1] if "." in path else ".png"
    with atomic_path(path, suffix) as tmp:
        imageio.imwrite(tmp, pixels)


def save_video(path: str, frames: Iterable[np.ndarray], fps: int = 30) -> None:
    """Write uint8 ``[H, W, 3]`` frames to an mp4 (H.264 via imageio-ffmpeg)."""
    with atomic_path(path, ".mp4") as tmp:
        with imageio.get_writer(tmp, fps=fps, codec="libx264", quality=8, macro_block_size=1) as writer:
            for frame in frames:
                writer.append_data(frame)


def turntable_labels(
    n_frames: int, kind: str = "large", focal: float = GAN_FOCAL, radius: float = CANONICAL_RADIUS
) -> Tensor:
    """Official video cameras ``[n, 25]``: ``large`` = 360° at v = π/2 starting at the front;
    ``small`` = the ±0.35 rad wobble (h = π/2 + 0.35·sin, v = π/2 − 0.05 + 0.25·cos)."""
    t = torch.arange(n_frames, dtype=torch.float32) / n_frames
    if kind == "large":
        h, v = math.pi / 2 + 2 * math.pi * t, torch.full_like(t, math.pi / 2)
    elif kind == "small":
        h = math.pi / 2 + 0.35 * torch.sin(2 * math.pi * t)
        v = math.pi / 2 - 0.05 + 0.25 * torch.cos(2 * math.pi * t)
    else:
        raise ValueError(f"unknown turntable kind {kind!r}; use 'large' or 'small'")
    return camera_label(lookat_pose(h, v, radius), focal)


def render_frames(
    render: Callable[..., Mapping[str, Tensor]],
    labels: Tensor,
    resolution: int,
    chunk: Optional[int],
    desc: str,
    **options,
) -> Iterator[np.ndarray]:
    """Yield uint8 frames of ``render(label [1, 25], resolution=, deterministic=True, chunk=, **options)``
    (``PortraitGAN.render`` with its pyramid and ws bound, or ``portrait3d-renderer``'s
    ``render_labels``), one per camera label ``[N, 25]``, with a progress bar."""
    for label in tqdm(labels, desc=desc, unit="frame"):
        with torch.no_grad():
            out = render(label[None], resolution=resolution, deterministic=True, chunk=chunk, **options)
        yield to_uint8(out["image"][0])


def contact_sheet(images: Sequence[np.ndarray], columns: int) -> np.ndarray:
    """Tile equally sized ``[H, W, 3]`` images row-major into one image."""
    rows = math.ceil(len(images) / columns)
    h, w, ch = images[0].shape
    sheet = np.zeros((rows * h, columns * w, ch), dtype=np.uint8)
    for i, img in enumerate(images):
        r, c = divmod(i, columns)
        sheet[r * h : (r + 1) * h, c * w : (c + 1) * w] = img
    return sheet

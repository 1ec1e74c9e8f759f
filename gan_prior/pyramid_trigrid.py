"""The pyramid tri-grid: a set of tri-grids at several resolutions, and how they are sampled.

Each level R is a tensor ``[B, 3, C·D, R, R]`` (3 planes; C = 12 feature channels × D = 3 depth
slices, channel index = c·D + d). At sampling time a plane is a small volume
``[C, D, R, R]`` looked up with trilinear ``grid_sample`` at ``(W, H, D)`` coordinates:

    plane 0: (x, y, z)    plane 1: (x, z, y)    plane 2: (y, z, x)

of the world point scaled by ``2 / box_warp`` (the cube ``[-0.35, 0.35]³`` → ``[-1, 1]³``), with
zeros padding and ``align_corners=False``. Features are averaged over levels (the official code
divides the sum by the number of levels, where the paper says "sum"; the released decoder was
trained on the mean), then over planes (in the decoder).

Level keys are the spatial size R (8, 16, …, 512). Any subset of levels is valid.
"""

from __future__ import annotations

import functools
from typing import Iterable, Mapping, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

BOX_WARP = 0.7  # side of the tri-grid cube in GAN world units (official rendering_kwargs)
TRIGRID_CHANNELS = 12  # feature channels per plane and depth slice
TRIGRID_DEPTH = 3  # depth slices per plane (official --triplane_depth 3)
LEVEL_SIZES = (8, 16, 32, 64, 128, 256, 512)  # the released model's pyramid
# grid_sample coordinate order (W, H, D) for each plane, i.e. ``points @ inv(plane_axes)`` of the
# official "corrected" EG3D plane axes.
PLANE_COORDINATES = ((0, 1, 2), (0, 2, 1), (1, 2, 0))


def level_key(size: int) -> str:
    """File/parameter name of a level, as in the official files: ``trigrids_{R}``."""
    return f"trigrids_{size}"


class _TrilinearSample(torch.autograd.Function):
    """``F.grid_sample(volume, grid)`` (trilinear, zeros padding, ``align_corners=False``) whose
    backward computes only the volume gradient.

    PyTorch's ``grid_sampler_3d_backward`` always computes the grid gradient too, reading the 8
    corner values of every channel for every point (a second, cache-missing gather as costly as
    the forward) even when the grid needs no gradient. The volume gradient does not depend on the
    volume's values, so the backward is called with an all-zero, stride-0 stand-in for the volume:
    the scatter into the volume gradient is the same code, in the same order (bit-identical), and
    the unused grid-gradient reads all hit one cached value.
    """

    @staticmethod
    def forward(ctx, volume: Tensor, grid: Tensor) -> Tensor:
        ctx.save_for_backward(grid)
        ctx.volume_shape = volume.shape
        return F.grid_sample(volume, grid, mode="bilinear", padding_mode="zeros", align_corners=False)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out: Tensor):
        (grid,) = ctx.saved_tensors
        stand_in = grad_out.new_zeros(()).expand(ctx.volume_shape)
        grad_volume, _ = torch.ops.aten.grid_sampler_3d_backward(
            grad_out, stand_in, grid, 0, 0, False, [True, False]
        )  # bilinear, zeros, align_corners=False
        return grad_volume, None


def trilinear_sample(volume: Tensor, grid: Tensor) -> Tensor:
    """``volume [N, C, D, H, W]`` at ``grid [N, 1, 1, M, 3]`` (W, H, D order, in [-1, 1]) →
    ``[N, C, 1, 1, M]``: trilinear, zeros padding, ``align_corners=False`` (the official
    ``sample_from_planes`` call); the cheaper backward when only the volume needs a gradient."""
    if volume.requires_grad and not grid.requires_grad and torch.is_grad_enabled():
        return _TrilinearSample.apply(volume, grid)
    return F.grid_sample(volume, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def pyramid_volumes(levels: Mapping[int, Tensor], batch: int, depth: int = TRIGRID_DEPTH) -> list[Tensor]:
    """The levels ``{R: [B, 3, C·D, R, R]}`` as ``grid_sample`` volumes ``[batch·3, C, D, R, R]``.

    On the CPU they are laid out channels-last (``[N, D, R, R, C]`` in memory), the layout of the
    compiled kernels of :mod:`gan_prior.trilinear_cpu` (and of ``grid_sample``'s fastest CPU
    lookups): each corner's 12 channels in one cache line. The copy is differentiable; make the
    volumes once per render and sample them for both passes (:func:`sample_volumes`).
    """
    volumes = []
    for level in levels.values():
        lb, n_planes, cd, h, w = level.shape
        if lb != batch and lb == 1:
            level = level.expand(batch, -1, -1, -1, -1)
        volume = level.reshape(batch * n_planes, cd // depth, depth, h, w)
        if volume.device.type == "cpu":
            volume = volume.contiguous(memory_format=torch.channels_last_3d)
        volumes.append(volume)
    return volumes


@functools.lru_cache(maxsize=None)
def _cpu_kernels():
    """:mod:`gan_prior.trilinear_cpu` (imported on first use), or None where numba is missing:
    then ``grid_sample`` serves the CPU as it serves CUDA."""
    try:
        from . import trilinear_cpu
    except ImportError:
        return None
    return trilinear_cpu


def sample_volumes(volumes: list[Tensor], points: Tensor, box_warp: float = BOX_WARP) -> Tensor:
    """Sample :func:`pyramid_volumes` at ``points`` ``[B, M, 3]`` (GAN world) → ``[B, 3, M, C]``,
    level-averaged."""
    if not volumes:
        raise ValueError("sample_pyramid needs at least one tri-grid level")
    b, m, _ = points.shape
    scaled = points * (2.0 / box_warp)
    # each plane's coordinates by slices (an index list would be a host tensor copied every call)
    grid = torch.stack(
        [torch.cat([scaled[..., i : i + 1] for i in order], -1) for order in PLANE_COORDINATES], 1
    )  # [B, 3, M, 3]
    grid = grid.reshape(b * 3, 1, 1, m, 3)
    kernels = _cpu_kernels() if grid.device.type == "cpu" else None
    if kernels is not None and kernels.supports(volumes, grid):
        return kernels.sample_pyramid(volumes, grid.reshape(b * 3, m, 3)).reshape(b, 3, m, -1)
    total = None
    for volume in volumes:
        out = trilinear_sample(volume, grid.to(volume.dtype))  # [B·3, C, 1, 1, M]
        # accumulate in place in grid_sample's layout: no fresh [B, 3, C, M] buffer per level
        total = out if total is None else total.add_(out)
    if len(volumes) > 1:
        total = total.div_(len(volumes))
    return total.reshape(b, 3, -1, m).transpose(-1, -2)


def pyramid_field(
    levels: Mapping[int, Tensor], decoder: nn.Module, box_warp: float = BOX_WARP, depth: int = TRIGRID_DEPTH
):
    """The renderer's field of a pyramid: points ``[B, M, 3]`` (GAN world) → ``decoder`` of the
    level-averaged features (σ_raw, features). The levels are laid out (:func:`pyramid_volumes`) once
    per batch size and shared by every call: make one field per render, not per pass."""
    if not levels:
        raise ValueError("sample_pyramid needs at least one tri-grid level")
    volumes: dict[int, list[Tensor]] = {}

    def evaluate(points: Tensor):
        b = points.shape[0]
        if b not in volumes:
            volumes[b] = pyramid_volumes(levels, b, depth)
        return decoder(sample_volumes(volumes[b], points, box_warp))

    return evaluate


def sample_pyramid(
    levels: Mapping[int, Tensor], points: Tensor, box_warp: float = BOX_WARP, depth: int = TRIGRID_DEPTH
) -> Tensor:
    """Sample every level at ``points`` ``[B, M, 3]`` (GAN world) → ``[B, 3, M, C]``, level-averaged."""
    if not levels:
        raise ValueError("sample_pyramid needs at least one tri-grid level")
    return sample_volumes(pyramid_volumes(levels, points.shape[0], depth), points, box_warp)


class PyramidTriGrid(nn.Module):
    """Learnable pyramid tri-grid: one ``nn.Parameter`` per level, named ``trigrids_{R}``.

    ``levels``: ``{R: [B, 3, C·D, R, R]}``. ``sample(points [B, M, 3]) -> [B, 3, M, C]``.
    """

    def __init__(self, levels: Mapping[int, Tensor], box_warp: float = BOX_WARP, depth: int = TRIGRID_DEPTH):
        super().__init__()
        if not levels:
            raise ValueError("a pyramid tri-grid needs at least one level")
        self.box_warp, self.depth = box_warp, depth
        self.trigrids = nn.ParameterDict(
            {level_key(size): nn.Parameter(t.detach().clone().float()) for size, t in sorted(levels.items())}
        )

    @classmethod
    def zeros(
        cls,
        sizes: Iterable[int] = LEVEL_SIZES,
        batch: int = 1,
        channels: int = TRIGRID_CHANNELS * TRIGRID_DEPTH,
        **kwargs,
    ) -> "PyramidTriGrid":
        return cls({r: torch.zeros(batch, 3, channels, r, r) for r in sizes}, **kwargs)

    @property
    def sizes(self) -> list[int]:
        return sorted(int(k.split("_")[1]) for k in self.trigrids.keys())

    def as_dict(self) -> dict[int, Tensor]:
        return {r: self.trigrids[level_key(r)] for r in self.sizes}

    def __getitem__(self, size: int) -> Tensor:
        return self.trigrids[level_key(size)]

    def sample(self, points: Tensor, sizes: Optional[Iterable[int]] = None) -> Tensor:
        levels = self.as_dict()
        if sizes is not None:
            levels = {r: levels[r] for r in sizes}
        return sample_pyramid(levels, points, self.box_warp, self.depth)

"""Pyramid tri-grid lookups on the CPU: compiled (numba) trilinear kernels over channels-last levels.

PyTorch's CPU ``grid_sample`` (3-D) is neither vectorised nor parallel beyond the batch — the 3
planes, which two threads split 2 : 1 — and its backward always computes the grid gradient and
scatters each corner's 12 channels to 12 planes apart. Here, per plane:

* ``sample_levels``: every level looked up at a slice of the points and summed in one pass (no
  per-level output buffers), each corner's 12 channels read from one cache line;
* ``scatter_level``: the volume gradient of one level only, into a channels-last buffer.

The arithmetic is ``grid_sampler_3d``'s, operation for operation in float32 (``align_corners=False``,
zeros padding; corners in its order tnw, tne, tsw, tse, bnw, bne, bsw, bse; contributions to a voxel
in point order), so values and gradients are bit-identical to ``F.grid_sample`` and
``pyramid_trigrid``'s one-call-per-level path. The work is split over torch's thread count,
(plane, slice of points) for the lookups and (level, plane) for the scatters, on one pool.

Arrays: a level plane ``[D, H, W, C]`` (channels-last), points ``[M, 3]`` in grid_sample's
(W, H, D) order in [−1, 1], features ``[M, C]``.
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Optional, Sequence

import numba
import numpy as np
import torch
from torch import Tensor

_ONE = np.float32(1.0)
_TWO = np.float32(2.0)


@numba.njit(inline="always")
def _corners(g, size_w, size_h, size_d):
    """grid_sampler_3d's source index (align_corners=False) and corner weights, in float32."""
    ix = ((g[0] + _ONE) * size_w - _ONE) / _TWO
    iy = ((g[1] + _ONE) * size_h - _ONE) / _TWO
    iz = ((g[2] + _ONE) * size_d - _ONE) / _TWO
    x0, y0, z0 = math.floor(ix), math.floor(iy), math.floor(iz)
    fx0, fy0, fz0 = np.float32(x0), np.float32(y0), np.float32(z0)
    fx1, fy1, fz1 = fx0 + _ONE, fy0 + _ONE, fz0 + _ONE
    tnw = (fx1 - ix) * (fy1 - iy) * (fz1 - iz)
    tne = (ix - fx0) * (fy1 - iy) * (fz1 - iz)
    tsw = (fx1 - ix) * (iy - fy0) * (fz1 - iz)
    tse = (ix - fx0) * (iy - fy0) * (fz1 - iz)
    bnw = (fx1 - ix) * (fy1 - iy) * (iz - fz0)
    bne = (ix - fx0) * (fy1 - iy) * (iz - fz0)
    bsw = (fx1 - ix) * (iy - fy0) * (iz - fz0)
    bse = (ix - fx0) * (iy - fy0) * (iz - fz0)
    return int(x0), int(y0), int(z0), (tnw, tne, tsw, tse, bnw, bne, bsw, bse)


@numba.njit(nogil=True, cache=True)
def _sample_levels(levels, points, out, lo, hi, scale):
    """``out[p] = (Σ_levels trilinear(level, points[p])) / scale`` for p in [lo, hi), level by level
    (as the one-call-per-level path sums them)."""
    n_ch = out.shape[1]
    val = np.empty(n_ch, np.float32)
    for k in range(len(levels)):
        vol = levels[k]
        d, h, w = vol.shape[0], vol.shape[1], vol.shape[2]
        for p in range(lo, hi):
            x0, y0, z0, wts = _corners(points[p], np.float32(w), np.float32(h), np.float32(d))
            val[:] = 0
            for corner in range(8):  # tnw, tne, tsw, tse, bnw, bne, bsw, bse
                x, y, z = x0 + (corner & 1), y0 + ((corner >> 1) & 1), z0 + (corner >> 2)
                if 0 <= x < w and 0 <= y < h and 0 <= z < d:
                    wt = wts[corner]
                    for c in range(n_ch):
                        val[c] += vol[z, y, x, c] * wt
            if k == 0:
                out[p, :] = val
            else:
                for c in range(n_ch):
                    out[p, c] += val[c]
    if scale != _ONE:
        for p in range(lo, hi):
            for c in range(n_ch):
                out[p, c] /= scale


@numba.njit(nogil=True, cache=True)
def _scatter_level(grad_out, points, grad_level):
    """``grad_level += Σ_p trilinearᵀ(points[p], grad_out[p])``, points in order."""
    d, h, w, n_ch = grad_level.shape
    for p in range(points.shape[0]):
        x0, y0, z0, wts = _corners(points[p], np.float32(w), np.float32(h), np.float32(d))
        for corner in range(8):
            x, y, z = x0 + (corner & 1), y0 + ((corner >> 1) & 1), z0 + (corner >> 2)
            if 0 <= x < w and 0 <= y < h and 0 <= z < d:
                wt = wts[corner]
                for c in range(n_ch):
                    grad_level[z, y, x, c] += wt * grad_out[p, c]


# ------------------------------------------------------------------------------- threads
POINTS_PER_TASK = 1 << 16  # lookups: slices small enough to balance the threads
_POOL: Optional[tuple[int, int, ThreadPoolExecutor]] = None  # (pid, workers, pool)


def _pool() -> ThreadPoolExecutor:
    """One worker per torch thread; made again after a fork or a ``torch.set_num_threads``."""
    global _POOL
    workers = torch.get_num_threads()
    if _POOL is None or _POOL[:2] != (os.getpid(), workers):
        _POOL = (os.getpid(), workers, ThreadPoolExecutor(workers, thread_name_prefix="trigrid"))
    return _POOL[2]


def _run(tasks: Sequence[Callable[[], None]]) -> None:
    """Run the tasks on the pool (in the order given: longest first) and wait for all of them."""
    if len(tasks) == 1 or torch.get_num_threads() == 1:
        for task in tasks:
            task()
        return
    for future in [_pool().submit(task) for task in tasks]:
        future.result()


def _planes(volume: Tensor) -> np.ndarray:
    """A channels-last volume ``[N, C, D, H, W]`` as the array ``[N, D, H, W, C]`` (no copy)."""
    return volume.detach().permute(0, 2, 3, 4, 1).numpy()


def sample_levels(volumes: Sequence[Tensor], points: Tensor) -> Tensor:
    """Level-averaged lookups: volumes ``[N, C, D, H, W]`` (channels-last, float32), points
    ``[N, M, 3]`` → ``[N, M, C]``."""
    n, m, _ = points.shape
    arrays = [_planes(v) for v in volumes]
    planes = [numba.typed.List([a[i] for a in arrays]) for i in range(n)]  # plane i of every level
    pts = points.detach().contiguous().numpy()
    out = torch.empty((n, m, volumes[0].shape[1]), dtype=torch.float32)
    out_np = out.numpy()
    scale = np.float32(len(volumes))
    parts = max(-(-torch.get_num_threads() // n), -(-m // POINTS_PER_TASK))
    bounds = [m * k // parts for k in range(parts + 1)]

    def task(i: int, lo: int, hi: int) -> Callable[[], None]:
        return lambda: _sample_levels(planes[i], pts[i], out_np[i], lo, hi, scale)

    _run([task(i, lo, hi) for i in range(n) for lo, hi in zip(bounds, bounds[1:]) if hi > lo])
    return out


def scatter_levels(grad_out: Tensor, points: Tensor, shapes: Sequence[torch.Size], wanted: Sequence[int]):
    """The gradients of :func:`sample_levels`'s volumes (indices ``wanted``; others None) for
    ``grad_out`` ``[N, M, C]``: channels-last tensors of the volumes' shapes."""
    g = (grad_out / len(shapes) if len(shapes) > 1 else grad_out).contiguous().numpy()
    pts = points.detach().contiguous().numpy()
    grads: list[Optional[Tensor]] = [None] * len(shapes)
    tasks = []
    for j in sorted(wanted, key=lambda j: -shapes[j][2:].numel()):  # the largest levels first
        n, c, d, h, w = shapes[j]
        grad = torch.zeros((n, d, h, w, c), dtype=torch.float32).permute(0, 4, 1, 2, 3)  # channels-last
        grads[j] = grad
        planes = _planes(grad)
        for i in range(shapes[j][0]):
            tasks.append(lambda i=i, planes=planes: _scatter_level(g[i], pts[i], planes[i]))
    _run(tasks)
    return grads


# ------------------------------------------------------------------------------- autograd
def supports(volumes: Sequence[Tensor], grid: Tensor) -> bool:
    """Float32 CPU volumes laid out channels-last, and points that need no gradient."""
    return (
        grid.device.type == "cpu"
        and grid.dtype == torch.float32
        and not grid.requires_grad
        and all(
            v.device.type == "cpu"
            and v.dtype == torch.float32
            and v.is_contiguous(memory_format=torch.channels_last_3d)
            for v in volumes
        )
    )


class _PyramidSample(torch.autograd.Function):
    @staticmethod
    def forward(ctx, points: Tensor, *volumes: Tensor) -> Tensor:
        ctx.save_for_backward(points)
        ctx.volume_shapes = [v.shape for v in volumes]
        return sample_levels(volumes, points)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out: Tensor):
        (points,) = ctx.saved_tensors
        wanted = [j for j, need in enumerate(ctx.needs_input_grad[1:]) if need]
        return (None, *scatter_levels(grad_out, points, ctx.volume_shapes, wanted))


def sample_pyramid(volumes: Sequence[Tensor], points: Tensor) -> Tensor:
    """Differentiable (in the volumes) :func:`sample_levels`: volumes ``[N, C, D, H, W]``
    (:func:`supports`), points ``[N, M, 3]`` → level-averaged features ``[N, M, C]``."""
    return _PyramidSample.apply(points, *volumes)

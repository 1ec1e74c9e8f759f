"""Meshes of a density field: marching cubes on a grid evaluated in chunks, and the clean-up an
exported mesh gets (largest component, outward normals, a face budget).

The grid is evaluated coarse to fine: first every ``block``-th lattice point, then the full
lattice only in the blocks whose corners straddle the level (and their neighbours); elsewhere the
fine values are interpolated from the coarse ones, which stay on one side of the level, so those
blocks hold no surface. The marching cubes run on the full ``resolution³`` lattice (PyMCubes, as
threestudio's ``mc-cpu``). Every field call takes at most ``chunk`` points, which bounds the
memory on a GPU.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

DensityFn = Callable[[Tensor], Tensor]  # points [N, 3] → density [N]
MIN_FACE_BUDGET = 100


class EmptyIsosurface(ValueError):
    """The level lies outside the density range of the grid: marching cubes would find nothing."""


@dataclass
class DensityGrid:
    values: np.ndarray  # [R, R, R] float32, axis order (x, y, z)
    level: float
    lo: float  # the lattice spans [lo, hi]³
    hi: float
    evaluated: int  # field evaluations made (coarse + fine)
    sigma_range: tuple[float, float]  # density range on the coarse lattice (crop excluded)


def _evaluate(density: DensityFn, points: Tensor, chunk: int) -> Tensor:
    return torch.cat([density(points[i : i + chunk]).float().cpu() for i in range(0, len(points), chunk)])


def _axis_interpolation(values: Tensor, coarse: Tensor, n: int, dim: int) -> Tensor:
    """Linear interpolation along ``dim`` from the lattice indices ``coarse`` to ``0 … n−1``."""
    fine = torch.arange(n)
    block = (torch.searchsorted(coarse, fine, right=True) - 1).clamp(0, len(coarse) - 2)
    t = (fine - coarse[block]).float() / (coarse[block + 1] - coarse[block]).float()
    shape = [1, 1, 1]
    shape[dim] = n
    a = values.index_select(dim, block)
    b = values.index_select(dim, block + 1)
    return a + (b - a) * t.reshape(shape)


def density_grid(
    density: DensityFn,
    resolution: int,
    level: Union[float, str],
    lo: float,
    hi: float,
    chunk: int = 1 << 18,
    block: int = 4,
    floor: Optional[float] = None,
    option: str = "isosurface_threshold",
) -> DensityGrid:
    """The density on the ``resolution³`` lattice of ``[lo, hi]³``, exact wherever the surface at
    ``level`` can pass (see the module docstring). ``level="auto"``: threestudio's rule, the mean of
    the positive values (on the coarse lattice). ``floor``: values at or below it (the tri-grid
    crop) are left out of the reported range and of ``auto``. Raises :class:`EmptyIsosurface`, naming
    ``option``, when the level is outside the range found — before the fine pass."""
    device = torch.device("cpu")
    lin = torch.linspace(lo, hi, resolution)
    coarse = torch.unique(torch.clamp(torch.arange(0, resolution - 1 + block, block), max=resolution - 1))
    c = lin[coarse]
    grid = torch.stack(torch.meshgrid(c, c, c, indexing="ij"), -1).reshape(-1, 3)
    values_c = _evaluate(density, grid.to(device), chunk).reshape(len(c), len(c), len(c))
    kept = values_c if floor is None else values_c[values_c > floor]
    if kept.numel() == 0:
        raise EmptyIsosurface(f"{option}: the density is cropped everywhere in the grid; nothing to mesh")
    lo_s, hi_s = float(kept.min()), float(kept.max())
    if level == "auto":
        positive = kept[kept > 1e-5]
        if positive.numel() == 0:
            raise EmptyIsosurface(
                f"{option}=auto: no positive density in the grid (σ from {lo_s:.3g} to {hi_s:.3g}); "
                "give a number inside that range"
            )
        level = float(positive.mean())
    level = float(level)
    if not lo_s < level < hi_s:
        raise EmptyIsosurface(
            f"{option}={level:g} gives an empty isosurface: the density σ found ranges from {lo_s:.3g} "
            f"to {hi_s:.3g} ({len(c)}³ grid); pick a level inside that range"
        )
    # blocks whose corners straddle the level, and their neighbours
    inside = (values_c > level).float()[None, None]
    straddle = F.max_pool3d(inside, 2, 1) != -F.max_pool3d(-inside, 2, 1)
    active = F.max_pool3d(straddle.float(), 3, 1, padding=1)[0, 0] > 0  # [nc−1]³
    values = values_c
    for dim in range(3):
        values = _axis_interpolation(values, coarse, resolution, dim)
    # the fine lattice points of the active blocks (their faces included)
    block_of = (torch.searchsorted(coarse, torch.arange(resolution), right=True) - 1).clamp(0, len(c) - 2)
    on_lower_face = torch.zeros(resolution, dtype=torch.bool)
    on_lower_face[coarse[1:-1]] = True  # a block's upper face point is also the next block's lower one
    need = active[block_of][:, block_of][:, :, block_of]
    for dim in range(3):  # a point on a face between blocks is needed by the block below it too
        below = torch.roll(need, 1, dim)
        idx = [slice(None)] * 3
        idx[dim] = on_lower_face
        shifted = torch.zeros_like(need)
        shifted[tuple(idx)] = below[tuple(idx)]
        need |= shifted
    index = need.nonzero()
    points = lin[index]
    values[index[:, 0], index[:, 1], index[:, 2]] = _evaluate(density, points.to(device), chunk)
    return DensityGrid(
        values=values.numpy(),
        level=level,
        lo=lo,
        hi=hi,
        evaluated=len(grid) + len(points),
        sigma_range=(lo_s, hi_s),
    )


def marching_cubes(grid: DensityGrid) -> tuple[np.ndarray, np.ndarray]:
    """Vertices ``[V, 3]`` (world units) and faces ``[F, 3]`` of the level set of ``grid`` (PyMCubes)."""
    import mcubes

    vertices, faces = mcubes.marching_cubes(grid.values, grid.level)
    n = grid.values.shape[0]
    vertices = grid.lo + vertices * ((grid.hi - grid.lo) / (n - 1))
    return vertices.astype(np.float32), faces.astype(np.int64)


@dataclass
class CleanReport:
    """What :func:`clean_mesh` kept and dropped (logged, and written in ``mesh_fidelity.json``)."""

    input_vertices: int
    input_faces: int
    components: int
    components_dropped: int
    faces_dropped_in_components: int
    degenerate_faces_dropped: int
    decimated_from_faces: Optional[int]
    flipped_to_outward: bool
    vertices: int = 0
    faces: int = 0
    notes: list = field(default_factory=list)

    def line(self) -> str:
        dec = (
            f", decimated {self.decimated_from_faces} → {self.faces} faces"
            if self.decimated_from_faces
            else ""
        )
        return (
            f"mesh: {self.input_vertices} vertices / {self.input_faces} faces from marching cubes; "
            f"kept the largest of {self.components} components (dropped {self.components_dropped}, "
            f"{self.faces_dropped_in_components} faces){dec}; {self.vertices} vertices / {self.faces} faces"
        )


def signed_volume(vertices: np.ndarray, faces: np.ndarray) -> float:
    """Σ det(v0, v1, v2) / 6: positive when a closed mesh's faces wind counter-clockwise seen from
    outside (normals outward)."""
    t = vertices[faces].astype(np.float64)
    return float(np.einsum("ij,ij->i", t[:, 0], np.cross(t[:, 1], t[:, 2])).sum() / 6.0)


def _drop_unreferenced(vertices: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    used, inverse = np.unique(faces.reshape(-1), return_inverse=True)
    return vertices[used], inverse.reshape(-1, 3).astype(np.int64)


def clean_mesh(
    vertices: np.ndarray, faces: np.ndarray, max_faces: Optional[int] = None
) -> tuple[np.ndarray, np.ndarray, CleanReport]:
    """The largest connected component (by faces), oriented so that normals point outward, then
    quadric decimation (fast-simplification) to at most ``max_faces`` faces (``None``/0: no limit)."""
    import trimesh

    n_in_v, n_in_f = len(vertices), len(faces)
    t = vertices[faces]
    area2 = np.linalg.norm(np.cross(t[:, 1] - t[:, 0], t[:, 2] - t[:, 0]), axis=1)
    keep = area2 > 0
    degenerate = int((~keep).sum())
    faces = faces[keep]
    mesh = trimesh.Trimesh(vertices, faces, process=False)
    components = trimesh.graph.connected_components(
        mesh.face_adjacency, nodes=np.arange(len(faces)), min_len=1
    )
    sizes = np.array([len(c) for c in components])
    largest = components[int(sizes.argmax())]
    faces = faces[np.sort(largest)]
    vertices, faces = _drop_unreferenced(vertices, faces)
    report = CleanReport(
        input_vertices=n_in_v,
        input_faces=n_in_f,
        components=len(components),
        components_dropped=len(components) - 1,
        faces_dropped_in_components=int(sizes.sum() - sizes.max()),
        degenerate_faces_dropped=degenerate,
        decimated_from_faces=None,
        flipped_to_outward=False,
    )
    if max_faces and len(faces) > max_faces:
        import fast_simplification

        report.decimated_from_faces = len(faces)
        vertices, faces = fast_simplification.simplify(
            vertices.astype(np.float32), faces.astype(np.int32), target_reduction=1.0 - max_faces / len(faces)
        )
        vertices, faces = _drop_unreferenced(np.asarray(vertices, np.float32), np.asarray(faces, np.int64))
    if signed_volume(vertices, faces) < 0:
        faces = faces[:, ::-1].copy()
        report.flipped_to_outward = True
    mesh = trimesh.Trimesh(vertices, faces, process=False)
    if not mesh.is_winding_consistent:
        trimesh.repair.fix_winding(mesh)
        faces = np.asarray(mesh.faces, np.int64)
        if signed_volume(vertices, faces) < 0:
            faces = faces[:, ::-1].copy()
        report.notes.append("winding made consistent")
    report.vertices, report.faces = len(vertices), len(faces)
    return vertices.astype(np.float32), faces.astype(np.int64), report


def vertex_normals(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Unit area-weighted vertex normals ``[V, 3]`` (outward for a mesh from :func:`clean_mesh`)."""
    t = vertices[faces].astype(np.float64)
    n = np.cross(t[:, 1] - t[:, 0], t[:, 2] - t[:, 0])  # length = 2·area: area weighting
    out = np.zeros((len(vertices), 3))
    for k in range(3):
        np.add.at(out, faces[:, k], n)
    length = np.linalg.norm(out, axis=1, keepdims=True)
    out = np.where(length > 0, out / np.maximum(length, 1e-30), np.array([0.0, 0.0, 1.0]))
    return out.astype(np.float32)

"""Exact nearest triangle of each point: what the official code asks of kaolin's
``point_to_mesh_distance`` (squared distance and face index), in plain PyTorch, the same code on
the CPU and on CUDA, in chunks of bounded memory.

:func:`point_triangle_distance2` is the exact squared distance (the closest point found by its
Voronoi region: a vertex, an edge or the interior; Ericson, *Real-Time Collision Detection* §5.1.5).
:func:`nearest_triangles` finds, for every point, the triangle at the smallest distance — ties go to
the smallest triangle index (see ``TIE_RTOL``), as a brute-force search over all triangles would —
without testing every pair:

1. the triangles in clusters of :data:`CLUSTER` (consecutive in the Z order of their centroids),
   each with a bounding sphere; the points in spatially compact runs (Z order);
2. for each run, an octree of the points' cells, each cell keeping only the clusters that can hold
   the nearest triangle of one of its points (lower bound: the distance to the bounding sphere;
   upper bound: the distance to a point of the mesh);
3. per point, its clusters narrowed again, then each member triangle's circumscribed disc (a lower
   bound of its distance), and the exact distance to the few triangles whose bound does not exceed
   the nearest exact distance found so far.

Every bound is conservative (with room for float rounding and the tie band), so the candidates are
a superset of the nearest and tied triangles and the result is the brute force's (tested). The
exact distances that decide the face are computed in float64, whatever the points' dtype: a face
choice must not depend on float32 rounding (it decides how far a point moves; see ``TIE_RTOL``).
"""

from __future__ import annotations

import bisect
import math
from typing import Optional

import torch
from torch import Tensor

# point-triangle pairs per pass (measured: ~340 MiB of temporaries culled, ~960 MiB brute force)
PAIR_BUDGET = 1 << 20
# The culled search on CUDA: 16× larger passes, the same search in 15× fewer torch calls (each a
# kernel launch and the host's dispatch, where a GPU spends its time); ~2.2 GiB more temporaries for
# a 128² pass, under a posed inversion step's own peak (8.5 GiB either way, measured on the CPU); on
# the CPU larger passes are slower (bench/README.md, *Nearest-face search*)
CULLED_PAIR_BUDGET_CUDA = 16 * PAIR_BUDGET
EXACT = torch.float64  # dtype of the exact distances that choose the face


def _dot(a: Tensor, b: Tensor) -> Tensor:
    return (a * b).sum(-1)


def triangle_table(tris: Tensor) -> Tensor:
    """Per-triangle constants ``[F, 12]``: vertex a, edges ab and ac, and ab·ab, ab·ac, ac·ac."""
    a, ab, ac = tris[:, 0], tris[:, 1] - tris[:, 0], tris[:, 2] - tris[:, 0]
    return torch.cat([a, ab, ac, torch.stack([_dot(ab, ab), _dot(ab, ac), _dot(ac, ac)], -1)], -1)


def table_distance2(p: Tensor, table: Tensor) -> Tensor:
    """Squared distance ``[...]`` from points ``p`` ``[..., 3]`` to triangles given by their
    :func:`triangle_table` rows ``[..., 12]`` (broadcast).

    The closest point ``a + s·ab + t·ac`` is found by its Voronoi region (Ericson's tests, with
    ``d3 … d6`` derived from ``d1 = ab·ap``, ``d2 = ac·ap`` and the edge products); degenerate
    triangles fall in a vertex or edge region. The distance is ``|ap − s·ab − t·ac|²``.
    """
    a, ab, ac = table[..., 0:3], table[..., 3:6], table[..., 6:9]
    e, g, h = table[..., 9], table[..., 10], table[..., 11]
    ap = p - a
    d1, d2 = _dot(ab, ap), _dot(ac, ap)
    d3, d4, d5, d6 = d1 - e, d2 - g, d1 - g, d2 - h
    va, vb, vc = d3 * d6 - d5 * d4, d5 * d2 - d1 * d6, d1 * d4 - d3 * d2

    def safe(x: Tensor) -> Tensor:
        return torch.where(x.abs() > 0, x, torch.ones_like(x))

    zero, one = torch.zeros_like(d1), torch.ones_like(d1)
    denom = safe(va + vb + vc)
    s, t = vb / denom, vc / denom  # interior
    w = (d4 - d3) / safe((d4 - d3) + (d5 - d6))
    regions = [  # Ericson's order: the first that holds wins, so they are applied last to first
        ((d1 <= 0) & (d2 <= 0), zero, zero),  # vertex a
        ((d3 >= 0) & (d4 <= d3), one, zero),  # vertex b
        ((vc <= 0) & (d1 >= 0) & (d3 <= 0), d1 / safe(d1 - d3), zero),  # edge ab
        ((d6 >= 0) & (d5 <= d6), zero, one),  # vertex c
        ((vb <= 0) & (d2 >= 0) & (d6 <= 0), zero, d2 / safe(d2 - d6)),  # edge ac
        ((va <= 0) & (d4 - d3 >= 0) & (d5 - d6 >= 0), 1 - w, w),  # edge bc
    ]
    for cond, rs, rt in reversed(regions):
        s, t = torch.where(cond, rs, s), torch.where(cond, rt, t)
    return (ap - ab * s.unsqueeze(-1) - ac * t.unsqueeze(-1)).square().sum(-1)


def point_triangle_distance2(p: Tensor, a: Tensor, b: Tensor, c: Tensor) -> Tensor:
    """Squared distance ``[...]`` from points ``p`` to triangles ``(a, b, c)`` (all ``[..., 3]``, broadcast)."""
    shape = torch.broadcast_shapes(a.shape, b.shape, c.shape)
    tris = torch.stack([x.expand(shape) for x in (a, b, c)], -2).reshape(-1, 3, 3)
    return table_distance2(p, triangle_table(tris).reshape(*shape[:-1], 12))


# Ties. A point whose nearest mesh feature is a vertex or an edge is at the same distance from every
# face sharing it, and the face chosen decides the deformation (each face's frame moves
# differently). The official code takes whichever face kaolin's CUDA kernel meets first with the
# smallest float32 value; that choice has no exact meaning, so here every face within a relative
# TIE_RTOL of the smallest distance counts as tied and the smallest index wins (the parity
# stand-in of bench/official.py applies the same rule). The band's edge is itself a boundary where
# the choice changes; the distances are float64 so that float32 rounding (~1e-7 relative, measured
# to flip 4 in 10⁴ render samples on the parity body) cannot move a face across it.
TIE_RTOL, TIE_ATOL = 1e-5, 1e-12


def _first_min(d2: Tensor, faces: Tensor) -> tuple[Tensor, Tensor]:
    """Row-wise min of ``d2`` ``[n, K]`` and, among the columns tied with it (within
    :data:`TIE_RTOL`), the smallest ``faces`` index."""
    best = d2.min(1).values
    big = torch.iinfo(faces.dtype).max
    tied = d2 <= best[:, None] * (1 + TIE_RTOL) + TIE_ATOL
    index = torch.where(tied, faces, torch.full_like(faces, big)).min(1).values
    return best, index


def brute_force_nearest(points: Tensor, tris: Tensor, budget: int = PAIR_BUDGET) -> tuple[Tensor, Tensor]:
    """``(d2 [N], index [N])`` by testing every pair, ``budget`` pairs at a time (float64 distances,
    returned in the points' dtype)."""
    f = tris.shape[0]
    step = max(1, budget // max(f, 1))
    faces = torch.arange(f, device=points.device)
    out_d, out_i = [], []
    table = triangle_table(tris.to(EXACT))[None]
    for i in range(0, points.shape[0], step):
        d2 = table_distance2(points[i : i + step, None].to(EXACT), table)
        d, idx = _first_min(d2, faces.expand_as(d2))
        out_d.append(d)
        out_i.append(idx)
    return torch.cat(out_d).to(points.dtype), torch.cat(out_i)


@torch.no_grad()
def nearest_triangles(
    points: Tensor, tris: Tensor, max_distance: Optional[float] = None, budget: Optional[int] = None
) -> tuple[Tensor, Tensor]:
    """Nearest triangle of each point: points ``[N, 3]``, triangles ``[F, 3, 3]`` →
    ``(d2 [N], index [N])``, the squared distance and the triangle's index (ties: the smallest).

    With ``max_distance`` τ, only distances below τ are needed: a point at τ or farther from every
    triangle gets ``d2 = inf`` and index 0 (and costs little). ``budget``: point-triangle pairs per
    pass, which bounds the memory and does not change the result; by default :data:`PAIR_BUDGET`, and
    :data:`CULLED_PAIR_BUDGET_CUDA` for the culled search of points on CUDA.
    """
    n, f = points.shape[0], tris.shape[0]
    if f == 0:
        raise ValueError("nearest_triangles needs at least one triangle")
    if budget is not None and budget < 1:
        raise ValueError(f"nearest_triangles: budget must be a positive number of pairs, got {budget}")
    inf = torch.tensor(float("inf"), dtype=points.dtype, device=points.device)
    brute = budget or PAIR_BUDGET
    if n * f <= 4 * brute or n < 64:
        d2, index = brute_force_nearest(points, tris, brute)
    else:
        culled = budget or (CULLED_PAIR_BUDGET_CUDA if points.device.type == "cuda" else PAIR_BUDGET)
        d2, index = _culled_nearest(points, tris, max_distance, culled)
    if max_distance is not None:
        far = d2 >= max_distance**2
        d2, index = torch.where(far, inf, d2), torch.where(far, torch.zeros_like(index), index)
    return d2, index


def _morton(code: Tensor, bits: int = 10) -> Tensor:
    """Z-order keys of integer cell coordinates ``[N, 3]`` (< 2^bits): near cells, near keys."""
    key = torch.zeros_like(code[:, 0])
    for bit in range(bits):
        for axis in range(3):
            key |= ((code[:, axis] >> bit) & 1) << (3 * bit + axis)
    return key


def _z_order(points: Tensor) -> Tensor:
    """A permutation ``[N]`` that puts points ``[N, 3]`` in Z order (spatially compact runs)."""
    lo = points.amin(0)
    side = float((points.amax(0) - lo).amax().clamp_min(1e-12)) / 1023 * (1 + 1e-6)
    return torch.argsort(_morton(((points - lo) / side).floor().long().clamp(0, 1023)))


CLUSTER = 8  # triangles per cluster


class _Clusters:
    """The triangles in clusters of :data:`CLUSTER` (consecutive in the Z order of their centroids;
    the last cluster repeats its last triangle): per cluster a bounding sphere (``centre``,
    ``radius``) and ``anchor``, a member's centroid (a point of the mesh); per member ``[C, K, ·]``
    its index (``face``), circumscribed disc (``disc``: centroid, unit normal, radius; normal 0 for
    a degenerate triangle, whose disc is then a ball) and float64 distance table (``table``)."""

    def __init__(self, tris: Tensor):
        f = tris.shape[0]
        centroid = tris.mean(1)
        order = _z_order(centroid)
        order = torch.cat([order, order[-1:].expand((-f) % CLUSTER)])
        self.face = order.reshape(-1, CLUSTER)
        t, c = tris[order], centroid[order]
        r = (t - c[:, None]).norm(dim=-1).amax(1)
        n = torch.linalg.cross(t[:, 1] - t[:, 0], t[:, 2] - t[:, 0], dim=-1)
        length = n.norm(dim=-1, keepdim=True)
        n = torch.where(length > 0, n / length.clamp_min(torch.finfo(t.dtype).tiny), torch.zeros_like(n))
        self.disc = torch.cat([c, n, r[:, None]], 1).reshape(-1, CLUSTER, 7)
        self.table = triangle_table(t.to(EXACT)).reshape(-1, CLUSTER, 12)
        c, r = c.reshape(-1, CLUSTER, 3), r.reshape(-1, CLUSTER)
        self.centre = c.mean(1)
        spread = (c - self.centre[:, None]).norm(dim=-1)
        self.radius = (spread + r).amax(1)
        self.anchor = c[torch.arange(c.shape[0], device=c.device), spread.argmin(1)]
        self.scale = float(tris.abs().amax()) + float(r.amax())


def _culled_nearest(points: Tensor, tris: Tensor, max_distance: Optional[float], budget: int):
    n = points.shape[0]
    mesh = _Clusters(tris)
    tau = math.inf if max_distance is None else float(max_distance)
    slack = 1e-5 * (mesh.scale + float(points.abs().amax())) + 1e-6  # rounding of the float32 bounds
    order = _z_order(points)
    d2_out = torch.full((n,), math.inf, dtype=EXACT, device=points.device)
    idx_out = torch.zeros(n, dtype=torch.long, device=points.device)
    step = max(1024, budget // 16)
    for i in range(0, n, step):
        sel = order[i : i + step]
        d2_out[sel], idx_out[sel] = _run_nearest(points[sel], mesh, tau, slack, budget)
    return d2_out.to(points.dtype), idx_out


def _within(lower: Tensor, bound: Tensor, slack) -> Tensor:
    """``lower ≤ bound`` with room for rounding and for the triangles tied within TIE_RTOL."""
    return lower <= bound * (1 + 1e-5) + slack


def _csr(pair_cell: Tensor, m: int) -> tuple[Tensor, Tensor]:
    """(count, start) ``[m]`` of pairs sorted by cell."""
    count = torch.bincount(pair_cell, minlength=m)
    return count, torch.cumsum(count, 0) - count


def _expand(parent: Tensor, csr: tuple[Tensor, Tensor], pair_item: Tensor) -> tuple[Tensor, Tensor]:
    """Pairs (child, item) for children ``[M]`` of the cells ``parent``, from the pairs (parent cell,
    item) sorted by cell (``csr``: their :func:`_csr`)."""
    dev = parent.device
    count, start = csr
    k = count[parent]
    child = torch.arange(parent.shape[0], device=dev).repeat_interleave(k)
    offset = torch.arange(child.shape[0], device=dev) - (torch.cumsum(k, 0) - k)[child]
    return child, pair_item[start[parent][child] + offset]


def _run_nearest(p: Tensor, mesh: _Clusters, tau: float, slack: float, budget: int):
    """Nearest triangles (float64 d2, index) of a spatially compact run of points ``p`` ``[N, 3]``.

    The octree: at each level the occupied cells, each with the clusters that can hold the nearest
    triangle of one of its points. Every point of a cell (centre q, half-diagonal h) is at least
    |q − C| − R − h from a cluster's triangles (bounding sphere C, R) and at most min |q − a| + h
    from the mesh (a: the anchors; and beyond τ nothing matters), so the clusters whose lower bound
    exceeds that are dropped. Then :func:`_points_nearest`.
    """
    n, nc, dev, dt = p.shape[0], mesh.centre.shape[0], p.device, p.dtype
    lo = p.amin(0)
    extent = float((p.amax(0) - lo).amax().clamp_min(1e-12)) * (1 + 1e-6)
    pair_cell = pair_cluster = cells = None
    level = 1
    while True:
        g = 2**level
        side = extent / g
        half = side * math.sqrt(3) / 2
        code = ((p - lo) / side).floor().long().clamp(0, g - 1)
        new_cells, inverse = torch.unique((code[:, 0] * g + code[:, 1]) * g + code[:, 2], return_inverse=True)
        m = new_cells.shape[0]
        cc = torch.stack([new_cells // (g * g), (new_cells // g) % g, new_cells % g], 1)
        centre = lo + (cc.to(dt) + 0.5) * side
        if cells is None:
            pair_cell = torch.arange(m, device=dev).repeat_interleave(nc)
            pair_cluster = torch.arange(nc, device=dev).repeat(m)
        else:  # each cell inherits its parent's clusters
            k = g // 2
            parent = torch.searchsorted(cells, ((cc[:, 0] // 2) * k + cc[:, 1] // 2) * k + cc[:, 2] // 2)
            pair_cell, pair_cluster = _expand(parent, _csr(pair_cell, cells.shape[0]), pair_cluster)
        q = centre[pair_cell]
        upper = torch.full((m,), math.inf, dtype=dt, device=dev)
        upper = upper.scatter_reduce(0, pair_cell, (q - mesh.anchor[pair_cluster]).norm(dim=-1), "amin")
        lower = (q - mesh.centre[pair_cluster]).norm(dim=-1) - mesh.radius[pair_cluster] - half
        keep = _within(lower, (upper + half).clamp_max(tau)[pair_cell], slack)
        pair_cell, pair_cluster, cells = pair_cell[keep], pair_cluster[keep], new_cells
        if n <= 2 * m or level >= 12:
            break
        level += 1
    return _points_nearest(p, inverse, _csr(pair_cell, m), pair_cluster, mesh, tau, slack, budget)


def _points_nearest(p, inverse, csr, pair_cluster, mesh: _Clusters, tau: float, slack: float, budget: int):
    """Per point, its cell's clusters narrowed by the point's own bounds; then the distance to each
    member triangle's circumscribed disc (a lower bound) and the exact distance to the triangle of
    the smallest (an upper bound); then the exact distance to the triangles whose lower bound does
    not exceed it, and the first of those tied with the nearest."""
    n, dev, dt = p.shape[0], p.device, p.dtype
    d2_out = torch.full((n,), math.inf, dtype=EXACT, device=dev)
    idx_out = torch.zeros(n, dtype=torch.long, device=dev)
    ends = torch.cumsum(csr[0][inverse], 0).tolist()
    step = max(1, budget // CLUSTER)  # (point, cluster) pairs per pass
    i = 0
    while i < n:
        j = max(i + 1, bisect.bisect_right(ends, (ends[i - 1] if i else 0) + step, lo=i + 1))
        local, cluster = _expand(inverse[i:j], csr, pair_cluster)
        x = p[i:j][local]
        # 1. the clusters: bounding-sphere lower bounds, the nearest anchor an upper bound
        inf = torch.full((j - i,), math.inf, dtype=dt, device=dev)
        upper = inf.scatter_reduce(0, local, (x - mesh.anchor[cluster]).norm(dim=-1), "amin")
        lower = (x - mesh.centre[cluster]).norm(dim=-1) - mesh.radius[cluster]
        keep = _within(lower, upper.clamp_max(tau)[local], slack)
        local, cluster, x = local[keep], cluster[keep], x[keep]
        # 2. their triangles: squared distance to the disc (centre c, radius r, unit normal n):
        #    h² + max(0, |t| − r)², h = n·(x − c), |t|² = |x − c|² − h²
        disc = mesh.disc[cluster]  # [P, K, 7]
        rel = x[:, None] - disc[..., 0:3]
        h = (rel * disc[..., 3:6]).sum(-1)
        t = (rel.square().sum(-1) - h.square()).clamp_min(0).sqrt()
        low2 = h.square() + (t - disc[..., 6]).clamp_min(0).square()  # [P, K]
        # the triangle of the smallest bound, per point: its exact distance bounds the nearest
        row_min, row_slot = low2.min(1)
        rows = torch.arange(local.shape[0], device=dev)
        is_min = row_min == inf.scatter_reduce(0, local, row_min, "amin")[local]
        first = torch.full((j - i,), local.shape[0], dtype=torch.long, device=dev)
        first = first.scatter_reduce(0, local[is_min], rows[is_min], "amin")
        has = first < local.shape[0]
        first = first.clamp_max(max(local.shape[0] - 1, 0))
        upper2 = torch.full((j - i,), math.inf, dtype=EXACT, device=dev)
        if local.numel():
            exact = table_distance2(p[i:j].to(EXACT), mesh.table[cluster[first], row_slot[first]])
            upper2 = torch.where(has, exact, upper2)
        bound2 = upper2.clamp_max(tau * tau).to(dt)[local, None]
        row, slot = torch.nonzero(_within(low2, bound2, slack * (slack + 2 * bound2.sqrt())), as_tuple=True)
        # 3. exact distances; ties: among the triangles within TIE_RTOL of the smallest, the first
        who = local[row] + i
        d2 = table_distance2(p[who].to(EXACT), mesh.table[cluster[row], slot])
        face = mesh.face[cluster[row], slot]
        d2_out.scatter_reduce_(0, who, d2, "amin")
        tied = d2 <= d2_out[who] * (1 + TIE_RTOL) + TIE_ATOL
        idx_out.scatter_reduce_(0, who[tied], face[tied], "amin", include_self=False)
        i = j
    return d2_out, idx_out

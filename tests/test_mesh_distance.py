"""The exact nearest-triangle search (:mod:`gan_prior.mesh_distance`) that stands in for kaolin's
``point_to_mesh_distance`` in the SMPL deformation: the distance against an independent float64
reference, the culled search against the brute force (faces and ties included)."""

import pytest
import torch

from gan_prior.mesh_distance import (
    CULLED_PAIR_BUDGET_CUDA,
    PAIR_BUDGET,
    _culled_nearest,
    brute_force_nearest,
    nearest_triangles,
    point_triangle_distance2,
)
from gan_prior.synthetic_smpl import smpl_like_template


def reference_distance2(p, a, b, c):
    """Squared distance by the plane when the projection is inside, else the nearest edge segment."""
    p, a, b, c = (x.double() for x in (p, a, b, c))
    e1, e2 = b - a, c - a
    n = torch.linalg.cross(e1, e2, dim=-1)
    a11, a12, a22 = (e1 * e1).sum(-1), (e1 * e2).sum(-1), (e2 * e2).sum(-1)
    r1, r2 = ((p - a) * e1).sum(-1), ((p - a) * e2).sum(-1)
    det = a11 * a22 - a12 * a12
    u, v = (a22 * r1 - a12 * r2) / det, (a11 * r2 - a12 * r1) / det
    plane = ((p - a) * n).sum(-1).square() / (n * n).sum(-1)
    edge = []
    for s, t in ((a, b), (b, c), (c, a)):
        d = t - s
        k = (((p - s) * d).sum(-1) / (d * d).sum(-1)).clamp(0, 1)
        edge.append((p - s - k[..., None] * d).square().sum(-1))
    return torch.where((u >= 0) & (v >= 0) & (u + v <= 1), plane, torch.stack(edge).amin(0))


def test_point_triangle_distance_is_exact_in_every_region():
    gen = torch.Generator().manual_seed(0)
    a, b, c = (torch.randn(4000, 3, generator=gen, dtype=torch.float64) for _ in range(3))
    p = torch.randn(4000, 3, generator=gen, dtype=torch.float64) * 2
    ours = point_triangle_distance2(p, a, b, c)
    torch.testing.assert_close(ours, reference_distance2(p, a, b, c), rtol=1e-9, atol=1e-12)
    # points on the triangle (inside, on an edge, on a vertex) are at distance 0
    w = torch.rand(4000, 3, generator=gen, dtype=torch.float64)
    w[:1000, 0] = 0
    w[1000:2000, 1:] = 0
    w = w / w.sum(-1, keepdim=True)
    on = w[:, :1] * a + w[:, 1:2] * b + w[:, 2:] * c
    assert point_triangle_distance2(on, a, b, c).max() < 1e-20


@pytest.fixture(scope="module")
def body():
    t = smpl_like_template(0, 36, 34)  # 2448 faces
    return t["v_template"].float()[t["faces"]]  # [F, 3, 3]


@pytest.fixture(scope="module")
def points_and_truth(body):
    gen = torch.Generator().manual_seed(1)
    lo, hi = body.reshape(-1, 3).amin(0), body.reshape(-1, 3).amax(0)
    box = lo - 0.2 + (hi - lo + 0.4) * torch.rand(1600, 3, generator=gen)
    # points near vertices and edges: several faces share the nearest feature (the ties)
    v = body[torch.randint(0, body.shape[0], (800,), generator=gen)]
    near_vertex = v[:, 0] + 0.01 * torch.randn(800, 3, generator=gen)
    near_edge = 0.5 * (v[:, 0] + v[:, 1]) + 0.01 * torch.randn(800, 3, generator=gen)
    points = torch.cat([box, near_vertex, near_edge])
    return points, brute_force_nearest(points, body)


@pytest.mark.parametrize("max_distance", [None, 0.25])
def test_culled_search_is_the_brute_force(body, points_and_truth, max_distance):
    points, (ref_d2, ref_index) = points_and_truth
    assert points.shape[0] * body.shape[0] > 4 * PAIR_BUDGET  # the culled path, not the brute force
    d2, index = nearest_triangles(points, body, max_distance)
    if max_distance is not None:
        far = ref_d2 >= max_distance**2
        assert far.any() and (~far).any()
        assert torch.isinf(d2[far]).all() and (index[far] == 0).all()
        points, d2, index, ref_d2, ref_index = (x[~far] for x in (points, d2, index, ref_d2, ref_index))
    assert torch.equal(index, ref_index)
    torch.testing.assert_close(d2, ref_d2, rtol=0, atol=0)
    # the brute force is right too
    ref = reference_distance2(points, *body[ref_index].unbind(1))
    torch.testing.assert_close(ref_d2.double(), ref, rtol=1e-5, atol=1e-9)


def test_the_larger_cuda_passes_find_the_same_faces(body, points_and_truth):
    """On CUDA the culled search cuts its work in 16× larger passes: another cut, the same answer."""
    points, (ref_d2, ref_index) = points_and_truth
    for budget in (PAIR_BUDGET // 8, CULLED_PAIR_BUDGET_CUDA):
        d2, index = _culled_nearest(points, body, None, budget)
        assert torch.equal(index, ref_index), budget
        torch.testing.assert_close(d2, ref_d2, rtol=0, atol=0)


def test_a_shared_vertex_goes_to_the_smallest_face_index():
    # a fan of four faces around the origin; a point straight above the shared vertex is tied
    ring = torch.tensor([[1.0, 0, 0], [0, 1, 0], [-1, 0, 0], [0, -1, 0]])
    tris = torch.stack([torch.stack([torch.zeros(3), ring[i], ring[(i + 1) % 4]]) for i in range(4)])
    order = torch.tensor([2, 0, 3, 1])
    point = torch.tensor([[0.0, 0.0, 0.3]])
    d2, index = nearest_triangles(point, tris[order])
    assert index.item() == 0 and d2.item() == pytest.approx(0.09)


def test_no_triangles_is_an_error():
    with pytest.raises(ValueError, match="at least one triangle"):
        nearest_triangles(torch.zeros(3, 3), torch.zeros(0, 3, 3))


def test_a_pass_size_below_one_pair_is_an_error():
    with pytest.raises(ValueError, match="budget must be a positive number of pairs, got 0"):
        nearest_triangles(torch.zeros(3, 3), torch.zeros(1, 3, 3), budget=0)

"""A seeded SMPL-like body (head, neck, shoulders) for tests, parity fixtures and benchmarks.

The real SMPL model cannot be shipped (licence); this is a stand-in with SMPL's layout — 6890
vertices, 13776 faces of a closed surface, 24 joints in SMPL's kinematic tree, 10 shape and 207
pose-corrective directions, and a 30-row joint regressor like ``transfer_data/
smpl_joint_regressor.npy`` — shaped as a bust around the neck, skinned so that joint 12 turns the
neck and head and joint 15 the head. :func:`fill_deformation` computes the official renderer's
buffers from it as ``ImportanceRenderer.__init__`` does (``training/volumetric_rendering/
renderer.py``): the neck-aligned canonical mesh, the alignment point, the in-box face mask.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Optional

import torch
from torch import Tensor

from .deformation import MeshDeformation

# SMPL's kinematic tree (parent of each of the 24 joints)
SMPL_PARENTS = (-1, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9, 12, 13, 14, 16, 17, 18, 19, 20, 21)
N_LAT, N_LON = 84, 82  # 84·82 + 2 poles = 6890 vertices, 2·82·84 = 13776 faces (as SMPL)
# rest positions the joint regressor aims at (SMPL-like, metres, neck near the origin)
_JOINT_TARGETS = {
    0: (0, -0.9, 0), 1: (0.09, -0.95, 0), 2: (-0.09, -0.95, 0), 3: (0, -0.72, 0), 4: (0.1, -1.3, 0),
    5: (-0.1, -1.3, 0), 6: (0, -0.5, 0), 7: (0.1, -1.7, 0), 8: (-0.1, -1.7, 0), 9: (0, -0.26, 0),
    10: (0.1, -1.75, 0.1), 11: (-0.1, -1.75, 0.1), 12: (0, -0.03, -0.01), 13: (0.07, -0.11, -0.01),
    14: (-0.07, -0.11, -0.01), 15: (0, 0.07, 0.01), 16: (0.17, -0.14, -0.01), 17: (-0.17, -0.14, -0.01),
    18: (0.42, -0.16, 0), 19: (-0.42, -0.16, 0), 20: (0.66, -0.16, 0), 21: (-0.66, -0.16, 0),
    22: (0.74, -0.16, 0), 23: (-0.74, -0.16, 0),
}  # fmt: skip


def _profile(y: Tensor) -> tuple[Tensor, Tensor]:
    """Half-widths (x, z) of the bust at height ``y``: head ellipsoid, neck, shoulders."""
    head = (1 - ((y - 0.155) / 0.145).square()).clamp_min(0).sqrt()
    neck = torch.full_like(y, 0.05)
    torso = ((-0.03 - y) / 0.12).clamp(0, 1)
    torso = 0.05 + 0.17 * torch.sin(torso * math.pi / 2)
    rx = torch.maximum(torch.maximum(0.085 * head, neck * (y < 0.06)), torso * (y < -0.03))
    rz = torch.maximum(torch.maximum(0.10 * head, neck * (y < 0.06)), 0.55 * torso * (y < -0.03))
    bottom = ((y + 0.45) / 0.05).clamp(0, 1).sqrt()  # close the surface at the bottom pole
    return rx.clamp_min(0.02) * bottom, rz.clamp_min(0.02) * bottom


def _gaussian_rows(vertices: Tensor, targets: Tensor, sigma: float) -> Tensor:
    d2 = (targets[:, None] - vertices[None]).square().sum(-1)
    w = torch.exp(-(d2 - d2.amin(1, keepdim=True)) / (2 * sigma**2))
    return w / w.sum(1, keepdim=True)


def smpl_like_template(
    seed: int = 0, n_lat: int = N_LAT, n_lon: int = N_LON, n_vertices: int = 0
) -> dict[str, Tensor]:
    """The body, in smplx's names and shapes: ``v_template`` ``[V, 3]``, ``faces`` ``[F, 3]``,
    ``shapedirs`` ``[V, 3, 10]``, ``posedirs`` ``[207, 3V]``, ``J_regressor`` ``[24, V]``,
    ``lbs_weights`` ``[V, 24]``, ``parents`` ``[24]``, ``smpl_joint_regressor`` ``[30, V]``, with
    V = n_lat·n_lon + 2 and F = 2·n_lat·n_lon (SMPL's 6890 and 13776 by default; smaller for tests).

    ``n_vertices`` > V pads the vertices to that count with copies of the bottom pole, used by no
    face: a coarse surface that smplx still loads (its extra joints index SMPL's vertex ids, up to 6889).
    """
    N_LAT, N_LON = n_lat, n_lon  # noqa: N806
    gen = torch.Generator().manual_seed(seed)
    u = (torch.arange(N_LAT, dtype=torch.float64) + 0.5) / N_LAT
    phi = torch.arange(N_LON, dtype=torch.float64) / N_LON * 2 * math.pi
    y = (0.30 - 0.75 * u)[:, None].expand(N_LAT, N_LON)
    rx, rz = _profile(y)
    ring = torch.stack([rx * torch.cos(phi), y, rz * torch.sin(phi)], -1).reshape(-1, 3)
    v = torch.cat([ring, torch.tensor([[0.0, 0.30, 0.0], [0.0, -0.45, 0.0]], dtype=torch.float64)])
    v = v + 0.002 * torch.randn(v.shape, generator=gen, dtype=torch.float64)
    if n_vertices > v.shape[0]:
        v = torch.cat([v, v[-1:].expand(n_vertices - v.shape[0], 3)])
    faces = []
    for i in range(N_LAT - 1):
        for j in range(N_LON):
            a, b = i * N_LON + j, i * N_LON + (j + 1) % N_LON
            c, d = a + N_LON, b + N_LON
            faces += [[a, c, b], [b, c, d]]
    top, bottom = N_LAT * N_LON, N_LAT * N_LON + 1
    last = (N_LAT - 1) * N_LON
    for j in range(N_LON):
        faces += [[top, j, (j + 1) % N_LON], [bottom, last + (j + 1) % N_LON, last + j]]
    v32 = v.float()

    yv, xv = v[:, 1], v[:, 0]
    head = torch.sigmoid((yv - 0.03) / 0.015)
    neck = torch.sigmoid((yv + 0.05) / 0.015) * (1 - head)
    rest = 1 - head - neck
    side = torch.sigmoid(xv / 0.03)
    weights = torch.zeros(v.shape[0], 24, dtype=torch.float64)
    weights[:, 15], weights[:, 12] = head, neck
    spine = torch.exp(-xv.square() / 0.005)
    outer = 1 - spine
    weights[:, 9] = rest * spine
    for joint, s in ((13, side), (14, 1 - side)):
        weights[:, joint] = rest * outer * s * 0.4
    for joint, s in ((16, side), (17, 1 - side)):
        weights[:, joint] = rest * outer * s * 0.6
    weights = weights + 0.01 * torch.rand(weights.shape, generator=gen, dtype=torch.float64)
    weights = weights / weights.sum(1, keepdim=True)

    targets = torch.tensor([_JOINT_TARGETS[j] for j in range(24)], dtype=torch.float64)
    targets30 = torch.cat([targets, torch.randn(6, 3, generator=gen, dtype=torch.float64) * 0.1])
    return {
        "v_template": v32,
        "faces": torch.tensor(faces, dtype=torch.long),
        "shapedirs": 0.01 * torch.randn(v.shape[0], 3, 10, generator=gen),
        "posedirs": 0.001 * torch.randn(207, 3 * v.shape[0], generator=gen),
        "J_regressor": _gaussian_rows(v, targets, 0.03).float(),
        "lbs_weights": weights.float(),
        "parents": torch.tensor(SMPL_PARENTS, dtype=torch.long),
        "smpl_joint_regressor": _gaussian_rows(v, targets30, 0.03).float(),
    }


@torch.no_grad()
def fill_deformation(module: MeshDeformation, template: dict[str, Tensor], box_warp: float = 0.7) -> None:
    """Set ``module``'s buffers from ``template`` as the official ``ImportanceRenderer.__init__``:
    the canonical mesh minus the neck point (row 12 of ``smpl_joint_regressor``), and the faces
    whose three vertices lie strictly inside the tri-grid box."""
    body = module.aligned_SMPL.model
    for name in ("v_template", "shapedirs", "posedirs", "J_regressor", "lbs_weights", "parents"):
        getattr(body, name).copy_(template[name])
    module.aligned_SMPL.faces.copy_(template["faces"])
    align = (template["smpl_joint_regressor"] @ template["v_template"])[12]
    module.align_points.copy_(align.reshape(1, 1, 3))
    shaped = template["v_template"] - align
    module.shaped_smpl.copy_(shaped[None])
    inside = ((shaped > -box_warp / 2) & (shaped < box_warp / 2)).all(1)
    module.face_mask.copy_(inside[template["faces"]].all(1))


def posable_random_generator(cfg, seed: int = 0, template: Optional[dict[str, Tensor]] = None):
    """``PortraitGAN.random(cfg, seed)`` that can render posed: ``cfg``'s SMPL sizes set from
    ``template`` (default: the SMPL-size body of ``seed``) and its buffers filled from it, as
    model_512.pkl holds the real SMPL's. For benchmarks: random weights, a seeded stand-in body."""
    from .generator import PortraitGAN  # (the generator imports this package's deformation)

    template = smpl_like_template(seed) if template is None else template
    cfg = dataclasses.replace(
        cfg, smpl_vertices=template["v_template"].shape[0], smpl_faces=template["faces"].shape[0]
    )
    g = PortraitGAN.random(cfg, seed=seed)
    fill_deformation(g.renderer, template, cfg.render.box_warp)
    return g

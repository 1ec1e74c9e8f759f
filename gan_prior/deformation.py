"""SMPL mesh-guided deformation of the render's sample points (spec §2.7; official
``ImportanceRenderer.get_deformed_coordinate``, mode ``kaolin``,
``training/volumetric_rendering/renderer.py``).

The tri-grid holds a canonical portrait. To render it in body pose ``p`` ``[B, 6]``, every sample
point ``x`` (in the posed space) is carried back to the canonical space along the SMPL mesh:

1. the mesh posed with ``p`` (:class:`~gan_prior.smpl.SMPLBody`, neck-aligned with ``align_points``);
2. the nearest posed face among the ``face_mask`` faces (those inside the tri-grid box), by exact
   point-to-triangle distance (:func:`~gan_prior.mesh_distance.nearest_triangles`, for kaolin's
   ``point_to_mesh_distance``);
3. ``x`` in that face's frame — x axis ``v1 − v0``, y axis the normal, z = x × y, origin ``v0`` — and
   back out of the same face's frame on the canonical mesh (``shaped_smpl``);
4. points at ``thickness`` (0.25) or more from the mesh are left where they are.

The distance and the face choice carry no gradient (the official code runs them under no_grad);
the frames do, so the render is differentiable in ``p``. Only the inversion uses this: every later
stage renders the canonical pyramid.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn

from .mesh_distance import nearest_triangles
from .smpl import SMPLBody

THICKNESS = 0.25  # train.py default --thickness, as model_512's init_kwargs


class _AlignedSMPL(nn.Module):
    """Holds the official ``renderer.aligned_SMPL.`` names: ``faces`` ``[F, 3]`` and ``model``."""

    def __init__(self, num_vertices: int, num_faces: int, num_joints: int, num_betas: int):
        super().__init__()
        self.register_buffer("faces", torch.zeros(num_faces, 3, dtype=torch.long))
        self.model = SMPLBody(num_vertices, num_joints, num_betas)


class MeshDeformation(nn.Module):
    """The SMPL buffers of the official renderer (``renderer.shaped_smpl`` ``[1, V, 3]``,
    ``renderer.align_points`` ``[1, 1, 3]``, ``renderer.face_mask`` ``[F]``, and
    ``renderer.aligned_SMPL.*``) and the deformation they define."""

    def __init__(
        self,
        num_vertices: int = 6890,
        num_faces: int = 13776,
        num_joints: int = 24,
        num_betas: int = 10,
        thickness: float = THICKNESS,
    ):
        super().__init__()
        self.thickness = thickness
        self.register_buffer("shaped_smpl", torch.zeros(1, num_vertices, 3))
        self.register_buffer("align_points", torch.zeros(1, 1, 3))
        self.register_buffer("face_mask", torch.ones(num_faces, dtype=torch.bool))
        self.aligned_SMPL = _AlignedSMPL(num_vertices, num_faces, num_joints, num_betas)

    def posed_vertices(self, p: Tensor) -> Tensor:
        """The mesh in body pose ``p`` ``[B, 6]``, neck-aligned: ``[B, V, 3]`` (official
        ``AlignedSMPL.generate_posed_smpl`` with the stored ``align_points``)."""
        body = self.aligned_SMPL.model
        return body(body.full_pose(p)) - self.align_points

    def warp_for(self, p: Tensor) -> Callable[[Tensor], Tensor]:
        """The warp of body pose ``p`` ``[B, 6]``: points ``[B, N, 3]`` → deformed points (the mesh
        is posed once; the returned function can be called for every renderer pass and chunk)."""
        posed = self.posed_vertices(p)
        faces = self.aligned_SMPL.faces[self.face_mask]
        canonical = self.shaped_smpl[0]

        def warp(points: Tensor) -> Tensor:
            return self.deform(points, posed, faces, canonical)

        return warp

    def deform(self, points: Tensor, posed: Tensor, faces: Tensor, canonical: Tensor) -> Tensor:
        """``points`` ``[B, N, 3]`` in the pose of ``posed`` ``[B, V, 3]`` → canonical space."""
        out = []
        for i in range(points.shape[0]):
            x = points[i]
            with torch.no_grad():
                d2, index = nearest_triangles(x.detach(), posed[i].detach()[faces], self.thickness)
            face = faces[index]  # [N, 3]
            src, dst = posed[i][face], canonical[face]  # [N, 3, 3]
            local = _frame_coordinates(x, src)
            axes = _frame(dst)
            new = local[:, 0:1] * axes[0] + local[:, 1:2] * axes[1] + local[:, 2:3] * axes[2] + dst[:, 0]
            near = (d2.sqrt() < self.thickness).unsqueeze(-1)
            out.append(x + torch.where(near, new - x, torch.zeros_like(x)))
        return torch.stack(out)


def _frame(tri: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The official face frame of triangles ``[N, 3, 3]``: x = v1 − v0, y = the normal, z = x × y
    (unit vectors)."""
    e1, e2 = tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]
    y = torch.linalg.cross(e1, e2, dim=-1)
    y = y / torch.norm(y, dim=-1, keepdim=True)
    x = e1 / torch.norm(e1, dim=-1, keepdim=True)
    return x, y, torch.linalg.cross(x, y, dim=-1)


def _frame_coordinates(x: Tensor, tri: Tensor) -> Tensor:
    """Coordinates ``[N, 3]`` of points ``x`` ``[N, 3]`` in the frames of ``tri``, origin v0."""
    rel = x - tri[:, 0]
    return torch.stack([(rel * axis).sum(-1) for axis in _frame(tri)], -1)

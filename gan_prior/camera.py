"""Cameras of the GAN world and their exact threestudio equivalents.

GAN ("_e") world: y up, the face looks toward +z, the SMPL neck joint at the origin. A camera
is a 25-dim label: the OpenCV cam2world 4×4 (x right, y down, z forward) row-major, then the
3×3 intrinsics normalised by the image size ``[[f, 0, 0.5], [0, f, 0.5], [0, 0, 1]]``.

The official look-at sampler takes (h, v): h = π/2 is the front, h = 0 puts the camera at −x;
v is *not* the polar angle — the true polar angle is ``arccos(1 - 2v/π)``. Cameras sit on a
sphere of radius 2.7 about the origin and look at the pivot (0, 0.0649, 0).

threestudio ("_t") world: z up; camera position ``d·(cos e·cos a, cos e·sin a, sin e)``; OpenGL
c2w. Points map as ``x_e = P x_t`` with ``P = [[0,1,0],[0,0,1],[1,0,0]]`` (a proper rotation), and
``a = h − 90°``, ``e = asin(1 − 2v/π)``; threestudio must look at the pivot (0, 0, 0.0649)_t.
These are exact (checked to ~3e-7 against the official code, see camera-check.md).
"""

from __future__ import annotations

import math
from typing import Optional, Union

import torch
from torch import Tensor

CANONICAL_RADIUS = 2.7  # camera distance of every official stage
LOOKAT_PIVOT = (0.0, 0.0649, 0.0)  # official look-at point (GAN world)
GAN_FOCAL = 5000.0 / 768.0  # 6.5104166: 5000 px focal on a 1024 crop rescaled by 1/0.75
# Focal of official FOV_to_intrinsics(12.447863), used by the SDS stage and the 21 refinement
# views: 1 / (tan(12.447863 · 3.14159 / 360) · 1.414) = 6.484789 (a true fovy of 8.818°).
SDS_FOCAL = 1.0 / (math.tan(12.447863 * 3.14159 / 360.0) * 1.414)
SDS_FOVY_DEG = math.degrees(2 * math.atan(0.5 / SDS_FOCAL))  # 8.81796°, the threestudio fovy of SDS_FOCAL
# threestudio (t) → GAN (e) point rotation: x_e = P @ x_t.
T2E = torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
# OpenGL ↔ OpenCV camera axes (flip y and z).
GL_CV = torch.diag(torch.tensor([1.0, -1.0, -1.0, 1.0]))

Number = Union[float, Tensor]


def _as_batch(x: Number, like: Optional[Tensor] = None) -> Tensor:
    """A 1-D float32 tensor, on ``like``'s device if ``x`` is not a tensor already."""
    device = x.device if isinstance(x, Tensor) else (like.device if like is not None else None)
    return torch.as_tensor(x, dtype=torch.float32, device=device).reshape(-1)


def look_at(origins: Tensor, target: Tensor) -> Tensor:
    """OpenCV cam2world ``[B, 4, 4]`` for cameras at ``origins`` ``[B, 3]`` looking at ``target``,
    world up +y, no roll (official ``create_cam2world_matrix``)."""
    forward = torch.nn.functional.normalize(target - origins, dim=-1)
    up = torch.tensor([0.0, 1.0, 0.0], dtype=forward.dtype, device=forward.device).expand_as(forward)
    right = -torch.nn.functional.normalize(torch.cross(up, forward, dim=-1), dim=-1)
    down = torch.nn.functional.normalize(torch.cross(forward, right, dim=-1), dim=-1)
    c2w = torch.eye(4, dtype=origins.dtype, device=origins.device).repeat(origins.shape[0], 1, 1)
    c2w[:, :3, :3] = torch.stack([right, down, forward], -1)
    c2w[:, :3, 3] = origins
    return c2w


def lookat_pose(h: Number, v: Number, radius: float = CANONICAL_RADIUS, pivot=LOOKAT_PIVOT) -> Tensor:
    """The official ``LookAtPoseSampler.sample(h, v, pivot, radius)`` (radians) → ``[B, 4, 4]``."""
    like = h if isinstance(h, Tensor) else v if isinstance(v, Tensor) else None
    h, v = torch.broadcast_tensors(_as_batch(h, like), _as_batch(v, like))
    v = v.clamp(1e-5, math.pi - 1e-5)
    phi = torch.arccos(1 - 2 * v / math.pi)
    origins = torch.stack(
        [
            radius * torch.sin(phi) * torch.cos(math.pi - h),
            radius * torch.cos(phi),
            radius * torch.sin(phi) * torch.sin(math.pi - h),
        ],
        -1,
    )
    return look_at(
        origins, torch.tensor(pivot, dtype=origins.dtype, device=origins.device).expand_as(origins)
    )


def camera_label(c2w: Tensor, focal: Union[float, Tensor] = GAN_FOCAL) -> Tensor:
    """``[B, 4, 4]`` OpenCV cam2world (+ focal, scalar or ``[B]``) → label ``[B, 25]``."""
    b = c2w.shape[0]
    f = torch.as_tensor(focal, dtype=c2w.dtype, device=c2w.device).reshape(-1).expand(b)
    k = torch.zeros(b, 9, dtype=c2w.dtype, device=c2w.device)
    k[:, 0], k[:, 2], k[:, 4], k[:, 5], k[:, 8] = f, 0.5, f, 0.5, 1.0
    return torch.cat([c2w.reshape(b, 16), k], 1)


def canonical_label(batch: int = 1, focal: float = GAN_FOCAL) -> Tensor:
    """The frontal camera (h = v = π/2, radius 2.7, looking at the pivot) as ``[batch, 25]``.

    The official ``avg_c`` is a hard-coded dataset average that differs from this by ≤ 8e-4.
    """
    return camera_label(lookat_pose(math.pi / 2, math.pi / 2), focal).repeat(batch, 1)


def hv_to_elevation_azimuth(h: Number, v: Number) -> tuple[Tensor, Tensor]:
    """Official (h, v) radians → threestudio (elevation, azimuth) degrees."""
    like = h if isinstance(h, Tensor) else v if isinstance(v, Tensor) else None
    e = torch.rad2deg(torch.asin(1 - 2 * _as_batch(v, like) / math.pi))
    return e, torch.rad2deg(_as_batch(h, like)) - 90.0


def elevation_azimuth_to_hv(elevation_deg: Number, azimuth_deg: Number) -> tuple[Tensor, Tensor]:
    """threestudio (elevation, azimuth) degrees → official (h, v) radians."""
    like = elevation_deg if isinstance(elevation_deg, Tensor) else azimuth_deg
    like = like if isinstance(like, Tensor) else None
    e = torch.deg2rad(_as_batch(elevation_deg, like))
    return torch.deg2rad(_as_batch(azimuth_deg, like) + 90.0), math.pi * (1 - torch.sin(e)) / 2


def focal_to_fovy(focal: Union[float, Tensor]) -> Tensor:
    """Normalised focal → true vertical field of view in degrees."""
    return torch.rad2deg(2 * torch.atan(0.5 / torch.as_tensor(focal, dtype=torch.float32)))


def fovy_to_focal(fovy_deg: Union[float, Tensor]) -> Tensor:
    return 0.5 / torch.tan(torch.deg2rad(torch.as_tensor(fovy_deg, dtype=torch.float32)) / 2)


def threestudio_to_gan_points(points_t: Tensor) -> Tensor:
    """threestudio world points ``[..., 3]`` → GAN world: ``T2E @ x`` = (y, z, x), a roll of the
    coordinates (exact, and no host-made matrix copied to the device on every render)."""
    return torch.roll(points_t, -1, -1)


def gan_to_threestudio_points(points_e: Tensor) -> Tensor:
    """GAN world points ``[..., 3]`` → threestudio world: ``T2Eᵀ @ x`` = (z, x, y)."""
    return torch.roll(points_e, 1, -1)


def threestudio_c2w_to_label(c2w_t: Tensor, fovy_deg: Union[float, Tensor]) -> Tensor:
    """threestudio OpenGL c2w ``[B, 4, 4]`` (+ fovy in degrees) → official label ``[B, 25]``."""
    m = torch.eye(4, dtype=c2w_t.dtype, device=c2w_t.device)
    m[:3, :3] = T2E.to(c2w_t)
    c2w_e = m @ c2w_t @ GL_CV.to(c2w_t)
    return camera_label(c2w_e, fovy_to_focal(fovy_deg).to(c2w_t))


def label_to_threestudio(label: Tensor) -> tuple[Tensor, Tensor]:
    """Official label ``[B, 25]`` → (threestudio OpenGL c2w ``[B, 4, 4]``, fovy degrees ``[B]``)."""
    m = torch.eye(4, dtype=label.dtype, device=label.device)
    m[:3, :3] = T2E.to(label)
    c2w_t = m.T @ label[:, :16].reshape(-1, 4, 4) @ GL_CV.to(label)
    return c2w_t, focal_to_fovy(label[:, 16])


def threestudio_pivot() -> tuple[float, float, float]:
    """The look-at point in threestudio coordinates: (0, 0, 0.0649)."""
    return tuple(float(v) for v in gan_to_threestudio_points(torch.tensor(LOOKAT_PIVOT, dtype=torch.float64)))

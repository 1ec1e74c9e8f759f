"""The SMPL body from the buffers inside ``model_512.pkl`` (no smplx, no SMPL download).

``model_512.pkl`` holds the neutral SMPL model the official generator was trained with
(``G_ema.renderer.aligned_SMPL.model``, an ``smplx.body_models.SMPL``): ``v_template`` ``[V, 3]``,
``shapedirs`` ``[V, 3, K]``, ``posedirs`` ``[9·(J−1), 3V]``, ``J_regressor`` ``[J, V]``,
``lbs_weights`` ``[V, J]`` and ``parents`` ``[J]`` (V = 6890, J = 24, K = 10). :class:`SMPLBody`
keeps them under the same names and poses them by linear blend skinning, operation for operation as
smplx 0.1.28's ``lbs`` (the version the official environment pins).

The official inversion poses the body with ``p`` ``[B, 6]`` written into ``body_pose`` slots 11 and
14 — joints 12 (neck) and 15 (head) — with every other joint, ``betas``, ``global_orient`` and
``transl`` at zero (``training/aligned_smpl.py``, ``generate_posed_smpl``). Zero, not the values in
the pickle: the inversion script calls ``G.set_batch_size(1)``, which rebuilds the SMPL model from
the SMPL files (``ImportanceRenderer.set_batch_size``), discarding the trained copies.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

NECK_JOINT, HEAD_JOINT = 12, 15  # SMPL joints that p rotates (body_pose slots 11 and 14)


def batch_rodrigues(rot_vecs: Tensor) -> Tensor:
    """Axis-angle ``[N, 3]`` → rotation matrices ``[N, 3, 3]`` (smplx's form, with its +1e−8)."""
    angle = torch.norm(rot_vecs + 1e-8, dim=1, keepdim=True)
    rx, ry, rz = torch.split(rot_vecs / angle, 1, dim=1)
    cos, sin = torch.cos(angle).unsqueeze(1), torch.sin(angle).unsqueeze(1)
    zeros = torch.zeros_like(rx)
    k = torch.cat([zeros, -rz, ry, rz, zeros, -rx, -ry, rx, zeros], dim=1).view(-1, 3, 3)
    ident = torch.eye(3, dtype=rot_vecs.dtype, device=rot_vecs.device).unsqueeze(0)
    return ident + sin * k + (1 - cos) * torch.bmm(k, k)


def rigid_transforms(rot_mats: Tensor, joints: Tensor, parents: Tensor) -> Tensor:
    """Per-joint skinning transforms ``[B, J, 4, 4]`` (smplx ``batch_rigid_transform``'s relative
    transforms) from rotations ``[B, J, 3, 3]`` and rest joints ``[B, J, 3]``."""
    joints = joints.unsqueeze(-1)
    rel = joints.clone()
    rel[:, 1:] -= joints[:, parents[1:]]
    b, j = rot_mats.shape[:2]
    local = torch.cat(
        [
            F.pad(rot_mats.reshape(-1, 3, 3), [0, 0, 0, 1]),
            F.pad(rel.reshape(-1, 3, 1), [0, 0, 0, 1], value=1),
        ],
        2,
    ).reshape(b, j, 4, 4)
    chain = [local[:, 0]]
    for i in range(1, j):
        chain.append(torch.matmul(chain[int(parents[i])], local[:, i]))
    transforms = torch.stack(chain, 1)
    homogen = F.pad(joints, [0, 0, 0, 1])
    return transforms - F.pad(torch.matmul(transforms, homogen), [3, 0, 0, 0, 0, 0, 0, 0])


class SMPLBody(nn.Module):
    """The SMPL model's buffers (official names under ``renderer.aligned_SMPL.model.``) and its LBS."""

    def __init__(self, num_vertices: int = 6890, num_joints: int = 24, num_betas: int = 10):
        super().__init__()
        v, j = num_vertices, num_joints
        self.register_buffer("v_template", torch.zeros(v, 3))
        self.register_buffer("shapedirs", torch.zeros(v, 3, num_betas))
        self.register_buffer("posedirs", torch.zeros(9 * (j - 1), 3 * v))
        self.register_buffer("J_regressor", torch.zeros(j, v))
        self.register_buffer("lbs_weights", torch.zeros(v, j))
        self.register_buffer("parents", torch.full((j,), -1, dtype=torch.long))

    def forward(self, full_pose: Tensor) -> Tensor:
        """Axis-angle pose of every joint ``[B, 3J]`` (root first) → vertices ``[B, V, 3]``, betas 0.

        smplx ``lbs``: shaped template (+ shapedirs · betas, here 0), pose-corrective offsets,
        rest joints from the regressor, the kinematic chain, and the blend of joint transforms.
        """
        b = full_pose.shape[0]
        betas = full_pose.new_zeros(b, self.shapedirs.shape[-1])
        v_shaped = self.v_template + torch.einsum("bl,mkl->bmk", betas, self.shapedirs)
        joints = torch.einsum("bik,ji->bjk", v_shaped, self.J_regressor)
        ident = torch.eye(3, dtype=full_pose.dtype, device=full_pose.device)
        rot_mats = batch_rodrigues(full_pose.reshape(-1, 3)).view(b, -1, 3, 3)
        pose_feature = (rot_mats[:, 1:] - ident).view(b, -1)
        v_posed = torch.matmul(pose_feature, self.posedirs).view(b, -1, 3) + v_shaped
        a = rigid_transforms(rot_mats, joints, self.parents)
        j = self.J_regressor.shape[0]
        t = torch.matmul(self.lbs_weights.unsqueeze(0).expand(b, -1, -1), a.view(b, j, 16)).view(b, -1, 4, 4)
        homo = torch.cat([v_posed, torch.ones_like(v_posed[..., :1])], 2)
        return torch.matmul(t, homo.unsqueeze(-1))[:, :, :3, 0]

    def full_pose(self, p: Tensor) -> Tensor:
        """``p`` ``[B, 6]`` → ``[B, 3J]``: neck and head rotations, every other joint 0."""
        pose = p.new_zeros(p.shape[0], self.J_regressor.shape[0], 3)
        pose[:, NECK_JOINT] = p[:, :3]
        pose[:, HEAD_JOINT] = p[:, 3:]
        return pose.reshape(p.shape[0], -1)

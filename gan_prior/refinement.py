"""The refinement stage (paper §3.5; official ``gen_quality_improve_data_from_triplane.py`` and ``optimize_trigrid.py``): 21 views of the optimised pyramid, and the
masked patch-L2 fit that pulls the renders toward their SDEdit-refined versions.

Views (official ``gen_quality_improve_data_from_triplane.py``): for each azimuth parameter
h = ``linspace(0, 2π, 8)[:7]`` (h = 0 is the −x profile, h = π/2 the front) and each vertical
parameter v ∈ {60°, 90°, 120°} + U(−5°, 5°) — EG3D's v, so the true elevations are
asin(1 − 2v/π) ≈ +19.5°, 0°, −19.5° (± ≈3.4°) — a look-at camera at radius 2.7 around the pivot,
focal :data:`~gan_prior.camera.SDS_FOCAL` (``FOV_to_intrinsics(12.447863)``), rendered at 512²
with 96 + 96 samples and the GAN background. The official jitter is unseeded; here it is drawn
from ``seed`` so a run and its resume see the same views.

Fit (official ``optimize_trigrid.py``): 19 epochs over the 21 views in shuffled order (399 steps),
each step renders a random 256² patch of the 512² ray grid with 48 + 48 samples and *no*
background, loss = mean((render − target)² · mask) · 1e3 with the rendered, non-detached mask.
The epoch order and patch corners here come from ``seed`` and the step index, so resuming at any
step continues the same sequence.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping

import torch
from torch import Tensor

from .camera import CANONICAL_RADIUS, SDS_FOCAL, camera_label, hv_to_elevation_azimuth, lookat_pose

NUM_AZIMUTHS = 7  # linspace(0, 2π, 8)[:7]
V_BANDS_DEG = (60.0, 90.0, 120.0)  # EG3D vertical parameters of the three rings
V_JITTER_DEG = 5.0
NUM_VIEWS = NUM_AZIMUTHS * len(V_BANDS_DEG)


@dataclass
class RefineFitConfig:
    resolution: int = 512  # ray grid of the views and of the fit
    patch_resolution: int = 256
    depth_resolution: int = 48  # fit samples (views use 96 + 96)
    depth_resolution_importance: int = 48
    loss_weight: float = 1e3


def refinement_hv(seed: int = 0) -> tuple[Tensor, Tensor]:
    """EG3D ``(h, v)`` in radians, ``[21]`` each, in the official order (azimuth-major, then v band)."""
    gen = torch.Generator().manual_seed(seed)
    h_values = torch.linspace(0, 2 * math.pi, NUM_AZIMUTHS + 1, dtype=torch.float64)[:NUM_AZIMUTHS]
    h = h_values.repeat_interleave(len(V_BANDS_DEG))
    bands = torch.tensor(V_BANDS_DEG, dtype=torch.float64).repeat(NUM_AZIMUTHS)
    jitter = (torch.rand(NUM_VIEWS, generator=gen, dtype=torch.float64) * 2 - 1) * V_JITTER_DEG
    return h.float(), torch.deg2rad(bands + jitter).float()


def refinement_labels(seed: int = 0, focal: float = SDS_FOCAL, radius: float = CANONICAL_RADIUS) -> Tensor:
    """The 21 official camera labels ``[21, 25]`` (cam2world + normalised intrinsics)."""
    h, v = refinement_hv(seed)
    return camera_label(lookat_pose(h, v, radius), focal)


def refinement_angles(seed: int = 0) -> tuple[Tensor, Tensor]:
    """True (elevation, threestudio azimuth) in degrees of the 21 views (a = h − 90°)."""
    return hv_to_elevation_azimuth(*refinement_hv(seed))


def fit_schedule(
    step: int, seed: int = 0, num_views: int = NUM_VIEWS, cfg: RefineFitConfig = RefineFitConfig()
) -> tuple[int, int, int]:
    """``(view, top, left)`` of fit step ``step``: each epoch visits every view once, shuffled."""
    epoch, i = divmod(step, num_views)
    order = torch.randperm(num_views, generator=torch.Generator().manual_seed(seed * 100003 + epoch))
    corner = torch.Generator().manual_seed(seed * 1000003 + step)
    top, left = torch.randint(0, cfg.resolution - cfg.patch_resolution + 1, (2,), generator=corner).tolist()
    return int(order[i]), top, left


def patch_loss(
    G,
    levels: Mapping[int, Tensor],
    ws: Tensor,
    label: Tensor,
    target: Tensor,
    top: int,
    left: int,
    cfg: RefineFitConfig = RefineFitConfig(),
    deterministic: bool = False,
) -> Tensor:
    """Masked patch L2 of one view: ``label`` ``[1, 25]``, ``target`` ``[1, 3, R, R]`` in [−1, 1]."""
    p = cfg.patch_resolution
    out = G.render(
        levels,
        ws,
        label,
        resolution=cfg.resolution,
        deterministic=deterministic,
        background=False,
        patch=(top, left, p),
        depth_resolution=cfg.depth_resolution,
        depth_resolution_importance=cfg.depth_resolution_importance,
    )
    return masked_patch_l2(out["image"], out["mask"], target, top, left, cfg)


def masked_patch_l2(
    image: Tensor, mask: Tensor, target: Tensor, top: int, left: int, cfg: RefineFitConfig = RefineFitConfig()
) -> Tensor:
    """The official fit's loss: ``image`` / ``mask`` of the patch at (top, left) ``[1, 3|1, p, p]``
    against that window of ``target`` ``[1, 3, R, R]``, times ``loss_weight``."""
    p = cfg.patch_resolution
    gt = target[:, :, top : top + p, left : left + p].to(image)
    return ((image - gt) ** 2 * mask).mean() * cfg.loss_weight

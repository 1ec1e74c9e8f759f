"""GAN inversion: optimise a w+ latent so that the generator renders a target portrait.

Follows the official projector (``proj/projector/w_projector_with_pose_optim.py``, paper §3.4):
w statistics from 600 z (``RandomState(123)``) mapped at the frontal camera; w+ starts at
``w_avg`` for every layer; Adam (0.9, 0.999); one learning rate 0.01 for everything (the code's
per-group rates are overwritten each step) with a linear ramp-up over the first 5 % and a cosine
ramp-down over the last 25 %; Gaussian w noise ``w_std·0.05·max(0, 1 − t/0.75)²``; every
``noise_const`` buffer of the synthesis re-randomised, optimised with the StyleGAN2
auto-correlation penalty (×1e5) and re-normalised each step (then discarded, as the official
code does: the returned w+ is used with the checkpoint's own noise); a perceptual distance.

The image compared is the official synthesis (``TriPlaneGenerator.synthesis``, the projector's
``G.synthesis(...)['image']``): the neural render at ``neural_rendering_resolution`` (128²), the
superresolution to 512², then an area resize to ``resolution`` (256²) — ``mode="official"``, the
default. ``mode="raw"`` compares the neural render (``image_raw``) rendered directly at
``resolution`` instead; its one use is a generator without superresolution weights (a state dict
or folder saved without them). Difference, by necessity: the
body pose is 0 and not optimised (the SMPL deformation is not part of this port): a posed photo
is explained by the latent alone, which costs fidelity on strongly turned heads and shoulders.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm import tqdm

from .camera import GAN_FOCAL, camera_label, canonical_label, elevation_azimuth_to_hv, lookat_pose
from .generator import PortraitGAN

Distance = Callable[[Tensor, Tensor], Tensor]


@dataclass
class InversionConfig:
    steps: int = 500
    w_avg_samples: int = 600
    w_avg_seed: int = 123
    learning_rate: float = 0.01
    lr_rampup_length: float = 0.05
    lr_rampdown_length: float = 0.25
    initial_noise_factor: float = 0.05
    noise_ramp_length: float = 0.75
    regularize_noise_weight: float = 1e5
    optimize_noise: bool = True
    resolution: int = (
        256  # size at which the distance compares (official: the 512² SR image area-resized to 256²)
    )
    mode: str = (
        "official"  # "official": render 128², SR 512², area → resolution; "raw": image_raw at resolution
    )
    deterministic: bool = False  # renderer sampling; the official projector jitters


def synthesize_for_distance(
    G: PortraitGAN, ws: Tensor, c: Tensor, cfg: InversionConfig, deterministic: Optional[bool] = None
) -> Tensor:
    """The image the distance sees, ``[B, 3, resolution, resolution]`` (see ``InversionConfig.mode``)."""
    det = cfg.deterministic if deterministic is None else deterministic
    if cfg.mode == "raw":
        return G.render(G.synthesize_pyramid(ws), ws, c, resolution=cfg.resolution, deterministic=det)[
            "image"
        ]
    image = G.synthesize(ws, c, deterministic=det)["image"]
    if image.shape[-1] > cfg.resolution:  # official projector: area-downsample the 512² image to 256²
        image = F.interpolate(image, size=(cfg.resolution, cfg.resolution), mode="area")
    return image


def distance_resolution(G: PortraitGAN, cfg: InversionConfig) -> int:
    """Side of the compared images: ``resolution``, or the SR output if smaller (tiny models)."""
    return cfg.resolution if cfg.mode == "raw" else min(cfg.resolution, G.cfg.image_resolution)


def check_mode(G: PortraitGAN, cfg: InversionConfig) -> None:
    if cfg.mode not in ("official", "raw"):
        raise ValueError(f"inversion mode must be 'official' or 'raw', got {cfg.mode!r}")
    if cfg.mode == "official" and G.superresolution is None:
        raise ValueError(
            "inversion mode 'official' needs the generator's superresolution weights "
            "('superresolution.*', in model_512.pkl); this generator has none: use mode='raw'"
        )


@torch.no_grad()
def w_statistics(
    G: PortraitGAN, n: int = 600, seed: int = 123, c: Optional[Tensor] = None
) -> tuple[Tensor, float]:
    """``(w_avg [1, 1, w_dim], w_std)`` of ``n`` latents mapped at the frontal camera, pose 0."""
    device = next(G.parameters()).device
    z = torch.from_numpy(np.random.RandomState(seed).randn(n, G.cfg.z_dim)).float().to(device)
    c = canonical_label(n).to(device) if c is None else c.to(device).expand(n, -1)
    w = G.mapping(z, c)[:, :1]
    w_avg = w.mean(0, keepdim=True)
    return w_avg, float(((w - w_avg).square().sum() / n).sqrt())


def learning_rate(t: float, cfg: InversionConfig) -> float:
    """Official ramp: cosine ramp-down over the last ``lr_rampdown_length``, linear ramp-up first."""
    ramp = min(1.0, (1.0 - t) / cfg.lr_rampdown_length)
    ramp = 0.5 - 0.5 * math.cos(ramp * math.pi)
    return cfg.learning_rate * ramp * min(1.0, t / cfg.lr_rampup_length)


def noise_regularization(buffers: list[Tensor]) -> Tensor:
    """StyleGAN2's multi-scale auto-correlation penalty on noise maps ``[H, W]``."""
    reg = 0.0
    for buf in buffers:
        v = buf[None, None]
        while True:
            reg = (
                reg + (v * torch.roll(v, 1, dims=3)).mean() ** 2 + (v * torch.roll(v, 1, dims=2)).mean() ** 2
            )
            if v.shape[2] <= 8:
                break
            v = F.avg_pool2d(v, 2)
    return reg


def inversion_step(
    G: PortraitGAN,
    w_opt: Tensor,
    noise: list[Tensor],
    target: Tensor,
    c: Tensor,
    distance: Distance,
    cfg: InversionConfig,
    t: float,
    w_std: float,
) -> tuple[Tensor, Tensor]:
    """The forward pass of one inversion step at progress ``t`` ∈ [0, 1): the w noise, the
    synthesis, the render at ``cfg.resolution`` and the distance to ``target`` (already at that
    size), plus the noise penalty when ``noise`` (the optimised ``noise_const`` maps) is given.
    Returns ``(distance, loss)``, scalar tensors on the generator's device."""
    w_noise = w_std * cfg.initial_noise_factor * max(0.0, 1.0 - t / cfg.noise_ramp_length) ** 2
    ws = w_opt + torch.randn_like(w_opt) * w_noise
    image = synthesize_for_distance(G, ws, c, cfg)
    dist = distance(image, target).sum()
    loss = dist + cfg.regularize_noise_weight * noise_regularization(noise) if noise else dist
    return dist, loss


def invert(
    G: PortraitGAN,
    target: Tensor,
    c: Tensor,
    distance: Distance,
    cfg: InversionConfig = InversionConfig(),
    progress: bool = True,
) -> dict:
    """Invert ``target`` ``[1, 3, H, W]`` (in [−1, 1], seen from camera ``c`` ``[1, 25]``).

    Returns ``{"ws": [1, num_ws, w_dim], "distance": per-step list, "image": final render}``.
    ``G`` itself is not modified (a private copy carries the optimised noise).
    """
    if target.ndim != 4 or target.shape[:2] != (1, 3):
        raise ValueError(f"target must be [1, 3, H, W], got {tuple(target.shape)}")
    check_mode(G, cfg)
    G = copy.deepcopy(G).eval().requires_grad_(False)
    device = next(G.parameters()).device
    c = c.to(device)
    size = distance_resolution(G, cfg)
    target = F.interpolate(target.float().to(device), size=(size, size), mode="area")
    w_avg, w_std = w_statistics(G, cfg.w_avg_samples, cfg.w_avg_seed)
    w_opt = w_avg.repeat(1, G.num_ws, 1).clone().requires_grad_(True)
    noise = [b for name, b in G.backbone.synthesis.named_buffers() if name.endswith("noise_const")]
    params = [w_opt]
    if cfg.optimize_noise:
        for b in noise:
            b.normal_().requires_grad_(True)
        params += noise
    opt = torch.optim.Adam(params, betas=(0.9, 0.999), lr=cfg.learning_rate)
    history = []
    bar = tqdm(range(cfg.steps), desc="inversion", unit="step", disable=not progress)
    for step in bar:
        t = step / cfg.steps
        for group in opt.param_groups:
            group["lr"] = learning_rate(t, cfg)
        dist, loss = inversion_step(
            G, w_opt, noise if cfg.optimize_noise else [], target, c, distance, cfg, t, w_std
        )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if cfg.optimize_noise:
            with torch.no_grad():
                for b in noise:
                    b.sub_(b.mean()).mul_(b.square().mean().rsqrt())
        history.append(dist.item())
        bar.set_postfix(distance=f"{history[-1]:.4g}")
    with torch.no_grad():
        ws = w_opt.detach()
        final = synthesize_for_distance(G, ws, c, cfg, deterministic=True)
    return {"ws": ws, "distance": history, "image": final}


@torch.no_grad()
def estimate_camera(
    G: PortraitGAN,
    target: Tensor,
    distance: Distance,
    yaws_deg=(-30.0, -15.0, 0.0, 15.0, 30.0),
    elevations_deg=(-10.0, 0.0, 10.0),
    resolution: int = 64,
) -> dict:
    """Pick the camera, among look-at cameras at ``yaws × elevations`` (threestudio degrees, yaw 0 =
    front), from which the average portrait (``w_avg``) looks most like ``target`` ``[1, 3, H, W]``.

    This replaces the official SMPL-fit camera (``data_processing/preprocess_img_for_inversion.py``) by a coarse search: the aligned crop fixes
    the head's place and size; the head's turn and tilt remain. Returns ``{"label": [1, 25],
    "yaw", "elevation", "distances": {"yaw,elevation": d}}``.
    """
    w_avg, _ = w_statistics(G)
    ws = w_avg.repeat(1, G.num_ws, 1)
    pyramid = G.synthesize_pyramid(ws)
    target = F.interpolate(target.float().to(ws.device), size=(resolution, resolution), mode="area")
    grid = [(float(y), float(e)) for e in elevations_deg for y in yaws_deg]
    h, v = elevation_azimuth_to_hv(torch.tensor([e for _, e in grid]), torch.tensor([y for y, _ in grid]))
    labels = camera_label(lookat_pose(h, v), GAN_FOCAL).to(ws.device)
    scores = {}
    for (yaw, elev), label in zip(grid, labels):
        image = G.render(pyramid, ws, label[None], resolution=resolution, deterministic=True)["image"]
        scores[f"{yaw:g},{elev:g}"] = float(distance(image, target).sum())
    best = min(range(len(grid)), key=lambda i: scores[f"{grid[i][0]:g},{grid[i][1]:g}"])
    return {
        "label": labels[best : best + 1],
        "yaw": grid[best][0],
        "elevation": grid[best][1],
        "distances": scores,
    }

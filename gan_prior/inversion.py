"""GAN inversion: optimise a w+ latent (and the body pose) so that the generator renders a target.

Follows the official projector (``proj/projector/w_projector_with_pose_optim.py`` as
``run_inversion_with_pose_optimization.py`` calls it, paper §3.4): the starting body pose p₀ from the
discriminator's pose predictor (:class:`gan_prior.pose.PosePredictor`); w statistics from 600 z
(``RandomState(123)``) mapped at the frontal camera with p₀; w+ starts at ``w_avg`` for every layer;
Adam (0.9, 0.999) over w+, the noise buffers and p, one learning rate 0.01 for all (the code's
per-group rates are overwritten each step) with a linear ramp-up over the first 5 % and a cosine
ramp-down over the last 25 %; Gaussian w noise ``w_std·0.05·max(0, 1 − t/0.75)²``; every
``noise_const`` buffer of the synthesis re-randomised, optimised with the StyleGAN2
auto-correlation penalty (×1e5) and re-normalised each step (then discarded, as the official
code does: the returned w+ is used with the checkpoint's own noise); a perceptual distance. Each
step renders in pose p with the SMPL mesh-guided deformation (``apply_def=True``) and 96 + 96
samples (the script's ``sampling_multiplier = 2.0``); the pyramid made from w+ afterwards is
canonical (pose 0), as ``run_trigrid_gen.py``.

A generator without the SMPL buffers (tiny and random ones, files saved without them) is inverted
at pose 0, as before the pose port; the caller says so (:func:`gan_prior.portrait_init`).

The image compared is the official synthesis (``TriPlaneGenerator.synthesis``, the projector's
``G.synthesis(...)['image']``): the neural render at ``neural_rendering_resolution`` (128², read
from the checkpoint), the superresolution to 512², then an area resize to ``resolution`` (256²) —
``mode="official"``, the default. ``mode="raw"`` compares the neural render (``image_raw``)
rendered directly at ``resolution`` instead; its one use is a generator without superresolution
weights (a state dict or folder saved without them).

Not in the official code: the camera. The official one comes from an SMPL fit of the photo; ours
from :func:`estimate_camera` (a grid search on the average portrait, refined by a local search; once
p₀ is predicted, again with the average portrait in pose p₀), and ``camera_steps`` > 0 also
optimises its yaw and pitch with w during the first steps.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, fields
from typing import Callable, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm import tqdm

from .camera import (
    GAN_FOCAL,
    LOOKAT_PIVOT,
    camera_label,
    elevation_azimuth_to_hv,
    hv_to_elevation_azimuth,
    lookat_pose,
)
from .checks import MAX_RESOLUTION, check_setting
from .generator import PortraitGAN

Distance = Callable[[Tensor, Tensor], Tensor]


PROGRESS_EVERY = 10  # steps between the progress bar's distance reads (each one waits for the GPU)


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
    # official run_inversion_with_pose_optimization.py: depth_resolution(_importance) × 2.0 (96 + 96)
    sampling_multiplier: float = 2.0
    optimize_pose: bool = True  # p optimised with w (official), where the generator can deform
    # Not official: yaw and pitch optimised with w during the first camera_steps steps (0 = fixed
    # camera, as the official projector), at camera_lr × the w learning-rate ramp (radians).
    camera_steps: int = 0
    camera_lr: float = 0.01


def sampling(G: PortraitGAN, cfg: InversionConfig) -> dict:
    """The renderer's sample counts during the inversion (official: the generator's × 2.0)."""
    r = G.cfg.render
    return {
        "depth_resolution": int(r.depth_resolution * cfg.sampling_multiplier),
        "depth_resolution_importance": int(r.depth_resolution_importance * cfg.sampling_multiplier),
    }


def synthesize_for_distance(
    G: PortraitGAN,
    ws: Tensor,
    c: Tensor,
    cfg: InversionConfig,
    deterministic: Optional[bool] = None,
    pose: Optional[Tensor] = None,
) -> Tensor:
    """The image the distance sees, ``[B, 3, resolution, resolution]`` (see ``InversionConfig.mode``),
    in body pose ``pose`` ``[B, 6]`` (the deformation) or canonical (None)."""
    det = cfg.deterministic if deterministic is None else deterministic
    samples = sampling(G, cfg)
    if cfg.mode == "raw":
        pyramid = G.synthesize_pyramid(ws)
        return G.render(pyramid, ws, c, resolution=cfg.resolution, deterministic=det, pose=pose, **samples)[
            "image"
        ]
    image = G.synthesize(ws, c, deterministic=det, pose=pose, **samples)["image"]
    if image.shape[-1] > cfg.resolution:  # official projector: area-downsample the 512² image to 256²
        image = F.interpolate(image, size=(cfg.resolution, cfg.resolution), mode="area")
    return image


def distance_resolution(G: PortraitGAN, cfg: InversionConfig) -> int:
    """Side of the compared images: ``resolution``, or the SR output if smaller (tiny models)."""
    return cfg.resolution if cfg.mode == "raw" else min(cfg.resolution, G.cfg.image_resolution)


def check_inversion_config(cfg: InversionConfig, prefix: str = "") -> None:
    """Settings the projector cannot use (a ramp length of 0 divides by it, a negative step count or
    rate runs backwards), one line each naming ``<prefix><setting>``; before any model loads."""
    default = {f.name: f.default for f in fields(InversionConfig)}
    for name, low, high in (
        ("steps", 0, 100_000),
        ("w_avg_samples", 1, 100_000),
        ("resolution", 8, MAX_RESOLUTION),  # (tiny models compare at 8²; the CLI asks for 16)
        ("camera_steps", 0, 100_000),
    ):
        check_setting(prefix + name, getattr(cfg, name), low, high, whole=True, default=default[name])
    for name, high, above in (
        ("learning_rate", None, False),
        ("lr_rampup_length", None, True),
        ("lr_rampdown_length", None, True),
        ("noise_ramp_length", None, True),
        ("initial_noise_factor", None, False),
        ("regularize_noise_weight", None, False),
        ("sampling_multiplier", 10, True),  # × the generator's 48 + 48 samples per ray (renderer: ≤ 512)
        ("camera_lr", None, False),
    ):
        check_setting(prefix + name, getattr(cfg, name), 0, high, above=above, default=default[name])
    if cfg.mode not in ("official", "raw"):
        raise ValueError(f"{prefix}mode: {cfg.mode!r} must be 'official' or 'raw'; the default is 'official'")


def check_mode(G: PortraitGAN, cfg: InversionConfig) -> None:
    check_inversion_config(cfg, "inversion.")
    if cfg.mode == "official" and G.superresolution is None:
        raise ValueError(
            "inversion mode 'official' needs the generator's superresolution weights "
            "('superresolution.*', in model_512.pkl); this generator has none: use mode='raw'"
        )


def projector_label() -> Tensor:
    """The official projector's frontal camera ``[1, 25]``: ``LookAtPoseSampler.sample(3.14 / 2,
    3.14 / 2, (0, 0.0649, 0), radius=2.7)`` (3.14, not π, in the official code), focal 6.5104166."""
    return camera_label(lookat_pose(3.14 / 2, 3.14 / 2, pivot=LOOKAT_PIVOT), GAN_FOCAL)


@torch.no_grad()
def w_statistics(
    G: PortraitGAN, n: int = 600, seed: int = 123, c: Optional[Tensor] = None, pose: Optional[Tensor] = None
) -> tuple[Tensor, float]:
    """``(w_avg [1, 1, w_dim], w_std)`` of ``n`` latents mapped at the frontal camera with body pose
    ``pose`` ``[1, 6]`` (the official projector passes p₀; None = 0)."""
    device = next(G.parameters()).device
    z = torch.from_numpy(np.random.RandomState(seed).randn(n, G.cfg.z_dim)).float().to(device)
    c = projector_label().to(device).expand(n, -1) if c is None else c.to(device).expand(n, -1)
    w = G.mapping(z, c, None if pose is None else pose.to(device).expand(n, -1))[:, :1]
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
    pose: Optional[Tensor] = None,
) -> tuple[Tensor, Tensor]:
    """The forward pass of one inversion step at progress ``t`` ∈ [0, 1): the w noise, the
    synthesis, the render at ``cfg.resolution`` and the distance to ``target`` (already at that
    size), plus the noise penalty when ``noise`` (the optimised ``noise_const`` maps) is given.
    ``pose`` ``[1, 6]``: the body pose of the render (None: canonical).
    Returns ``(distance, loss)``, scalar tensors on the generator's device."""
    w_noise = w_std * cfg.initial_noise_factor * max(0.0, 1.0 - t / cfg.noise_ramp_length) ** 2
    ws = w_opt + torch.randn_like(w_opt) * w_noise
    image = synthesize_for_distance(G, ws, c, cfg, pose=pose)
    dist = distance(image, target).sum()
    loss = dist + cfg.regularize_noise_weight * noise_regularization(noise) if noise else dist
    return dist, loss


def label_to_hv(label: Tensor) -> tuple[Tensor, Tensor, float]:
    """``(h, v, radius)`` of a look-at label ``[1, 25]`` (the inverse of :func:`lookat_pose`)."""
    origin = label[0, :16].reshape(4, 4)[:3, 3].double()
    radius = float(origin.norm())
    phi = torch.arccos((origin[1] / radius).clamp(-1, 1))
    h = math.pi - torch.atan2(origin[2], origin[0])
    return h.float(), (math.pi * (1 - torch.cos(phi)) / 2).float(), radius


def invert(
    G: PortraitGAN,
    target: Tensor,
    c: Tensor,
    distance: Distance,
    cfg: InversionConfig = InversionConfig(),
    progress: bool = True,
    pose: Optional[Tensor] = None,
) -> dict:
    """Invert ``target`` ``[1, 3, H, W]`` (in [−1, 1], seen from camera ``c`` ``[1, 25]``).

    ``pose`` ``[1, 6]``: the starting body pose p₀ (the pose predictor's); the w statistics are
    mapped with it, and where the generator has the SMPL buffers every step renders in pose p,
    optimised with w (``cfg.optimize_pose``). None: pose 0, canonical renders (no deformation).

    Returns ``{"ws": [1, num_ws, w_dim], "pose": [1, 6] or None, "camera": [1, 25], "distance":
    per-step list, "image": final render}``. ``G`` itself is not modified (a private copy carries
    the optimised noise).
    """
    if target.ndim != 4 or target.shape[:2] != (1, 3):
        raise ValueError(f"target must be [1, 3, H, W], got {tuple(target.shape)}")
    check_mode(G, cfg)
    G = copy.deepcopy(G).eval().requires_grad_(False)
    device = next(G.parameters()).device
    c = c.to(device)
    size = distance_resolution(G, cfg)
    target = F.interpolate(target.float().to(device), size=(size, size), mode="area")
    p0 = None if pose is None else pose.detach().float().to(device)
    w_avg, w_std = w_statistics(G, cfg.w_avg_samples, cfg.w_avg_seed, pose=p0)
    w_opt = w_avg.repeat(1, G.num_ws, 1).clone().requires_grad_(True)
    noise = [b for name, b in G.backbone.synthesis.named_buffers() if name.endswith("noise_const")]
    params = [{"params": [w_opt]}]
    if cfg.optimize_noise:
        for b in noise:
            b.normal_().requires_grad_(True)
        params.append({"params": noise})
    p_opt = None
    if p0 is not None and G.renderer is not None:  # official: apply_def=True, p optimised with w
        p_opt = p0.clone().requires_grad_(cfg.optimize_pose)
        if cfg.optimize_pose:
            params.append({"params": [p_opt]})
    camera = None
    if cfg.camera_steps > 0:
        h0, v0, radius = label_to_hv(c.cpu())
        h0, v0 = h0.to(device), v0.to(device)  # copied to the device once
        focal = float(c[0, 16])
        camera = torch.zeros(2, device=device, requires_grad=True)  # (Δh, Δv) radians
        params.append({"params": [camera], "camera": True})
    opt = torch.optim.Adam(params, betas=(0.9, 0.999), lr=cfg.learning_rate)

    def label_now() -> Tensor:
        if camera is None:
            return c
        pose_c2w = lookat_pose(h0 + camera[0], v0 + camera[1], radius)
        return camera_label(pose_c2w, focal)

    history = []
    bar = tqdm(range(cfg.steps), desc="inversion", unit="step", disable=not progress)
    for step in bar:
        t = step / cfg.steps
        for group in opt.param_groups:
            lr = learning_rate(t, cfg)
            if group.get("camera"):  # the camera moves only during the first camera_steps steps
                lr = lr / cfg.learning_rate * cfg.camera_lr if step < cfg.camera_steps else 0.0
            group["lr"] = lr
        dist, loss = inversion_step(
            G, w_opt, noise if cfg.optimize_noise else [], target, label_now(), distance, cfg, t, w_std, p_opt
        )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if cfg.optimize_noise:
            with torch.no_grad():
                for b in noise:
                    b.sub_(b.mean()).mul_(b.square().mean().rsqrt())
        history.append(dist.detach())  # read on the host only every PROGRESS_EVERY steps
        if progress and (step % PROGRESS_EVERY == 0 or step == cfg.steps - 1):
            bar.set_postfix(distance=f"{history[-1].item():.4g}")
    with torch.no_grad():
        ws = w_opt.detach()
        final_c = label_now().detach()
        p_final = None if p_opt is None else p_opt.detach()
        final = synthesize_for_distance(G, ws, final_c, cfg, deterministic=True, pose=p_final)
    distances = torch.stack(history).tolist() if history else []
    return {"ws": ws, "pose": p_final, "camera": final_c, "distance": distances, "image": final}


def search_camera(
    score: Callable[[float, float], float],
    yaws_deg: Sequence[float],
    elevations_deg: Sequence[float],
    refine_to_deg: float = 0.5,
    starts: int = 3,
) -> tuple[float, float]:
    """The ``(yaw, elevation)`` (degrees) of least ``score(yaw, elevation)``: first on the grid
    ``yaws_deg × elevations_deg``, then refined continuously by a pattern search from each of the
    ``starts`` best grid cameras (steps of half the grid spacing, halved until below ``refine_to_deg``;
    0: the best grid camera as it is), each kept within one grid spacing of the grid, the best end
    kept. Several starts because a coarse grid can put the true camera's basin second: a body turned
    by ±15° per component put it there for 1 of 10 synthetic targets (bench/README.md, *Camera
    benchmark*). ``score`` is called once per camera (the caller caches)."""
    grid = sorted(((float(y), float(e)) for e in elevations_deg for y in yaws_deg), key=lambda ye: score(*ye))
    if not refine_to_deg > 0:
        return grid[0]
    spacing = [
        (float(np.diff(sorted(yaws_deg)).min()) / 2 if len(yaws_deg) > 1 else 0.0),
        (float(np.diff(sorted(elevations_deg)).min()) / 2 if len(elevations_deg) > 1 else 0.0),
    ]
    yaw_range = (min(yaws_deg) - 2 * spacing[0], max(yaws_deg) + 2 * spacing[0])
    elevation_range = (
        max(min(elevations_deg) - 2 * spacing[1], -89.0),
        min(max(elevations_deg) + 2 * spacing[1], 89.0),
    )

    def pattern_search(best: tuple[float, float]) -> tuple[float, float]:
        steps = list(spacing)
        while max(steps) >= refine_to_deg:
            moves = [
                (best[0] + sy * steps[0], best[1] + se * steps[1])
                for sy, se in ((1, 0), (-1, 0), (0, 1), (0, -1))
            ]
            moves = [
                m
                for m in moves
                if m != best
                and yaw_range[0] <= m[0] <= yaw_range[1]
                and elevation_range[0] <= m[1] <= elevation_range[1]
            ]
            better = min(moves, key=lambda ye: score(*ye), default=best)
            if score(*better) < score(*best):
                best = better
            else:
                steps = [s / 2 for s in steps]
        return best

    ends = [pattern_search(start) for start in grid[: max(1, starts)]]
    return min(ends, key=lambda ye: score(*ye))


@torch.no_grad()
def estimate_camera(
    G: PortraitGAN,
    target: Tensor,
    distance: Distance,
    yaws_deg=(-30.0, -15.0, 0.0, 15.0, 30.0),
    elevations_deg=(-10.0, 0.0, 10.0),
    resolution: int = 64,
    refine_to_deg: float = 0.5,
    pose: Optional[Tensor] = None,
    starts: int = 3,
) -> dict:
    """Pick the camera, among look-at cameras at ``yaws × elevations`` (threestudio degrees, yaw 0 =
    front), from which the average portrait (``w_avg``) looks most like ``target`` ``[1, 3, H, W]``,
    then refine it continuously from the ``starts`` best grid cameras (:func:`search_camera`), kept
    within one grid spacing of the grid (yaw ±45°, elevation ±20° by default): beyond it lie cameras
    no aligned portrait photo is taken from, where a poor match (or a random generator) would
    otherwise drift.

    ``pose`` ``[1, 6]``: the average portrait in that body pose (its w statistics mapped with it, as
    the projector's, and rendered with the mesh-guided deformation), so that a turned or tilted neck
    in ``target`` is not taken for a camera change; None: pose 0, canonical.

    This replaces the official SMPL-fit camera (``data_processing/preprocess_img_for_inversion.py``):
    the aligned crop fixes the head's place and size; the head's turn and tilt remain. Returns
    ``{"label": [1, 25], "yaw", "elevation", "distances": {"yaw,elevation": d}}`` (every camera tried).
    """
    w_avg, _ = w_statistics(G, pose=pose)
    ws = w_avg.repeat(1, G.num_ws, 1)
    pose = None if pose is None else pose.float().to(ws.device)
    pyramid = G.synthesize_pyramid(ws)
    target = F.interpolate(target.float().to(ws.device), size=(resolution, resolution), mode="area")
    scores: dict[str, float] = {}

    def score(yaw: float, elev: float) -> float:
        key = f"{yaw:g},{elev:g}"
        if key not in scores:
            h, v = elevation_azimuth_to_hv(torch.tensor([elev]), torch.tensor([yaw]))
            label = camera_label(lookat_pose(h, v), GAN_FOCAL).to(ws.device)
            image = G.render(pyramid, ws, label, resolution=resolution, deterministic=True, pose=pose)[
                "image"
            ]
            scores[key] = float(distance(image, target).sum())
        return scores[key]

    yaw, elevation = search_camera(score, yaws_deg, elevations_deg, refine_to_deg, starts)
    h, v = elevation_azimuth_to_hv(torch.tensor([elevation]), torch.tensor([yaw]))
    return {
        "label": camera_label(lookat_pose(h, v), GAN_FOCAL).to(ws.device),
        "yaw": yaw,
        "elevation": elevation,
        "distances": scores,
    }


def camera_angles(label: Tensor) -> tuple[float, float]:
    """``(yaw, elevation)`` in threestudio degrees of a look-at label ``[1, 25]``."""
    h, v, _ = label_to_hv(label.detach().cpu())
    e, a = hv_to_elevation_azimuth(h, v)
    return float(a), float(e)

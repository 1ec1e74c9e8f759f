"""The official importance-sampling volume renderer (EG3D's ``ImportanceRenderer`` +
``MipRayMarcher2``), in pure PyTorch, with a deterministic mode.

A *field* is any callable ``points [B, N, 3] (GAN world) -> (sigma_raw [B, N, 1], features
[B, N, C])``. Rendering a batch of rays:

1. stratified depths ``linspace(ray_start, ray_end, S)`` (+ ``U[0,1)·Δ`` jitter unless
   deterministic — the official code always jitters);
2. the tri-grid crop: points with ``|x|`` or ``|z| > box/2 − crop·box`` (0.28) get σ = −1e3;
3. importance depths by inverse CDF on the coarse weights (max-pool 2 / avg-pool 2 smoothing,
   +0.01, the interior bins; deterministic u = linspace), detached;
4. coarse and fine samples merged, sorted, and composited with midpoint quadrature:
   ``σ = softplus(σ_mid − 1)``, ``α = 1 − exp(−σδ)``, ``w = α·Π(1 − α + 1e−10)``; empty space
   composites to feature 0, depth ``Σw·t / Σw`` clamped to the sampled range. The feature sum
   ``Σ_i w_i·(c_i + c_{i+1})/2`` is taken as ``Σ_s c_s·(w_{s−1} + w_s)/2`` over the samples where
   they lie (no merged, sorted copy of the features): the official sum up to float rounding
   (images within ~3e-6 of the official renderer's).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from .pyramid_trigrid import BOX_WARP

Field = Callable[[Tensor], tuple[Tensor, Tensor]]
MASK_EPS = 0.001  # official image_mask = opacity·(1 + 2·0.001) − 0.001


@dataclass
class RenderConfig:
    """Neural-renderer settings. Defaults are the official post-training stages' values."""

    ray_start: float = 2.35  # every stage after training; the pickle's training value is 2.385
    ray_end: float = 3.12
    depth_resolution: int = 48  # stratified samples per ray (96 for the official videos)
    depth_resolution_importance: int = 48  # importance samples per ray
    box_warp: float = BOX_WARP
    triplane_crop: float = 0.1  # fraction of the box cropped off in x and z
    crop_density: float = -1e3  # raw σ given to cropped points

    def replace(self, **changes) -> "RenderConfig":
        unknown = set(changes) - {f.name for f in fields(self)}
        if unknown:
            raise ValueError(
                f"unknown render option(s) {sorted(unknown)}; valid: {[f.name for f in fields(self)]}"
            )
        return RenderConfig(**{**asdict(self), **changes})


def ray_grid_uv(
    resolution: int, top: int = 0, left: int = 0, size: Optional[int] = None, device=None
) -> Tensor:
    """Normalised pixel centres ``[size², 2]`` (u = column, v = row, row-major order) of a
    ``size × size`` window at (top, left) of a ``resolution²`` image."""
    size = resolution if size is None else size
    idx = torch.arange(resolution, dtype=torch.float32, device=device) / resolution + 0.5 / resolution
    rows, cols = idx[top : top + size], idx[left : left + size]
    v, u = torch.meshgrid(rows, cols, indexing="ij")
    return torch.stack([u, v], -1).reshape(-1, 2)


def rays_from_label(
    c: Tensor, resolution: int, patch: Optional[tuple[int, int, int]] = None
) -> tuple[Tensor, Tensor]:
    """Camera labels ``[B, 25]`` → (origins, unit directions) ``[B, M, 3]`` in GAN world.

    ``patch = (top, left, size)`` renders only that window of the ``resolution²`` image
    (official ``patch_forward``), M = size²; otherwise M = resolution².
    """
    c2w = c[:, :16].reshape(-1, 4, 4)
    k = c[:, 16:25].reshape(-1, 3, 3)
    uv = ray_grid_uv(resolution, *(patch or (0, 0, None)), device=c.device).to(c.dtype)
    fx, fy, cx, cy, sk = (
        k[:, 0, 0, None],
        k[:, 1, 1, None],
        k[:, 0, 2, None],
        k[:, 1, 2, None],
        k[:, 0, 1, None],
    )
    u, v = uv[None, :, 0], uv[None, :, 1]
    x = (u - cx + cy * sk / fy - sk * v / fy) / fx
    y = (v - cy) / fy
    ones = torch.ones_like(x)
    cam = torch.stack([x, y, ones, ones], -1)  # [B, M, 4]
    world = torch.bmm(c2w, cam.transpose(1, 2)).transpose(1, 2)[..., :3]
    origins = c2w[:, None, :3, 3]
    dirs = F.normalize(world - origins, dim=-1)
    return origins.expand_as(dirs), dirs


def crop_mask(points: Tensor, cfg: RenderConfig) -> Tensor:
    """True where the official tri-grid crop removes a point (``|x|`` or ``|z|`` beyond 0.28)."""
    limit = cfg.box_warp / 2 - cfg.box_warp * cfg.triplane_crop
    return (points[..., 0::2].abs() > limit).any(-1, keepdim=True)  # x and z (a slice: no index copy)


def composite_weights(sigma_raw: Tensor, depths: Tensor) -> Tensor:
    """Per-interval weights ``[B, M, S−1, 1]`` of sorted samples (sigma_raw / depths ``[B, M, S, 1]``):
    ``σ = softplus(σ_mid − 1)``, ``α = 1 − exp(−σδ)``, ``w = α·Π(1 − α + 1e−10)``."""
    deltas = depths[:, :, 1:] - depths[:, :, :-1]
    sigma_mid = F.softplus((sigma_raw[:, :, :-1] + sigma_raw[:, :, 1:]) / 2 - 1)
    alpha = 1 - torch.exp(-sigma_mid * deltas)
    shifted = torch.cat([torch.ones_like(alpha[:, :, :1]), 1 - alpha + 1e-10], -2)
    return alpha * torch.cumprod(shifted, -2)[:, :, :-1]


def sample_weights(weights: Tensor) -> Tensor:
    """Interval weights ``[B, M, S−1, 1]`` → the weight of each sample ``[B, M, S, 1]``:
    Σ_i w_i·(c_i + c_{i+1})/2 = Σ_s c_s·(w_{s−1} + w_s)/2, so the features of the S samples are
    summed directly, without the [B, M, S−1, C] interval midpoints."""
    pad = weights.new_zeros(weights[:, :, :1].shape)
    return (torch.cat([pad, weights], -2) + torch.cat([weights, pad], -2)) / 2


def composite_depth(weights: Tensor, depths: Tensor) -> Tensor:
    """``Σw·t_mid / Σw`` ``[B, M, 1]``, empty rays at +inf, clamped to the sampled range."""
    depths_mid = (depths[:, :, :-1] + depths[:, :, 1:]) / 2
    depth = (weights * depths_mid).sum(-2) / weights.sum(-2)
    return torch.nan_to_num(depth, float("inf")).clamp(depths.min(), depths.max())


def composite(colors: Tensor, sigma_raw: Tensor, depths: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Midpoint quadrature along the sample axis (−2).

    colors ``[B, M, S, C]``, sigma_raw / depths ``[B, M, S, 1]`` →
    (features ``[B, M, C]``, depth ``[B, M, 1]``, weights ``[B, M, S−1, 1]``).
    """
    weights = composite_weights(sigma_raw, depths)
    features = (sample_weights(weights) * colors).sum(-2)
    return features, composite_depth(weights, depths), weights


def stratified_depths(batch: int, n_rays: int, cfg: RenderConfig, deterministic: bool, device=None) -> Tensor:
    """``[B, M, S, 1]`` depths on ``[ray_start, ray_end]``."""
    s = cfg.depth_resolution
    depths = torch.linspace(cfg.ray_start, cfg.ray_end, s, device=device).reshape(1, 1, s, 1)
    depths = depths.repeat(batch, n_rays, 1, 1)
    if not deterministic:
        depths = depths + torch.rand_like(depths) * (cfg.ray_end - cfg.ray_start) / (s - 1)
    return depths


def sample_pdf(bins: Tensor, weights: Tensor, n: int, deterministic: bool, eps: float = 1e-5) -> Tensor:
    """Inverse-CDF sampling: bins ``[R, K+1]``, weights ``[R, K]`` → ``[R, n]``."""
    weights = weights + eps
    pdf = weights / weights.sum(-1, keepdim=True)
    cdf = torch.cat([torch.zeros_like(pdf[:, :1]), torch.cumsum(pdf, -1)], -1)
    if deterministic:
        u = torch.linspace(0, 1, n, device=bins.device).expand(pdf.shape[0], n).contiguous()
    else:
        u = torch.rand(pdf.shape[0], n, device=bins.device)
    inds = torch.searchsorted(cdf, u, right=True)
    below = (inds - 1).clamp_min(0)
    above = inds.clamp_max(weights.shape[1])
    idx = torch.stack([below, above], -1).reshape(pdf.shape[0], 2 * n)
    cdf_g = torch.gather(cdf, 1, idx).reshape(-1, n, 2)
    bins_g = torch.gather(bins, 1, idx).reshape(-1, n, 2)
    denom = cdf_g[..., 1] - cdf_g[..., 0]
    denom = torch.where(denom < eps, torch.ones_like(denom), denom)
    return bins_g[..., 0] + (u - cdf_g[..., 0]) / denom * (bins_g[..., 1] - bins_g[..., 0])


@torch.no_grad()
def importance_depths(depths: Tensor, weights: Tensor, n: int, deterministic: bool) -> Tensor:
    """Fine depths ``[B, M, n, 1]`` from coarse depths ``[B, M, S, 1]`` and weights ``[B, M, S−1, 1]``."""
    b, m, s, _ = depths.shape
    z = depths.reshape(b * m, s)
    w = weights.reshape(b * m, 1, -1)
    w = F.avg_pool1d(F.max_pool1d(w, 2, 1, padding=1), 2, 1).squeeze(1) + 0.01
    z_mid = 0.5 * (z[:, :-1] + z[:, 1:])
    return sample_pdf(z_mid, w[:, 1:-1], n, deterministic).reshape(b, m, n, 1)


# float32 softplus(x) is exactly 0 for x below ~−104; an interval between a cropped point (raw σ =
# crop_density, −1e3) and a kept one of raw σ below −crop_density − 300 (700) has (σ_a + σ_b)/2 − 1
# below −151, so its weight is exactly 0.
_CROP_SKIP_MARGIN = 300.0


def _evaluate_uncropped(
    field: Field, points: Tensor, cropped: Tensor, crop_density: float, unsafe: Optional[list] = None
) -> tuple[Tensor, Tensor]:
    """``field(points)``, evaluated only at the points the tri-grid crop keeps.

    A cropped point gets σ = ``crop_density`` (−1e3), so every interval that touches it has
    α = 1 − exp(−softplus((σ_a + σ_b)/2 − 1)·δ) = 0 exactly in float32 (as long as the other end's
    raw σ is below ~795): its features are multiplied by weight 0 and receive gradient 0. Their
    value cannot change the image, the depth, the weights or any gradient, so they are returned as
    0 without sampling the pyramid (a quarter of the coarse samples for a frontal camera).

    One host read per call: the largest kept count, the size of the compacted batch. Whether a kept
    point has σ ≥ 700 (then a cropped neighbour's features could count) stays on the device: a flag
    appended to ``unsafe``, which :func:`render_rays` reads once per render and then renders every
    point, as the official renderer does. On ``meta`` (shapes only, no count to read) the path runs
    with ``k = n − 1``, so that every operation of it is device-checked.
    """
    b, n, _ = points.shape
    limit = -crop_density - _CROP_SKIP_MARGIN
    if limit <= 0 or unsafe is None:
        return field(points)
    keep = ~cropped[..., 0]  # [B, N]
    counts = keep.sum(1)
    k = n - 1 if points.device.type == "meta" else int(counts.max())  # the pass's one host read
    if k == n:
        return field(points)
    if k == 0:
        sigma, feats = field(points[:, :1])
        return (sigma.new_full((b, n, 1), crop_density), feats.new_zeros((b, n, feats.shape[-1])))
    # kept points first, in their order (stable), padded per batch element with cropped points
    order = torch.sort(keep.to(torch.uint8), dim=1, descending=True, stable=True).indices[:, :k]
    sigma_k, feats_k = field(torch.gather(points, 1, order.unsqueeze(-1).expand(-1, -1, 3)))
    valid = (torch.arange(k, device=points.device) < counts[:, None]).unsqueeze(-1)  # [B, K, 1]
    unsafe.append((sigma_k.detach().masked_fill(~valid, float("-inf")) >= limit).any())
    sigma = sigma_k.new_full((b, n, 1), crop_density).scatter(
        1, order.unsqueeze(-1), torch.where(valid, sigma_k, torch.full_like(sigma_k, crop_density))
    )
    feats = feats_k.new_zeros((b, n, feats_k.shape[-1])).scatter(
        1, order.unsqueeze(-1).expand(-1, -1, feats_k.shape[-1]), feats_k * valid
    )
    return sigma, feats


def render_rays(
    field: Field,
    origins: Tensor,
    dirs: Tensor,
    cfg: RenderConfig = RenderConfig(),
    deterministic: bool = False,
    chunk: Optional[int] = None,
    warp: Optional[Callable[[Tensor], Tensor]] = None,
) -> dict[str, Tensor]:
    """Volume-render rays ``[B, M, 3]`` through ``field``, at most ``chunk`` rays per pass.

    ``warp`` (points ``[B, N, 3]`` → points) moves every sample point before the field and the crop
    see it: the SMPL deformation of a posed render (:mod:`gan_prior.deformation`); None = canonical.

    Returns ``features [B, M, C]``, ``depth [B, M, 1]``, ``opacity [B, M, 1]`` (Σ weights),
    ``weights [B, M, S−1, 1]`` (per interval, for regularisers) and ``depths [B, M, S, 1]``.

    Host reads (GPU syncs): one per pass and chunk (the crop skip's kept count) and one per call
    (:func:`_evaluate_uncropped`'s safety flag); no host-made tensor is copied to the device.
    """
    unsafe: list = []
    out = _render_chunks(field, origins, dirs, cfg, deterministic, chunk, unsafe, warp)
    if unsafe and origins.device.type != "meta" and bool(torch.stack(unsafe).any()):
        out = _render_chunks(field, origins, dirs, cfg, deterministic, chunk, None, warp)  # every point
    return out


def _render_chunks(
    field: Field,
    origins: Tensor,
    dirs: Tensor,
    cfg: RenderConfig,
    deterministic: bool,
    chunk: Optional[int],
    unsafe: Optional[list],
    warp: Optional[Callable[[Tensor], Tensor]],
) -> dict[str, Tensor]:
    m = origins.shape[1]
    if chunk is not None and chunk < m:
        parts = [
            _render_rays(
                field, origins[:, i : i + chunk], dirs[:, i : i + chunk], cfg, deterministic, unsafe, warp
            )
            for i in range(0, m, chunk)
        ]
        return {k: torch.cat([p[k] for p in parts], 1) for k in parts[0]}
    return _render_rays(field, origins, dirs, cfg, deterministic, unsafe, warp)


def _render_rays(
    field: Field,
    origins: Tensor,
    dirs: Tensor,
    cfg: RenderConfig,
    deterministic: bool,
    unsafe: Optional[list],
    warp: Optional[Callable[[Tensor], Tensor]],
) -> dict[str, Tensor]:
    b, m, _ = origins.shape

    def evaluate(depths: Tensor) -> tuple[Tensor, Tensor]:
        s = depths.shape[2]
        points = (origins.unsqueeze(-2) + depths * dirs.unsqueeze(-2)).reshape(b, m * s, 3)
        if warp is not None:  # --- deformation hook (official: before run_model and the crop) ---
            points = warp(points)
        cropped = crop_mask(points, cfg)
        sigma, feats = _evaluate_uncropped(field, points, cropped, cfg.crop_density, unsafe)
        sigma = torch.where(cropped, torch.full_like(sigma, cfg.crop_density), sigma)
        return sigma.reshape(b, m, s, 1), feats.reshape(b, m, s, -1)

    depths = stratified_depths(b, m, cfg, deterministic, origins.device).to(origins.dtype)
    sigma, feats = evaluate(depths)
    if cfg.depth_resolution_importance <= 0:
        features, depth, weights = composite(feats, sigma, depths)
    else:
        with torch.no_grad():  # the coarse weights only place the importance samples
            fine = importance_depths(
                depths, composite_weights(sigma, depths), cfg.depth_resolution_importance, deterministic
            )
        sigma_f, feats_f = evaluate(fine)
        depths = torch.cat([depths, fine], -2)
        order = torch.sort(depths, dim=-2).indices
        depths = torch.gather(depths, -2, order)
        sigma = torch.gather(torch.cat([sigma, sigma_f], -2), -2, order)
        weights = composite_weights(sigma, depths)
        # the features are summed where they are (coarse, fine), with their sorted samples' weights
        # scattered back: no merged and sorted [B, M, S, C] copy of them
        per_sample = torch.zeros_like(depths).scatter(-2, order, sample_weights(weights))
        s = feats.shape[2]
        features = (per_sample[:, :, :s] * feats).sum(-2) + (per_sample[:, :, s:] * feats_f).sum(-2)
        depth = composite_depth(weights, depths)
    return {
        "features": features,
        "depth": depth,
        "opacity": weights.sum(-2),
        "weights": weights,
        "depths": depths,
    }


def opacity_to_mask(opacity: Tensor) -> Tensor:
    """The official ``image_mask``: ``opacity·(1 + 2·MASK_EPS) − MASK_EPS``."""
    return opacity * (1 + 2 * MASK_EPS) - MASK_EPS


def render_view(
    field: Field,
    c: Tensor,
    resolution: int,
    cfg: RenderConfig = RenderConfig(),
    deterministic: bool = False,
    patch: Optional[tuple[int, int, int]] = None,
    chunk: Optional[int] = None,
    background: Optional[Callable[[], Tensor]] = None,
    warp: Optional[Callable[[Tensor], Tensor]] = None,
) -> dict[str, Tensor]:
    """The view of cameras ``c`` ``[B, 25]`` as feature images: the one render path of
    ``PortraitGAN.render`` and the threestudio renderer's ``render_labels`` (official
    ``ImportanceRenderer`` + the generator's background compositing; canonical, or posed by
    ``warp`` as :func:`render_rays`).

    ``background()`` gives the full ``resolution²`` background feature image ``[B|1, C, R, R]``
    (called after the render); the features are composited over it in feature space, as the
    official code (then ToRGB, by the caller). ``patch = (top, left, size)`` renders that window
    (the background cropped to it; the official code resizes it instead, but never renders patches
    with a background). Returns ``features`` ``[B, C, H, W]`` (composited), ``depth``, ``opacity``
    and ``mask`` (:func:`opacity_to_mask`) ``[B, 1, H, W]``.
    """
    origins, dirs = rays_from_label(c.float(), resolution, patch)
    b, side = origins.shape[0], patch[2] if patch else resolution
    out = render_rays(field, origins, dirs, cfg, deterministic, chunk, warp)

    def image(x: Tensor) -> Tensor:
        return x.transpose(1, 2).reshape(b, x.shape[-1], side, side)

    features, depth, opacity = image(out["features"]), image(out["depth"]), image(out["opacity"])
    if background is not None:
        bcg = background()
        if patch:
            top, left, size = patch
            bcg = bcg[:, :, top : top + size, left : left + size]
        features = features + (1 - opacity) * bcg.to(features)
    return {"features": features, "depth": depth, "opacity": opacity, "mask": opacity_to_mask(opacity)}

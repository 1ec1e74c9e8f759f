"""A small triangle rasterizer in torch (CPU or CUDA, no nvdiffrast): which triangle covers each
pixel centre, and where (barycentrics), with a depth test for camera views.

Used twice by the mesh export: in UV space to bake textures (every texel's triangle and 3-D point)
and from the official cameras to render the exported mesh for its fidelity check. Pixel ``(row i,
column j)`` has its centre at ``(x, y) = (j + 0.5, i + 0.5)``, as the neural renderer's rays
(:func:`gan_prior.renderer.ray_grid_uv`), so a mesh render and a neural render of one camera label
see the same points.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

PAIRS_PER_PASS = 1 << 22  # (triangle, pixel) candidates tested per pass: bounds the memory


def rasterize(
    xy: Tensor, faces: Tensor, height: int, width: int, inv_depth: Optional[Tensor] = None
) -> tuple[Tensor, Tensor]:
    """Rasterize triangles given in pixel coordinates.

    ``xy`` ``[V, 2]`` (x = column, y = row, in pixels), ``faces`` ``[F, 3]``; ``inv_depth`` ``[V]``
    (1 / camera depth, > 0) turns on the depth test (nearest wins) and perspective-correct
    barycentrics. Returns ``face`` ``[H, W]`` (long, −1 where no triangle covers the pixel centre)
    and ``bary`` ``[H, W, 3]`` (weights of the face's three vertices, 0 where empty). Where several
    triangles cover a pixel at the same depth (shared edges; UV charts never overlap), the highest
    face index wins, so the result does not depend on the order of the passes.
    """
    device = xy.device
    xy = xy.float()
    tri = xy[faces]  # [F, 3, 2]
    lo = torch.ceil(tri.amin(1) - 0.5).clamp_min(0).long()  # first pixel index whose centre can be inside
    hi = torch.floor(tri.amax(1) - 0.5).long()
    hi[:, 0].clamp_(max=width - 1)
    hi[:, 1].clamp_(max=height - 1)
    span = (hi - lo + 1).clamp_min(0)  # [F, 2]
    count = span[:, 0] * span[:, 1]
    e1, e2 = tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]
    area = e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0]
    drawable = area.abs() > 1e-12
    if inv_depth is not None:  # a triangle reaching behind the camera is not drawn
        drawable &= (inv_depth[faces] > 0).all(-1)
    count = torch.where(drawable, count, torch.zeros_like(count))
    n_pixels = height * width
    best = torch.full((n_pixels,), -1.0 if inv_depth is None else 0.0, device=device)
    face_of = torch.full((n_pixels,), -1, dtype=torch.long, device=device)
    hits = []  # per pass: (pixel, face, key, barycentrics)
    starts = torch.cumsum(count, 0) - count
    total = int(count.sum())
    # passes of whole triangles, each at most PAIRS_PER_PASS candidates (a larger triangle alone)
    bounds = torch.searchsorted(starts, torch.arange(0, total, PAIRS_PER_PASS, device=device), right=True) - 1
    bounds = sorted(set(bounds.clamp_min(0).tolist())) + [len(faces)]
    for a, b in zip(bounds[:-1], bounds[1:]):
        c = count[a:b]
        n = int(c.sum())
        if n == 0:
            continue
        f = torch.repeat_interleave(torch.arange(a, b, device=device), c)
        k = torch.arange(n, device=device) - torch.repeat_interleave(starts[a:b] - starts[a], c)
        px = lo[f, 0] + k % span[f, 0]
        py = lo[f, 1] + k // span[f, 0]
        p = torch.stack([px, py], -1).float() + 0.5
        t = tri[f]
        w1 = ((p[:, 0] - t[:, 0, 0]) * e2[f, 1] - (p[:, 1] - t[:, 0, 1]) * e2[f, 0]) / area[f]
        w2 = (e1[f, 0] * (p[:, 1] - t[:, 0, 1]) - e1[f, 1] * (p[:, 0] - t[:, 0, 0])) / area[f]
        bary = torch.stack([1 - w1 - w2, w1, w2], -1)
        inside = (bary >= -1e-6).all(-1)
        f, bary = f[inside], bary[inside]
        pixel = py[inside] * width + px[inside]
        if inv_depth is None:
            key = f.float()
        else:
            wz = bary * inv_depth[faces[f]]  # 1/z is linear in screen space
            key = wz.sum(-1)
            bary = wz / key[:, None]  # perspective-correct
        best.scatter_reduce_(0, pixel, key, "amax")
        hits.append((pixel, f, key, bary))
    bary_of = torch.zeros(n_pixels, 3, device=device)
    for pixel, f, key, bary in hits:  # the nearest (or highest-index) candidate of each pixel
        win = key == best[pixel]
        face_of.scatter_reduce_(0, pixel[win], f[win], "amax")
    for pixel, f, key, bary in hits:
        win = (key == best[pixel]) & (f == face_of[pixel])
        bary_of[pixel[win]] = bary[win]
    return face_of.reshape(height, width), bary_of.reshape(height, width, 3)


def interpolate(attr: Tensor, faces: Tensor, face: Tensor, bary: Tensor) -> Tensor:
    """Per-vertex ``attr`` ``[V, C]`` at rasterized pixels (``face`` ``[*S]``, ``bary`` ``[*S, 3]``
    from :func:`rasterize`) → ``[*S, C]`` (0 where ``face`` is −1)."""
    idx = faces[face.clamp_min(0)]  # [*S, 3]
    out = (attr[idx] * bary.unsqueeze(-1)).sum(-2)
    return out * (face >= 0).unsqueeze(-1)


def project(points: Tensor, label: Tensor, resolution: int) -> tuple[Tensor, Tensor]:
    """GAN-world ``points`` ``[V, 3]`` seen by one camera ``label`` ``[25]`` (OpenCV cam2world +
    normalised intrinsics) → pixel coordinates ``[V, 2]`` of a ``resolution²`` image and the camera
    depth ``[V]`` (along the optical axis), the inverse of :func:`gan_prior.renderer.rays_from_label`."""
    c2w = label[:16].reshape(4, 4).to(points)
    k = label[16:25].reshape(3, 3).to(points)
    cam = (points - c2w[:3, 3]) @ c2w[:3, :3]  # world → camera: R^T (p − t)
    z = cam[:, 2]
    x, y = cam[:, 0] / z, cam[:, 1] / z
    u = k[0, 0] * x + k[0, 1] * y + k[0, 2]
    v = k[1, 1] * y + k[1, 2]
    return torch.stack([u, v], -1) * resolution, z


def sample_texture(texture: Tensor, uv: Tensor) -> Tensor:
    """Bilinear lookup of ``texture`` ``[H, W, C]`` at ``uv`` ``[*S, 2]`` (glTF convention: u to the
    right, v down, both in [0, 1] over the whole image; edges clamped) → ``[*S, C]``."""
    shape = uv.shape[:-1]
    grid = (uv.reshape(1, 1, -1, 2) * 2 - 1).to(texture)
    out = F.grid_sample(
        texture.permute(2, 0, 1)[None], grid, mode="bilinear", padding_mode="border", align_corners=False
    )
    return out[0, :, 0].T.reshape(*shape, -1)

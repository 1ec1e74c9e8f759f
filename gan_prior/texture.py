"""Textures of an exported mesh: a UV atlas (xatlas), colours baked from the neural field, and
chart padding.

The colour of a surface point is what the neural renderer shows there, not the raw feature at the
isosurface (which lies inside the soft density: darker and blurrier). It is found with the
renderer itself (:func:`gan_prior.renderer.render_rays`: the same quadrature, crop and importance
sampling): a short ray along the inward normal, from ``length`` outside the point to ``length``
inside, composited; the colour is the composited feature over the opacity (ToRGB is affine, so
this is the composited colour), and the ray's depth says how far along the normal the visible
surface is. The vertices run the ray; each texel takes their depth (interpolated) and reads the
field there, one lookup a texel. Then :func:`correct_with_views` adds the residuals of neural
renders projected back onto the texels (or vertices) each view sees. ``bench/bench_export.py
--compare-bakes`` measures the raw isosurface feature, the surface ray alone, the views alone and
both by the fidelity of :mod:`gan_prior.mesh_fidelity`: both together are kept.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .rasterize import project, rasterize
from .renderer import RenderConfig, render_rays

Field = Callable[[Tensor], tuple[Tensor, Tensor]]  # points [1, N, 3] → (σ_raw [1, N, 1], features [1, N, C])
ColourFn = Callable[[Tensor], Tensor]  # features [N, C] → RGB in [0, 1] (not clamped)
MIN_OPACITY = 0.05  # below it a ray found no surface: the point's own colour is used


class UnwrapError(RuntimeError):
    """xatlas could not make an atlas of this mesh."""


@dataclass
class Atlas:
    vertex_map: np.ndarray  # [Vt] index of each atlas vertex in the mesh (seams split vertices)
    faces: np.ndarray  # [F, 3] faces over the atlas vertices, same order as the mesh's
    uv: np.ndarray  # [Vt, 2] glTF convention: u right, v down, in [0, 1]
    charts: int


def unwrap(vertices: np.ndarray, faces: np.ndarray, size: int, padding: int) -> Atlas:
    """A UV atlas of one ``size²`` page with ``padding`` texels between charts (xatlas)."""
    import xatlas

    if not np.isfinite(vertices).all():  # xatlas loops forever on an infinite coordinate
        raise UnwrapError("non-finite vertex coordinates")
    atlas = xatlas.Atlas()
    try:
        atlas.add_mesh(np.ascontiguousarray(vertices, np.float32), np.ascontiguousarray(faces, np.uint32))
        chart_options = xatlas.ChartOptions()
        pack = xatlas.PackOptions()
        pack.resolution, pack.padding, pack.bilinear = size, padding, True
        atlas.generate(chart_options, pack)
        if atlas.atlas_count > 1:  # the charts did not fit one page at xatlas's estimate: shrink them
            pack.resolution = 0
            pack.texels_per_unit = atlas.texels_per_unit * 0.9 / np.sqrt(atlas.atlas_count)
            atlas = xatlas.Atlas()
            atlas.add_mesh(np.ascontiguousarray(vertices, np.float32), np.ascontiguousarray(faces, np.uint32))
            atlas.generate(chart_options, pack)
        vertex_map, uv_faces, uv = atlas[0]
    except (RuntimeError, ValueError, IndexError) as e:
        raise UnwrapError(str(e) or type(e).__name__) from None
    if atlas.atlas_count != 1 or len(uv_faces) != len(faces) or not np.isfinite(uv).all():
        raise UnwrapError(f"{atlas.atlas_count} atlas pages, {len(uv_faces)} of {len(faces)} faces")
    return Atlas(
        vertex_map=vertex_map.astype(np.int64),
        faces=uv_faces.astype(np.int64),
        uv=uv.astype(np.float32),
        charts=int(atlas.chart_count),
    )


@dataclass
class BakeConfig:
    length: float = 0.02  # the ray runs from `length` outside the surface to `length` inside (world units)
    samples: tuple[int, int] = (24, 24)  # stratified + importance samples of that ray
    chunk: int = 1 << 18  # field points per call (bounds the memory)


def normal_ray(
    field: Field,
    colour: ColourFn,
    points: Tensor,
    normals: Tensor,
    cfg: BakeConfig,
    render: RenderConfig = RenderConfig(),
) -> tuple[Tensor, Tensor, Tensor]:
    """What the neural renderer shows at surface ``points`` ``[N, 3]`` (unit outward ``normals``):
    (RGB ``[N, 3]``, offset ``[N]`` of the visible surface along the normal, opacity ``[N]``)."""
    rays = render.replace(
        ray_start=0.0,
        ray_end=2 * cfg.length,
        depth_resolution=cfg.samples[0],
        depth_resolution_importance=cfg.samples[1],
    )
    per_ray = max(1, cfg.chunk // max(1, sum(cfg.samples)))
    origins = (points + cfg.length * normals)[None]
    out = render_rays(field, origins, -normals[None], rays, deterministic=True, chunk=per_ray)
    opacity = out["opacity"][0, :, 0]
    found = opacity > MIN_OPACITY
    rgb = colour(out["features"][0] / opacity.clamp_min(MIN_OPACITY)[:, None])
    offset = torch.where(found, cfg.length - out["depth"][0, :, 0], torch.zeros_like(opacity))
    if not bool(found.all()):
        rgb[~found] = point_colours(field, colour, points[~found], cfg.chunk)
    return rgb, offset, opacity


def point_colours(field: Field, colour: ColourFn, points: Tensor, chunk: int) -> Tensor:
    """The colour of the field's feature at ``points`` ``[N, 3]`` → ``[N, 3]``."""
    out = [colour(field(points[i : i + chunk][None])[1][0]) for i in range(0, len(points), chunk)]
    return torch.cat(out) if out else points.new_zeros(0, 3)


@dataclass
class Texels:
    """The covered texels of an atlas and the surface point of each (GAN world)."""

    covered: Tensor  # [S, S] bool
    points: Tensor  # [T, 3] on the mesh, in the row-major order of the covered texels
    normals: Tensor  # [T, 3] unit, interpolated from the vertices
    corners: Tensor  # [T, 3] the mesh vertices of each texel's triangle
    weights: Tensor  # [T, 3] barycentric weights of those vertices


def texels(vertices: Tensor, normals: Tensor, atlas: Atlas, size: int) -> Texels:
    """Rasterize ``atlas`` at ``size²`` (pixel centres) over the mesh ``vertices``/``normals`` ``[V, 3]``."""
    device = vertices.device
    faces = torch.from_numpy(atlas.faces).to(device)
    face, bary = rasterize(torch.from_numpy(atlas.uv).to(device) * size, faces, size, size)
    covered = face >= 0
    corners = torch.from_numpy(atlas.vertex_map).to(device)[faces[face[covered]]]
    w = bary[covered]
    points = (vertices[corners] * w[..., None]).sum(1)
    return Texels(covered, points, F.normalize((normals[corners] * w[..., None]).sum(1), dim=-1), corners, w)


def bake(
    field: Field,
    colour: ColourFn,
    tx: Texels,
    cfg: BakeConfig,
    vertex_offsets: Tensor,
    progress: Callable = lambda it, **kw: it,
) -> Tensor:
    """The colour ``[T, 3]`` of each texel: the field at its visible surface, ``vertex_offsets``
    ``[V]`` (from :func:`normal_ray` at the vertices) interpolated along its normal."""
    colours = []
    for i in progress(range(0, len(tx.points), cfg.chunk), desc="bake", unit="chunk"):
        offset = (vertex_offsets[tx.corners[i : i + cfg.chunk]] * tx.weights[i : i + cfg.chunk]).sum(1)
        p = tx.points[i : i + cfg.chunk] + offset[:, None] * tx.normals[i : i + cfg.chunk]
        colours.append(point_colours(field, colour, p, cfg.chunk))
    return torch.cat(colours).clamp(0, 1) if colours else tx.points.new_zeros(0, 3)


def texture_image(tx: Texels, colours: Tensor, padding: int) -> Tensor:
    """The padded texture ``[S, S, 3]`` of texel ``colours`` ``[T, 3]`` (:func:`fill_texture`)."""
    image = colours.new_zeros(*tx.covered.shape, 3)
    image[tx.covered] = colours
    return fill_texture(image, tx.covered, padding)


def correct_with_views(
    colours: Tensor,
    points: Tensor,
    normals: Tensor,
    draw: Callable[[Tensor], tuple[Tensor, Tensor, Tensor]],
    views: list[dict[str, Tensor]],
) -> Tensor:
    """``colours`` ``[T, 3]`` of surface ``points`` (texels or vertices; unit ``normals``) plus the
    render residuals of ``views`` projected back onto the points each view sees (depth test
    against the mesh, weight cos² of the view angle). ``draw(label)`` draws the mesh with these
    colours (image ``[R, R, 3]``, silhouette, depth); each view holds ``label`` ``[25]`` and the
    neural ``image`` ``[R, R, 3]`` in [0, 1]."""
    total = torch.zeros_like(colours)
    weight = colours.new_zeros(len(colours))
    for view in views:
        label, target = view["label"], view["image"]
        resolution = target.shape[0]
        image, silhouette, depth = draw(label)
        residual = torch.where(silhouette[..., None], target - image, torch.zeros_like(image))
        xy, z = project(points, label, resolution)
        col, row = xy[:, 0].floor().long(), xy[:, 1].floor().long()
        inside = (col >= 0) & (col < resolution) & (row >= 0) & (row < resolution)
        col, row = col.clamp(0, resolution - 1), row.clamp(0, resolution - 1)
        tolerance = 3.0 * z / (float(label[16]) * resolution)  # three pixel footprints at that depth
        visible = inside & silhouette[row, col] & (z <= depth[row, col] + tolerance)
        to_camera = F.normalize(label[:16].reshape(4, 4)[:3, 3].to(points) - points, dim=-1)
        w = (normals * to_camera).sum(-1).clamp_min(0).square() * visible
        grid = (xy / resolution * 2 - 1).reshape(1, 1, -1, 2)
        r = F.grid_sample(residual.permute(2, 0, 1)[None], grid, align_corners=False, padding_mode="border")
        total += w[:, None] * r[0, :, 0].T
        weight += w
    seen = weight > 0
    out = colours.clone()
    out[seen] += total[seen] / weight[seen, None]
    return out.clamp(0, 1)


def fill_texture(texture: Tensor, covered: Tensor, dilate: int) -> Tensor:
    """Pad the charts so that bilinear filtering and mip-mapping show no seams: ``dilate`` rings of
    texels around each chart take the mean of their covered neighbours, then every other empty
    texel takes the colour of the charts around it from coarser levels (push-pull)."""
    img = texture.permute(2, 0, 1)[None].clone()  # [1, 3, H, W]
    mask = covered[None, None].float()
    kernel = torch.ones(1, 1, 3, 3, device=img.device)
    for _ in range(dilate):
        count = F.conv2d(mask, kernel, padding=1)
        total = F.conv2d(img * mask, kernel.expand(3, 1, 3, 3), padding=1, groups=3)
        grow = (count > 0) & (mask == 0)
        img = torch.where(grow, total / count.clamp_min(1), img)
        mask = torch.maximum(mask, grow.float())
    return _push_pull(img, mask)[0].permute(1, 2, 0)


def _push_pull(img: Tensor, mask: Tensor) -> Tensor:
    """Fill ``img`` where ``mask`` is 0 from the mask-weighted average of coarser levels."""
    if min(img.shape[-2:]) <= 1 or bool(mask.all()):
        return img
    small = F.avg_pool2d(img * mask, 2, ceil_mode=True)
    weight = F.avg_pool2d(mask, 2, ceil_mode=True)
    coarse = _push_pull(small / weight.clamp_min(1e-8), (weight > 0).float())
    up = F.interpolate(coarse, scale_factor=2, mode="bilinear", align_corners=False)[
        ..., : img.shape[-2], : img.shape[-1]
    ]
    return torch.where(mask > 0, img, up)


def to_uint8(texture: Tensor) -> np.ndarray:
    """``[H, W, 3]`` in [0, 1] → uint8 image (rounded)."""
    return (texture.clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()

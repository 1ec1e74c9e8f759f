"""How closely an exported mesh matches the neural renders: the mesh drawn by
:mod:`gan_prior.rasterize` from official camera labels (same intrinsics and pixel centres as the
renderer's rays, unlit colours) against the neural render of each label.

Per view: PSNR and SSIM (scikit-image) over the pixels inside the neural mask, the mesh's pixels
outside its own silhouette showing the render's background there; and the silhouette IoU of the
mesh with the neural mask. Reported as the mean over views. The neural mask is the pixels at least
half as opaque as the most opaque pixel of all views: opacity ≥ 0.5 for a trained generator, whose
renders are opaque inside the portrait, and still the portrait's silhouette for random generators
(tiny models, benchmarks), whose renders are a semi-transparent fog (opacity ≤ 0.3).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
from torch import Tensor

from .rasterize import interpolate, project, rasterize, sample_texture

MASK_FRACTION = 0.5  # a pixel is inside the neural silhouette at this fraction of the peak opacity


@dataclass
class DrawableMesh:
    """A mesh as drawn: ``vertices`` ``[V, 3]`` (GAN world), ``faces`` ``[F, 3]``, and either
    ``colours`` ``[V, 3]`` or ``uv`` ``[V, 2]`` (glTF convention) with ``texture`` ``[H, W, 3]``
    (all in [0, 1])."""

    vertices: Tensor
    faces: Tensor
    colours: Optional[Tensor] = None
    uv: Optional[Tensor] = None
    texture: Optional[Tensor] = None


def draw(
    mesh: DrawableMesh, label: Tensor, resolution: int, background: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """The mesh seen by ``label`` ``[25]``: image ``[R, R, 3]`` over ``background`` ``[R, R, 3]``,
    the silhouette ``[R, R]`` (bool) and the camera depth ``[R, R]`` (+inf off the mesh)."""
    xy, depth = project(mesh.vertices, label, resolution)
    inv_depth = 1.0 / depth
    face, bary = rasterize(xy, mesh.faces, resolution, resolution, inv_depth=inv_depth)
    covered = face >= 0
    if mesh.texture is not None:
        uv = interpolate(mesh.uv, mesh.faces, face, bary)
        rgb = sample_texture(mesh.texture, uv)
    else:
        rgb = interpolate(mesh.colours, mesh.faces, face, bary)
    # perspective-correct barycentrics interpolate depth itself; 1/z is linear in them only per pixel
    z = interpolate(depth[:, None], mesh.faces, face, bary)[..., 0]
    z = torch.where(covered, z, torch.full_like(z, float("inf")))
    return torch.where(covered[..., None], rgb.clamp(0, 1), background), covered, z


def compare(neural: np.ndarray, mask: np.ndarray, image: np.ndarray, silhouette: np.ndarray) -> dict:
    """PSNR (dB) and SSIM inside ``mask`` and the silhouette IoU, for ``[H, W, 3]`` images in [0, 1]."""
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    union = np.logical_or(mask, silhouette).sum()
    iou = float(np.logical_and(mask, silhouette).sum() / union) if union else 1.0
    if not mask.any():
        return {"psnr": None, "ssim": None, "iou": iou}
    psnr = peak_signal_noise_ratio(neural[mask], image[mask], data_range=1.0)
    _, ssim_map = structural_similarity(neural, image, data_range=1.0, channel_axis=-1, full=True)
    return {"psnr": float(min(psnr, 100.0)), "ssim": float(ssim_map[mask].mean()), "iou": iou}


def fidelity(
    meshes: dict[str, DrawableMesh],
    neural: list[dict[str, Tensor]],
    labels: Tensor,
    resolution: int,
) -> dict:
    """``{name: {"psnr", "ssim", "iou"} (means over views), "views": [...]}`` for each mesh, and the
    ``mask_opacity`` used, against the neural renders ``neural[i]`` (``image`` ``[R, R, 3]`` in [0,
    1], ``opacity`` ``[R, R]``, ``background`` ``[R, R, 3]``) of ``labels[i]``."""
    level = MASK_FRACTION * max(float(ref["opacity"].max()) for ref in neural)
    result = {"mask_opacity": level}
    for name, mesh in meshes.items():
        views = []
        for label, ref in zip(labels, neural):
            image, silhouette, _ = draw(mesh, label, resolution, ref["background"])
            views.append(
                compare(
                    ref["image"].cpu().numpy().astype(np.float64),
                    (ref["opacity"] >= level).cpu().numpy()
                    if level > 0
                    else np.zeros(ref["opacity"].shape, bool),
                    image.cpu().numpy().astype(np.float64),
                    silhouette.cpu().numpy(),
                )
            )
        means = {
            k: float(np.mean([v[k] for v in views if v[k] is not None]))
            if any(v[k] is not None for v in views)
            else None
            for k in ("psnr", "ssim", "iou")
        }
        result[name] = {**means, "views": views}
    return result

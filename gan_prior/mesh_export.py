"""The textured mesh of a portrait, from marching cubes to what the files hold.

Steps (each timed; ``bench/bench_export.py`` measures them at full size):

1. **clean-up** (:func:`gan_prior.mesh.clean_mesh`): the largest component, outward normals, the
   face budget by quadric decimation;
2. **unwrap** (:func:`gan_prior.texture.unwrap`, xatlas); a mesh xatlas cannot unwrap keeps
   vertex colours, with one warning;
3. **views**: neural renders from the 21 refinement cameras (official intrinsics, deterministic,
   the ToRGB-bias background): they correct the bake and measure its fidelity;
4. **bake** (:mod:`gan_prior.texture`): each texel's colour is what the renderer shows at its
   surface point (a short ray along the normal), then the residuals of the views are projected
   back onto the texels each view sees; the charts are padded. The vertex colours (``.ply``, and
   the comparison) are made the same way at the vertices;
5. **fidelity** (:mod:`gan_prior.mesh_fidelity`): the textured and the vertex-coloured mesh drawn
   from the same cameras against the neural renders: PSNR / SSIM inside the neural mask, IoU; and,
   for reference, what the export wrote before textures: the whole marching-cubes mesh coloured by
   the raw feature at its vertices (``isosurface_vertex_colours``).

``bench/bench_export.py --compare-bakes`` measured the alternatives by that fidelity (README's
export section): the raw isosurface feature, the surface ray alone, the views alone, and the ray
corrected by the views — the last one is kept.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, ContextManager, Optional

import numpy as np
import torch
from torch import Tensor

from .checks import RENDER_INT_BOUNDS
from .mesh import MIN_FACE_BUDGET, clean_mesh, vertex_normals
from .mesh_fidelity import DrawableMesh, draw, fidelity
from .pyramid_trigrid import BOX_WARP
from .refinement import refinement_labels
from .renderer import RenderConfig, render_view
from .texture import (
    BakeConfig,
    ColourFn,
    Field,
    UnwrapError,
    bake,
    correct_with_views,
    normal_ray,
    point_colours,
    texels,
    texture_image,
    to_uint8,
    unwrap,
)

MAX_TEXTURE_SIZE = 8192


@dataclass
class MeshExportConfig:
    """``system.exporter`` options of the mesh (``portrait3d-exporter``)."""

    texture: bool = True  # bake a UV texture; false: vertex colours only
    texture_size: int = 2048  # a power of two, at most 8192
    padding: int = 4  # texels between charts (xatlas), filled by dilation
    max_faces: Optional[int] = 50000  # the face budget (quadric decimation); null or 0: keep all
    views: bool = True  # render the 21 refinement views: they correct the bake and measure fidelity
    view_resolution: Optional[int] = None  # null: 512 (the refinement's) on a GPU, 128 on a CPU
    view_samples: tuple[int, int] = (48, 48)  # stratified + importance samples of those renders
    view_seed: int = 0  # system.refine.view_seed: the same 21 cameras as the refinement
    ray_length: float = 0.02  # the surface ray: from this far outside to this far inside (world units)
    ray_samples: tuple[int, int] = (24, 24)
    chunk: int = 1 << 18  # field points per call (bounds the memory, GPU included)


def check_config(cfg: MeshExportConfig, prefix: str = "system.exporter") -> None:
    """One line per bad option, before any work."""
    size = cfg.texture_size
    if not isinstance(size, int) or size < 16 or size > MAX_TEXTURE_SIZE or size & (size - 1):
        raise ValueError(
            f"{prefix}.texture_size={size} must be a power of two from 16 to {MAX_TEXTURE_SIZE} "
            "(e.g. 1024, 2048, 4096)"
        )
    if cfg.max_faces is not None and cfg.max_faces != 0 and cfg.max_faces < MIN_FACE_BUDGET:
        raise ValueError(
            f"{prefix}.max_faces={cfg.max_faces} is below {MIN_FACE_BUDGET}: a portrait needs more faces; "
            "use e.g. 50000, or null to keep every face"
        )
    if not 0 <= cfg.padding <= size // 8:
        raise ValueError(
            f"{prefix}.padding={cfg.padding} must be in 0..{size // 8} texels (texture_size / 8)"
        )
    if cfg.view_resolution is not None and not 16 <= cfg.view_resolution <= 2048:
        raise ValueError(f"{prefix}.view_resolution={cfg.view_resolution} must be in 16..2048 (or null)")
    high, high_importance = (
        RENDER_INT_BOUNDS[k][1] for k in ("depth_resolution", "depth_resolution_importance")
    )
    for name in ("view_samples", "ray_samples"):  # bounded as the renderer is: 1e8 samples ran out of memory
        samples = getattr(cfg, name)
        if len(samples) != 2 or not (2 <= samples[0] <= high and 0 <= samples[1] <= high_importance):
            raise ValueError(
                f"{prefix}.{name}={list(samples)} must be [stratified 2..{high}, importance 0..{high_importance}]"
            )
    if not 0 < cfg.ray_length <= BOX_WARP / 2:  # 1e9 baked the colour of empty space
        raise ValueError(
            f"{prefix}.ray_length={cfg.ray_length} must be in (0, {BOX_WARP / 2:g}] (half the tri-grid's "
            "cube; the default is 0.02)"
        )
    if cfg.chunk <= 0:
        raise ValueError(f"{prefix}.chunk={cfg.chunk} must be > 0")


def view_resolution(cfg: MeshExportConfig, device: torch.device) -> int:
    if cfg.view_resolution is not None:
        return cfg.view_resolution
    return 512 if torch.device(device).type == "cuda" else 128


@torch.no_grad()
def neural_views(
    field: Field,
    colour: ColourFn,
    labels: Tensor,
    resolution: int,
    render: RenderConfig,
    chunk: int,
    progress: Callable = lambda it, **kw: it,
) -> list[dict[str, Tensor]]:
    """Deterministic neural renders of ``labels`` ``[V, 25]``: per view ``label``, ``image`` ``[R, R,
    3]`` in [0, 1], ``opacity`` ``[R, R]`` and its ``background`` (the colour of a zero feature,
    the official renders without the GAN background)."""
    features = field(labels.new_zeros(1, 1, 3))[1][0]  # [1, C]: the field's feature width
    background = colour(torch.zeros_like(features)).clamp(0, 1)[0]
    rays = max(1, chunk // sum((render.depth_resolution, render.depth_resolution_importance)))
    views = []
    for label in progress(labels, desc="neural views", unit="view"):

        def shaded(points: Tensor) -> tuple[Tensor, Tensor]:
            sigma, feats = field(points)
            return sigma, colour(feats)

        # the one render path (gan_prior.renderer.render_view), shading the features to RGB per sample
        out = render_view(shaded, label[None], resolution, render, deterministic=True, chunk=rays)
        opacity = out["opacity"][0, 0]
        fg = out["features"][0].permute(1, 2, 0)
        bg = background.expand(resolution, resolution, 3)
        image = (fg + (1 - opacity[..., None]) * bg).clamp(0, 1)
        views.append({"label": label, "image": image, "opacity": opacity, "background": bg})
    return views


def fidelity_line(scores: dict) -> str:
    """``textured: PSNR 24.10 dB, SSIM 0.812, IoU 0.950; vertex_colours: …`` (n/a where undefined)."""

    def fmt(x, spec):
        return "n/a" if x is None else format(x, spec)

    return "; ".join(
        f"{k}: PSNR {fmt(s['psnr'], '.2f')} dB, SSIM {fmt(s['ssim'], '.3f')}, IoU {fmt(s['iou'], '.3f')}"
        for k, s in scores.items()
        if isinstance(s, dict)
    )


@dataclass
class ExportedMesh:
    """What the mesh files hold (GAN world: +y up, the face looking down +z, tri-grid box units)."""

    vertices: np.ndarray  # [V, 3] float32
    faces: np.ndarray  # [F, 3] int64, counter-clockwise seen from outside
    normals: np.ndarray  # [V, 3] unit, outward
    colours: np.ndarray  # [V, 3] uint8 vertex colours
    uv_vertex_map: Optional[np.ndarray] = None  # [Vt] the mesh vertex of each textured vertex
    uv_faces: Optional[np.ndarray] = None  # [F, 3] over the textured vertices
    uv: Optional[np.ndarray] = None  # [Vt, 2] glTF convention (v down)
    texture: Optional[np.ndarray] = None  # [S, S, 3] uint8
    report: dict = field(default_factory=dict)  # clean-up, atlas, timings, fidelity (mesh_fidelity.json)


def export_mesh(
    vertices: np.ndarray,
    faces: np.ndarray,
    field_fn: Field,
    colour: ColourFn,
    cfg: MeshExportConfig,
    render: RenderConfig = RenderConfig(),
    device: torch.device = torch.device("cpu"),
    log: Callable[[str], None] = print,
    warn: Callable[[str], None] = print,
    progress: Callable = lambda it, **kw: it,
    step: Callable[[str], ContextManager] = lambda name: contextlib.nullcontext(),
) -> ExportedMesh:
    """Steps 1–5 of the module docstring on a marching-cubes mesh (GAN world). ``step(name)`` is
    entered around each step (the bench measures memory with it); the wall times go in the report."""
    timings = {}

    @contextlib.contextmanager
    def timed(name: str):
        start = time.perf_counter()
        with step(name):
            yield
        timings[name] = round(time.perf_counter() - start, 3)

    with torch.no_grad():
        with timed("clean-up"):
            v, f, report = clean_mesh(vertices, faces, cfg.max_faces or None)
            n = vertex_normals(v, f)
        log(report.line())
        atlas = None
        if cfg.texture:
            with timed("unwrap"):
                try:
                    atlas = unwrap(v, f, cfg.texture_size, cfg.padding)
                except UnwrapError as e:
                    warn(f"xatlas could not unwrap the mesh ({e}): exporting vertex colours only")
        vt, ft, nt = (torch.from_numpy(x).to(device) for x in (v, f, n))
        bake_cfg = BakeConfig(length=cfg.ray_length, samples=tuple(cfg.ray_samples), chunk=cfg.chunk)
        views, labels, resolution = [], None, view_resolution(cfg, device)
        if cfg.views:
            with timed("views"):
                labels = refinement_labels(cfg.view_seed).to(device)
                view_render = render.replace(
                    depth_resolution=cfg.view_samples[0], depth_resolution_importance=cfg.view_samples[1]
                )
                views = neural_views(field_fn, colour, labels, resolution, view_render, cfg.chunk, progress)
        background = views[0]["background"] if views else None
        with timed("bake"):
            vertex_rgb, vertex_offset, _ = normal_ray(field_fn, colour, vt, nt, bake_cfg, render)
            vertex_rgb = vertex_rgb.clamp(0, 1)
            if views:
                vertex_rgb = correct_with_views(
                    vertex_rgb,
                    vt,
                    nt,
                    lambda label: draw(
                        DrawableMesh(vt, ft, colours=vertex_rgb), label, resolution, background
                    ),
                    views,
                )
            result = ExportedMesh(v, f, n, to_uint8(vertex_rgb))
            meshes = {"vertex_colours": DrawableMesh(vt, ft, colours=vertex_rgb)}
            if atlas is not None:
                tx = texels(vt, nt, atlas, cfg.texture_size)
                colours = bake(field_fn, colour, tx, bake_cfg, vertex_offset, progress)
                vmap = torch.from_numpy(atlas.vertex_map).to(device)
                uv_faces = torch.from_numpy(atlas.faces).to(device)
                uv = torch.from_numpy(atlas.uv).to(device)

                def textured(texture: Tensor) -> DrawableMesh:
                    return DrawableMesh(vt[vmap], uv_faces, uv=uv, texture=texture)

                if views:
                    baked = textured(texture_image(tx, colours, cfg.padding))
                    colours = correct_with_views(
                        colours,
                        tx.points,
                        tx.normals,
                        lambda label: draw(baked, label, resolution, background),
                        views,
                    )
                texture = texture_image(tx, colours, cfg.padding)
                meshes = {"textured": textured(texture), **meshes}
                result.uv_vertex_map, result.uv_faces, result.uv = atlas.vertex_map, atlas.faces, atlas.uv
                result.texture = to_uint8(texture)
        scores = {}
        if views:
            with timed("fidelity"):
                # the former export, for reference: the whole marching-cubes mesh, raw isosurface features
                raw_v = torch.from_numpy(np.ascontiguousarray(vertices, np.float32)).to(device)
                meshes["isosurface_vertex_colours"] = DrawableMesh(
                    raw_v,
                    torch.from_numpy(np.ascontiguousarray(faces, np.int64)).to(device),
                    colours=point_colours(field_fn, colour, raw_v, cfg.chunk).clamp(0, 1),
                )
                scores = fidelity(meshes, views, labels, resolution)
            log(f"fidelity to the neural renders (21 refinement views): {fidelity_line(scores)}")
    result.report = {
        "mesh": {
            **asdict(report),
            "textured": atlas is not None,
            "texture_size": cfg.texture_size if atlas is not None else None,
            "charts": atlas.charts if atlas is not None else None,
        },
        "cameras": {
            "views": "the 21 refinement cameras" if views else None,
            "view_seed": cfg.view_seed,
            "resolution": resolution if views else None,
            "samples": list(cfg.view_samples),
            "mask": "neural opacity ≥ mask_opacity (half the peak opacity of the views)",
        },
        **scores,
        "timings_s": timings,
    }
    return result

#!/usr/bin/env python
"""The textured mesh export at full size: wall time and peak memory of each step, and its fidelity.

The released generator's architecture with random weights (``PortraitGAN.random(PortraitGANConfig(),
seed=0)``; no weights needed), its pyramid from a seeded z, then what ``launch.py --export`` does
(:mod:`gan_prior.mesh_export`): isosurface (256³ marching cubes, coarse to fine, at most ``--chunk``
points per field call), clean-up (largest component, outward, ``--max-faces``), unwrap (xatlas),
views (21 neural renders at ``--view-resolution``), bake (``--texture-size``²), fidelity, write
(GLB + OBJ/MTL/PNG + PLY). Per step, measured as every benchmark here (bench/harness.py): wall
time, the true peak memory while the step ran (CPU: VmHWM reset before it; CUDA:
``max_memory_allocated``), what was resident when it started and what the step added.

The fidelity is measured on the 21 refinement cameras (what ``mesh_fidelity.json`` holds) and on 7
held-out cameras (azimuths halfway between the refinement ones, elevation 0): the views correct
the texture, so the held-out cameras show whether that generalises. ``--compare-bakes`` also
measures the other bakes on the same mesh and atlas: the raw feature at the isosurface, the
surface ray alone (no views), the views alone (a flat texture corrected by the views), and the
surface ray corrected by the views (what the export keeps).

Random weights make a semi-transparent fog rather than a surface (renders ≤ 0.3 opaque along a
4 cm ray): the isosurface level is ``--level`` (default ``auto``, threestudio's mean positive σ),
not the official 15, which such a field barely reaches.

    PYTHONPATH=. python bench/bench_export.py                      # CPU, ~4 min on an idle 2-core machine
    PYTHONPATH=. python bench/bench_export.py --compare-bakes --json export.json
    PYTHONPATH=. python bench/bench_export.py --quick              # tiny generator, 64³, 256²: ~30 s
    PYTHONPATH=. python bench/bench_export.py --device cuda        # views at 512² by default there
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "bench")
for _p in (ROOT, BENCH):
    if _p not in sys.path:
        sys.path.insert(0, _p)

import torch  # noqa: E402
from harness import OtherLoad, PeakMemory, fmt_mib, machine_info, sync  # noqa: E402

from gan_prior.files import write_json  # noqa: E402


def held_out_labels(device) -> torch.Tensor:
    """7 cameras at elevation 0, azimuths halfway between the refinement cameras' (official focal)."""
    from gan_prior.camera import SDS_FOCAL, camera_label, lookat_pose

    h = torch.linspace(0, 2 * math.pi, 8)[:7] + math.pi / 7
    return camera_label(lookat_pose(h, torch.full_like(h, math.pi / 2)), SDS_FOCAL).to(device)


class Steps:
    """Wall time and memory of named steps (``with steps("name"): ...``), measured by the harness
    (bench/harness.py): the true peak while the step ran, what was resident when it started, the
    other processes' load."""

    def __init__(self, device: str):
        self.device, self.rows = device, []

    @contextlib.contextmanager
    def __call__(self, name: str):
        load = OtherLoad()
        with PeakMemory(self.device) as mem:
            sync(self.device)
            t0 = time.perf_counter()
            yield
            sync(self.device)
            wall = time.perf_counter() - t0
        self.rows.append({"step": name, "wall_s": wall, **mem.final, "other_load": load.cores()})
        print(
            f"  {name:<11} {wall:7.1f} s   peak {fmt_mib(mem.final['peak_bytes'])} "
            f"(+{fmt_mib(mem.final['added_bytes'])})",
            flush=True,
        )


def build(quick: bool, device: str):
    """(generator, pyramid, ws): the released architecture (tiny with ``quick``), random weights."""
    from gan_prior import PortraitGAN, PortraitGANConfig, canonical_label, tiny_config

    G = PortraitGAN.random(tiny_config() if quick else PortraitGANConfig(), seed=0).to(device)
    z = torch.randn(1, G.cfg.z_dim, generator=torch.Generator().manual_seed(0)).to(device)
    with torch.no_grad():
        ws = G.mapping(z, canonical_label(1).to(device))
        pyramid = G.synthesize_pyramid(ws)
    return G, pyramid, ws


def export_once(G, pyramid, ws, device: str, args, steps=None):
    """The export of one pyramid, step by step: (ExportedMesh, marching-cubes vertices/faces, the
    views, the colour function). ``steps``: a :class:`Steps` (else only wall times are kept)."""
    from gan_prior.mesh import density_grid, marching_cubes
    from gan_prior.mesh_export import MeshExportConfig, export_mesh
    from gan_prior.mesh_files import write_mesh
    from gan_prior.renderer import crop_mask

    steps = steps or Steps(device)
    render = G.cfg.render
    field = G.field(pyramid)
    a, b = G.torgb.affine_map(ws[:, -1])

    def colour(features):  # the extension's material: (ToRGB + 1) / 2
        return (features @ a[0].T + b) * 0.5 + 0.5

    def density(points):
        sigma = field(points.to(device)[None])[0][0, :, 0]
        return torch.where(crop_mask(points.to(device), render)[:, 0], render.crop_density, sigma)

    level = args.level if args.level == "auto" else float(args.level)
    with torch.no_grad(), steps("isosurface"):
        grid = density_grid(
            density, args.resolution, level, -0.35, 0.35, chunk=args.chunk, floor=render.crop_density
        )
        vertices, faces = marching_cubes(grid)
    print(
        f"  (level {grid.level:.3g}, σ {grid.sigma_range[0]:.3g} … {grid.sigma_range[1]:.3g}; "
        f"{grid.evaluated / args.resolution**3:.0%} of the {args.resolution}³ points evaluated)",
        flush=True,
    )
    cfg = MeshExportConfig(
        texture_size=args.texture_size,
        max_faces=args.max_faces or None,
        view_resolution=args.view_resolution,
        view_samples=tuple(args.view_samples),
        chunk=args.chunk,
    )
    views_seen = []
    from gan_prior import mesh_export

    original = mesh_export.neural_views

    def keep_views(*a, **k):  # the export's own views, reused for the held-out comparison's background
        out = original(*a, **k)
        views_seen.extend(out)
        return out

    mesh_export.neural_views = keep_views
    try:
        mesh = export_mesh(vertices, faces, field, colour, cfg, render, torch.device(device), step=steps)
    finally:
        mesh_export.neural_views = original
    with steps("write"), tempfile.TemporaryDirectory() as tmp:
        folder = getattr(args, "out", None) or tmp
        paths = write_mesh(folder, "portrait", mesh, ("glb", "obj", "ply"))
        sizes = {os.path.basename(p): os.path.getsize(p) for p in paths}
    mesh.report["file_bytes"] = sizes
    return mesh, (vertices, faces), views_seen, (field, colour)


def held_out_fidelity(mesh, field, colour, device, args, G) -> dict:
    from gan_prior.mesh_export import neural_views
    from gan_prior.mesh_fidelity import fidelity

    labels = held_out_labels(device)
    render = G.cfg.render.replace(
        depth_resolution=args.view_samples[0], depth_resolution_importance=args.view_samples[1]
    )
    resolution = mesh.report["cameras"]["resolution"]
    views = neural_views(field, colour, labels, resolution, render, args.chunk)
    meshes = drawables(mesh, device)
    return fidelity(meshes, views, labels, resolution)


def drawables(mesh, device) -> dict:
    from gan_prior.mesh_fidelity import DrawableMesh

    v = torch.from_numpy(mesh.vertices).to(device)
    out = {}
    if mesh.texture is not None:
        out["textured"] = DrawableMesh(
            v[torch.from_numpy(mesh.uv_vertex_map).to(device)],
            torch.from_numpy(mesh.uv_faces).to(device),
            uv=torch.from_numpy(mesh.uv).to(device),
            texture=torch.from_numpy(mesh.texture).to(device).float() / 255,
        )
    out["vertex_colours"] = DrawableMesh(
        v,
        torch.from_numpy(mesh.faces).to(device),
        colours=torch.from_numpy(mesh.colours).to(device).float() / 255,
    )
    return out


def compare_bakes(mesh, field, colour, views, device, args, G) -> dict:
    """The bakes measured for the choice (module docstring), on the export's mesh and atlas."""
    from gan_prior.mesh_export import neural_views
    from gan_prior.mesh_fidelity import DrawableMesh, draw, fidelity
    from gan_prior.texture import (
        Atlas,
        BakeConfig,
        bake,
        correct_with_views,
        normal_ray,
        point_colours,
        texels,
        texture_image,
    )

    if mesh.texture is None:
        return {}
    v = torch.from_numpy(mesh.vertices).to(device)
    n = torch.from_numpy(mesh.normals).to(device)
    atlas = Atlas(mesh.uv_vertex_map, mesh.uv_faces, mesh.uv, 0)
    size, padding = args.texture_size, 4
    resolution = views[0]["image"].shape[0]
    background = views[0]["background"]
    tx = texels(v, n, atlas, size)
    cfg = BakeConfig(chunk=args.chunk)
    vmap = torch.from_numpy(mesh.uv_vertex_map).to(device)
    uv_faces, uv = torch.from_numpy(mesh.uv_faces).to(device), torch.from_numpy(mesh.uv).to(device)

    def textured(colours):
        return DrawableMesh(v[vmap], uv_faces, uv=uv, texture=texture_image(tx, colours, padding))

    def corrected(colours):
        baked = textured(colours)
        return correct_with_views(
            colours, tx.points, tx.normals, lambda label: draw(baked, label, resolution, background), views
        )

    with torch.no_grad():
        rays = normal_ray(field, colour, v, n, cfg, G.cfg.render)
        surface = bake(field, colour, tx, cfg, rays[1])
        bakes = {
            "raw isosurface feature": point_colours(field, colour, tx.points, args.chunk).clamp(0, 1),
            "surface ray": surface,
            "views only": corrected(torch.full_like(surface, 0.5)),
            "surface ray + views (kept)": corrected(surface),
        }
        meshes = {name: textured(c) for name, c in bakes.items()}
        labels = torch.stack([view["label"] for view in views])
        held = held_out_labels(device)
        render = G.cfg.render.replace(
            depth_resolution=args.view_samples[0], depth_resolution_importance=args.view_samples[1]
        )
        held_views = neural_views(field, colour, held, resolution, render, args.chunk)
        return {
            "refinement cameras": fidelity(meshes, views, labels, resolution),
            "held-out cameras": fidelity(meshes, held_views, held, resolution),
        }


def summary(scores: dict) -> str:
    lines = []
    for name, s in scores.items():
        if isinstance(s, dict) and "psnr" in s:
            lines.append(
                f"    {name:<28} PSNR {s['psnr']:6.2f} dB   SSIM {s['ssim']:.3f}   IoU {s['iou']:.3f}"
            )
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--resolution", type=int, default=256, help="marching-cubes grid (default 256³)")
    p.add_argument("--texture-size", type=int, default=2048)
    p.add_argument("--max-faces", type=int, default=50000)
    p.add_argument("--view-resolution", type=int, default=None, help="default: 512 on CUDA, 128 on CPU")
    p.add_argument("--view-samples", type=int, nargs=2, default=(48, 48))
    p.add_argument("--level", default="auto", help="isosurface level (raw σ) or auto")
    p.add_argument("--chunk", type=int, default=1 << 18, help="field points per call")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--compare-bakes", action="store_true")
    p.add_argument("--no-held-out", action="store_true")
    p.add_argument("--quick", action="store_true", help="tiny generator, 64³, 256² texture, 64² views")
    p.add_argument("--json", default=None)
    p.add_argument("--out", default=None, help="keep the written files in this folder")
    args = p.parse_args(argv)
    if args.quick:
        args.resolution, args.texture_size, args.view_resolution = 64, 256, args.view_resolution or 64
        args.view_samples = (12, 12)
    if args.threads:
        torch.set_num_threads(args.threads)
    info = machine_info(args.device)
    print(f"export bench on {args.device} ({info.get('gpu') or info.get('cpu', '')}), load {os.getloadavg()}")
    t0 = time.perf_counter()
    G, pyramid, ws = build(args.quick, args.device)
    print(f"  generator + pyramid built in {time.perf_counter() - t0:.1f} s (not an export step)", flush=True)
    steps = Steps(args.device)
    t0 = time.perf_counter()
    mesh, raw, views, (field, colour) = export_once(G, pyramid, ws, args.device, args, steps)
    total = time.perf_counter() - t0
    r = mesh.report
    print(
        f"total {total:.1f} s (isosurface … write); without views and fidelity "
        f"{total - sum(x['wall_s'] for x in steps.rows if x['step'] in ('views', 'fidelity')):.1f} s"
    )
    print(
        f"mesh: {r['mesh']['vertices']} vertices / {r['mesh']['faces']} faces (from {r['mesh']['input_faces']}), "
        f"{r['mesh']['charts']} charts, files {r['file_bytes']}"
    )
    print(f"fidelity, the 21 refinement cameras at {r['cameras']['resolution']}²:")
    print(summary(r))
    result = {"machine": info, "args": vars(args), "steps": steps.rows, "total_s": total, "report": r}
    if not args.no_held_out:
        with torch.no_grad():
            held = held_out_fidelity(mesh, field, colour, args.device, args, G)
        print("fidelity, 7 held-out cameras:")
        print(summary(held))
        result["held_out"] = held
    if args.compare_bakes:
        compared = compare_bakes(mesh, field, colour, views, args.device, args, G)
        for cams, scores in compared.items():
            print(f"bakes compared, {cams}:")
            print(summary(scores))
        result["bakes"] = compared
    print(f"load after: {os.getloadavg()}")
    if args.json:
        write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())

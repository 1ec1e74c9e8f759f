#!/usr/bin/env python
"""Cost of the deformation's nearest-face search at the official mesh size.

A posed render in the inversion (official ``run_inversion_with_pose_optimization.py``:
``apply_def=True``, 96 + 96 samples per ray at 128²) moves every sample point through
:func:`gan_prior.mesh_distance.nearest_triangles` over the posed SMPL faces inside the tri-grid box,
with ``thickness`` 0.25. Here: the seeded SMPL-like body of :mod:`gan_prior.synthetic_smpl` at SMPL's
size (6890 vertices, 13776 faces; the in-box ``face_mask`` as the official renderer makes it) in a
seeded random pose, and the stratified sample points of the frontal camera's rays. A seeded random
subset of the pass's points is timed (the search's cost grows with the points; the subset's
per-point cost times the pass's points is the pass's estimate), against the brute force on a
smaller subset. ``--budget-scale`` times the search at several pass sizes (``PAIR_BUDGET`` × each;
CUDA's default is × 16) with the torch calls each makes, and checks that they choose the same faces.
Timing and memory by :mod:`bench.harness` (its module docstring says how).

    PYTHONPATH=. python bench/bench_mesh_distance.py                       # CPU, default subsets
    PYTHONPATH=. python bench/bench_mesh_distance.py --device cuda --subset 0   # every point of the pass
    PYTHONPATH=. python bench/bench_mesh_distance.py --budget-scale 1 4 16     # the pass size
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from unittest import mock

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import OtherLoad, PeakMemory, fmt_mib, machine_info, sync, timed  # noqa: E402

from gan_prior import PortraitGANConfig, mesh_distance  # noqa: E402
from gan_prior.camera import canonical_label  # noqa: E402
from gan_prior.deformation import THICKNESS, MeshDeformation  # noqa: E402
from gan_prior.inversion import InversionConfig, inversion_step  # noqa: E402
from gan_prior.mesh_distance import PAIR_BUDGET, brute_force_nearest, nearest_triangles  # noqa: E402
from gan_prior.perceptual import VGG16Distance  # noqa: E402
from gan_prior.renderer import RenderConfig, rays_from_label, stratified_depths  # noqa: E402
from gan_prior.synthetic_smpl import fill_deformation, posable_random_generator, smpl_like_template  # noqa: E402


def posed_step(seed: int, scale: int, dev: torch.device) -> dict:
    """One posed inversion step (:func:`gan_prior.inversion.inversion_step` + backward at the
    ``InversionConfig`` defaults) with the culled search's passes at ``PAIR_BUDGET × scale``: its
    seconds and memory (does the search's larger pass raise the step's peak?)."""
    g = posable_random_generator(PortraitGANConfig(), seed=seed).requires_grad_(False).to(dev)
    cfg = g.cfg
    c = canonical_label(1).to(dev)
    with torch.no_grad():
        ws = g.mapping(torch.randn(1, cfg.z_dim, generator=torch.Generator().manual_seed(seed)).to(dev), c)
    ws.requires_grad_(True)
    pose = torch.tensor([[0.1, -0.1, 0.05, 0.1, 0.05, -0.1]], device=dev, requires_grad=True)
    vgg = VGG16Distance.load(None).to(dev)
    target = torch.rand(1, 3, 256, 256, generator=torch.Generator().manual_seed(seed)).to(dev) * 2 - 1
    name = "CULLED_PAIR_BUDGET_CUDA" if dev.type == "cuda" else "PAIR_BUDGET"
    with mock.patch.object(mesh_distance, name, PAIR_BUDGET * scale), PeakMemory(dev) as mem:
        sync(dev)
        t0 = time.perf_counter()
        _, loss = inversion_step(g, ws, [], target, c, vgg, InversionConfig(), 0.3, 1.0, pose)
        loss.backward()
        sync(dev)
        seconds = time.perf_counter() - t0
    return {"seconds": seconds, **mem.final}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--resolution", type=int, default=128, help="neural rendering resolution (released: 128)")
    ap.add_argument("--samples", type=int, default=96, help="stratified samples per ray (inversion: 96)")
    ap.add_argument("--subset", type=int, default=100_000, help="points timed (0: every point of the pass)")
    ap.add_argument("--brute-subset", type=int, default=5_000, help="points timed by brute force (0: skip)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument(
        "--budget-scale",
        type=int,
        nargs="+",
        default=[1],
        help="time the search with PAIR_BUDGET × each of these (point-triangle pairs per pass: fewer, "
        "larger passes cost fewer torch calls and more memory)",
    )
    ap.add_argument(
        "--posed-step",
        action="store_true",
        help="also one whole posed inversion step at each pass size (full-size random generator with this "
        "body, 128² + SR → 256², 96 + 96 samples, LPIPS, backward): its time and true peak memory",
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    if min(args.budget_scale) < 1:
        ap.error("--budget-scale takes whole numbers of at least 1 (PAIR_BUDGET × each)")
    if args.posed_step and len(args.budget_scale) != 1:
        ap.error(
            "--posed-step takes one --budget-scale per run (a process's peak includes what earlier steps left)"
        )
    dev = torch.device(args.device)
    gen = torch.Generator().manual_seed(args.seed)

    body = MeshDeformation()
    fill_deformation(body, smpl_like_template(args.seed))
    body = body.to(dev)
    pose = (torch.rand(1, 6, generator=gen) * 2 - 1) * math.radians(15)
    with torch.no_grad():
        posed = body.posed_vertices(pose.to(dev))[0]
    faces = body.aligned_SMPL.faces[body.face_mask]
    tris = posed[faces]  # [F, 3, 3]

    cfg = RenderConfig(depth_resolution=args.samples)
    origins, dirs = rays_from_label(canonical_label().to(dev), args.resolution)
    depths = stratified_depths(1, origins.shape[1], cfg, deterministic=False, device=dev)
    points = (origins.unsqueeze(-2) + depths * dirs.unsqueeze(-2)).reshape(-1, 3)
    n_pass = points.shape[0]

    def subset(n: int) -> torch.Tensor:
        if n <= 0 or n >= n_pass:
            return points
        return points[torch.randperm(n_pass, generator=gen)[:n].to(dev)]

    rows = {}
    sel = subset(args.subset)
    d2, index = nearest_triangles(sel, tris, THICKNESS)
    near = float(torch.isfinite(d2).float().mean())
    load = OtherLoad()
    for scale in args.budget_scale:
        budget = PAIR_BUDGET * scale
        with PeakMemory(dev) as mem:
            t = timed(lambda: nearest_triangles(sel, tris, THICKNESS, budget=budget), dev, args.repeats)
        with torch.profiler.profile() as prof:  # one more call, untimed: how many torch calls it makes
            same = torch.equal(nearest_triangles(sel, tris, THICKNESS, budget=budget)[1], index)
        if not same:
            raise SystemExit(f"bench_mesh_distance.py: budget ×{scale} chose other faces than ×1")
        calls = sum(e.count for e in prof.key_averages())
        rows[f"culled ×{scale}"] = {
            "points": sel.shape[0],
            "budget": budget,
            "torch_calls": calls,
            **t,
            **mem.final,
        }
    if args.brute_subset > 0:
        few = subset(args.brute_subset)
        with PeakMemory(dev) as mem:
            t = timed(lambda: brute_force_nearest(few, tris), dev, 1, warmup=False)
        rows["brute force"] = {"points": few.shape[0], **t, **mem.final}
    other = load.cores()
    steps = (
        {f"posed step ×{scale}": posed_step(args.seed, scale, dev) for scale in args.budget_scale}
        if args.posed_step
        else {}
    )

    print(
        f"nearest posed face, {faces.shape[0]} in-box faces of {body.face_mask.numel()}, thickness {THICKNESS}; "
        f"one pass: {args.resolution}² rays × {args.samples} samples = {n_pass} points, "
        f"{100 * near:.0f}% within the thickness"
    )
    print(
        f"{'search':<12} {'points':>8} {'median s':>9} {'µs/point':>9} {'pass estimate s':>16} {'added MiB':>10} "
        f"{'torch calls':>12}"
    )
    for name, r in rows.items():
        per = r["median_s"] / r["points"]
        r["us_per_point"] = per * 1e6
        r["pass_estimate_s"] = per * n_pass
        print(
            f"{name:<12} {r['points']:>8} {r['median_s']:>9.3f} {per * 1e6:>9.2f} {per * n_pass:>16.1f} "
            f"{fmt_mib(r['added_bytes']):>10} {r.get('torch_calls', '–'):>12}"
        )
    if "brute force" in rows:
        print(
            f"culled / brute force per point: {rows[f'culled ×{args.budget_scale[0]}']['us_per_point'] / rows['brute force']['us_per_point']:.3f}"
        )
    for name, r in steps.items():
        print(
            f"{name}: {r['seconds']:.1f} s, peak {fmt_mib(r['peak_bytes'])} (resident at start {fmt_mib(r['resident_bytes'])})"
        )
    info = machine_info(dev)
    print(f"machine: {info['cpu']}, {info['usable_cores']} cores, load {info['load_average']}, other processes "
          f"busy {other if other is None else round(other, 2)} cores during the timing")  # fmt: skip
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {
                    "settings": vars(args),
                    "machine": info,
                    "other_load_cores": other,
                    "rows": rows,
                    "posed_steps": steps,
                },
                f,
                indent=1,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

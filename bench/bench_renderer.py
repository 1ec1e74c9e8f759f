#!/usr/bin/env python
"""Benchmark of the ``gan_prior`` neural renderer (full-size 3DPortraitGAN▲ generator).

What it times: ``PortraitGAN.render`` of a fixed pyramid tri-grid (levels 8…512, 108 channels,
random weights) from the canonical camera, batch 1, 48+48 samples per ray, jitter on
(``deterministic=False``, as in training/SDS), with the pyramid levels as leaf tensors that
require grad and the generator frozen (what the SDS stage optimises). Per case:

* ``forward``: ``render(...)`` + ``image.square().mean()``, autograd recording (as in SDS);
* ``fwd+bwd``: the same plus ``loss.backward()`` into the pyramid levels (grads set to None
  before every iteration);

median of ``--repeats`` iterations (both times from the same iteration) after one warm-up
forward+backward (on CPU at min(R, 32)², same code path; full size on CUDA or with
``--full-warmup``), and the peak memory of one forward+backward. Each case is timed in a fresh
subprocess; with the official renderer, both are timed in that process, interleaved (the order
alternating every round) so that drifts of a shared machine hit both alike. Peak memory is
measured for each (case, implementation) in its own fresh subprocess. The timing worker also records
how many CPUs other processes kept busy meanwhile ("other load"); above ~0.2 the numbers are
contaminated and a warning is printed.

When the official 3DPortraitGAN_pyramid code is available (``--official-root``, env
``PORTRAIT3D_OFFICIAL_ROOT``, or /work/official/3DPortraitGAN_pyramid), its render-only
``training.neural_renderer.TriPlaneGenerator.render_planes`` is timed on the same inputs (same
weights, same pyramid, same camera, same rendering kwargs), imported and patched at runtime by
``bench/official.py`` (nothing official lives in this repository). Before
timing, a jitter-off render of both is compared (max abs difference printed).

Memory (bench/harness.py's convention, for each (case, impl) in its own fresh subprocess): the
true peak of one forward+backward and what was resident before it (model, pyramid, warm-up done,
gradients freed); the table shows the part the step added (peak − resident). On the CPU the memory
worker runs with glibc's mmap and trim thresholds fixed at 128 KiB
(``MALLOC_MMAP_THRESHOLD_``/``MALLOC_TRIM_THRESHOLD_``) so freed tensors leave the resident set at
once and the figure tracks live memory, not heap caching (timing workers run with the default
allocator).

Usage::

    PYTHONPATH=. python bench/bench_renderer.py                  # full run (2-core CPU: ~3.5 min idle)
    PYTHONPATH=. python bench/bench_renderer.py --quick --no-official   # smoke run
    PYTHONPATH=. python bench/bench_renderer.py --device cuda --repeats 10 --json out.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass

import official  # bench/official.py (the script's folder is on sys.path)
import torch
from harness import OtherLoad, PeakMemory, fmt_mib, fmt_ratio, fmt_s, machine_info, markdown_table, sync

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULT_TAG = "BENCH_RESULT "
SEED = 0
CPU_WARMUP_RESOLUTION = 32  # see --full-warmup
QUICK_WARMUP_RESOLUTION = 16
# CPU memory workers: glibc serves every allocation >= 128 KiB with its own mmap and unmaps it on
# free (a fixed threshold also turns off glibc's dynamic threshold), so the resident-set peak tracks
# the peak of live tensor memory instead of how much freed memory the heap happened to keep.
MEMORY_WORKER_ENV = {"MALLOC_MMAP_THRESHOLD_": "131072", "MALLOC_TRIM_THRESHOLD_": "131072"}


@dataclass(frozen=True)
class Case:
    name: str
    resolution: int
    background: bool


FULL_CASES = (Case("64 no-bg", 64, False), Case("128 no-bg", 128, False), Case("64 bg", 64, True))
QUICK_CASES = (Case("32 no-bg", 32, False), Case("32 bg", 32, True))


# ---------------------------------------------------------------------------------- official side
def build_official(mods, ours, device: str):
    """The official render-only TriPlaneGenerator with our model's decoder/torgb/bcg weights."""
    _, render_mod = official.build_models(mods)  # (tiny backbone is discarded)
    rk = render_mod.rendering_kwargs
    rc = ours.cfg.render
    mine = dict(
        ray_start=rc.ray_start,
        ray_end=rc.ray_end,
        depth_resolution=rc.depth_resolution,
        depth_resolution_importance=rc.depth_resolution_importance,
        box_warp=rc.box_warp,
        triplane_depth=ours.cfg.trigrid_depth,
    )
    theirs = {k: rk[k] for k in mine}
    if mine != theirs:
        raise SystemExit(f"rendering kwargs differ: ours {mine} vs official harness {theirs}")
    state = {
        k: v for k, v in ours.state_dict().items() if k.split(".")[0] in ("decoder", "torgb", "bcg_synthesis")
    }
    result = render_mod.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise SystemExit(
            f"official weight load: missing {result.missing_keys}, unexpected {result.unexpected_keys}"
        )
    return render_mod.to(device).eval().requires_grad_(False)


# ---------------------------------------------------------------------------------- workers
def load_inputs(path: str, device: str):
    from gan_prior.generator import PortraitGAN, PortraitGANConfig

    data = torch.load(path, map_location="cpu", weights_only=True)
    ours = PortraitGAN.random(PortraitGANConfig(), seed=data["seed"]).to(device)
    ws, c = data["ws"].to(device), data["c"].to(device)
    pyramid = {int(r): t.to(device) for r, t in data["pyramid"].items()}
    return ours, ws, c, pyramid


def make_renderers(impl: str, ours, ws, c, official_root, device):
    """impl → fn(pyramid, resolution, background, deterministic) → image."""
    if impl == "ours":

        def render(pyr, res, bg, det):
            return ours.render(pyr, ws, c, resolution=res, deterministic=det, background=bg)["image"]

        return render
    mods = official.import_official(official_root)
    generator = build_official(mods, ours, device)

    def render(pyr, res, bg, det):
        # deterministic: the harness's patched samplers; else the official ones (training behaviour)
        official.make_deterministic(mods) if det else official.restore(mods)
        planes = {r // 2: t for r, t in pyr.items()}  # official keys: 2-D resolution R/2
        return generator.render_planes(
            ws=ws, planes=planes, c=c, neural_rendering_resolution=res, render_bg=bg, noise_mode="const"
        )["image_raw"]

    return render


def render_step(render, levels, device, background):
    """``step(resolution)`` → (forward s, forward+backward s, loss, image shape) of one iteration:
    ``render`` + ``image.square().mean()``, then its backward into ``levels`` (grads reset first)."""

    def step(resolution):
        for t in levels.values():
            t.grad = None
        sync(device)
        t0 = time.perf_counter()
        image = render(levels, resolution, background, False)
        loss = image.square().mean()
        sync(device)
        t1 = time.perf_counter()
        loss.backward()
        sync(device)
        t2 = time.perf_counter()
        return t1 - t0, t2 - t0, loss.item(), list(image.shape)

    return step


def _setup(spec: dict, impls):
    device = spec["device"]
    torch.manual_seed(spec["seed"])
    ours, ws, c, pyramid = load_inputs(spec["inputs"], device)
    renders = {impl: make_renderers(impl, ours, ws, c, spec.get("official_root"), device) for impl in impls}
    levels = {r: t.detach().clone().requires_grad_(True) for r, t in pyramid.items()}
    steps = {impl: render_step(fn, levels, device, spec["background"]) for impl, fn in renders.items()}
    for impl in impls:
        steps[impl](spec["warmup_resolution"])  # warm-up (lazy init, kernels; allocator on CUDA)
    for t in levels.values():
        t.grad = None  # memory baseline excludes gradients: the step's peak includes allocating them
    return steps, levels


def worker_time(spec: dict) -> dict:
    """Time every impl in ``spec["impls"]`` in this one process, interleaved (the order
    alternating each round) so that slow drifts of the machine hit both alike."""
    impls, res = spec["impls"], spec["resolution"]
    steps, levels = _setup(spec, impls)
    load = OtherLoad()
    runs = {impl: {"forward_s": [], "fwd_bwd_s": []} for impl in impls}
    for i in range(spec["repeats"]):
        for impl in impls if i % 2 == 0 else impls[::-1]:
            f, fb, loss, shape = steps[impl](res)
            r = runs[impl]
            r["forward_s"].append(f)
            r["fwd_bwd_s"].append(fb)
            r.update(
                loss=loss,
                image_shape=shape,
                levels=len(levels),
                levels_with_grad=sum(
                    t.grad is not None and bool(torch.isfinite(t.grad).all()) for t in levels.values()
                ),
            )
    other = load.cores()
    for r in runs.values():
        r.update(
            forward_median_s=statistics.median(r["forward_s"]),
            fwd_bwd_median_s=statistics.median(r["fwd_bwd_s"]),
            other_load_cores=other,
        )
    return {"runs": runs, "torch_threads": torch.get_num_threads()}


def worker_memory(spec: dict) -> dict:
    """Peak memory of one forward+backward of one impl, in this fresh process."""
    impl = spec["impls"][0]
    steps, _ = _setup(spec, [impl])
    with PeakMemory(spec["device"]) as mem:
        steps[impl](spec["resolution"])
    return mem.final


def worker_parity(spec: dict) -> dict:
    """Jitter off: ours (deterministic=True) vs official (harness deterministic patches)."""
    device = spec["device"]
    ours, ws, c, pyramid = load_inputs(spec["inputs"], device)
    r_ours = make_renderers("ours", ours, ws, c, None, device)
    r_off = make_renderers("official", ours, ws, c, spec["official_root"], device)
    out = []
    with torch.no_grad():
        for res, bg in spec["pairs"]:
            a, b = r_ours(pyramid, res, bg, True), r_off(pyramid, res, bg, True)
            out.append(
                {
                    "resolution": res,
                    "background": bg,
                    "max_abs_diff": (a - b).abs().max().item(),
                    "max_abs": b.abs().max().item(),
                }
            )
    return {"parity": out}


def run_worker(spec: dict, threads, extra_env=None) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", json.dumps(spec)]
    if threads:
        cmd += ["--threads", str(threads)]
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.update(extra_env or {})
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT_TAG):
            return json.loads(line[len(RESULT_TAG) :])
    raise RuntimeError(
        f"worker {spec.get('impl', 'parity')} failed (rc {proc.returncode}):\n"
        f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    )


# ---------------------------------------------------------------------------------- main
def resolve_official(args):
    return None if args.no_official else official.find_root(args.official_root)


def fmt_load(x) -> str:
    return "–" if x is None else f"{x:.2f}"


def make_table(info: dict, meta: dict, rows: list[dict], parity) -> str:
    lines = [
        "## gan_prior renderer benchmark",
        "",
        f"- CPU: {info['cpu']} ({info['cpu_count']} logical CPUs, {info['usable_cores']} usable)",
        f"- device: {info['device']}" + (f" ({info['gpu']})" if "gpu" in info else ""),
        f"- torch {info['torch']}, torch threads {info['torch_threads']}, Python {info['python']}",
        f"- generator: PortraitGANConfig() defaults (levels {meta['levels']}, 108 ch, random weights "
        f"seed {meta['seed']}); pyramid synthesis {meta['synthesis_s']:.1f} s",
        f"- render: batch 1, canonical camera, 48+48 samples, deterministic=False (jitter on); "
        f"loss = image.square().mean(), backward into the {len(meta['levels'])} pyramid levels",
        f"- median of {meta['repeats']} repeats after 1 warm-up ({meta['warmup']}); each case in a "
        f"fresh subprocess, ours and official interleaved (order alternating each round)",
        f"- memory of one forward+backward, each case and impl in its own fresh subprocess: the peak "
        f"it added to what was resident (model, pyramid) and the true peak; {meta['mem_method']}"
        + (
            ""
            if info["device"].startswith("cuda")
            else ", glibc mmap/trim threshold 128 KiB in that subprocess"
        ),
        f"- official: {meta['official'] or 'not run'}",
        "",
    ]
    table = []
    for r in rows:
        o, f = r["ours"], r.get("official")

        def g(k, f=f):
            return f[k] if f else None

        table.append(
            [
                r["case"],
                fmt_s(o["forward_median_s"]),
                fmt_s(o["fwd_bwd_median_s"]),
                fmt_s(g("forward_median_s")),
                fmt_s(g("fwd_bwd_median_s")),
                fmt_ratio(g("forward_median_s"), o["forward_median_s"]),
                fmt_ratio(g("fwd_bwd_median_s"), o["fwd_bwd_median_s"]),
                fmt_mib(o["added_bytes"]),
                fmt_mib(g("added_bytes")),
                fmt_mib(o["peak_bytes"]),
                fmt_mib(g("peak_bytes")),
                fmt_load(o["other_load_cores"]),
            ]
        )
    header = (
        "case",
        "ours fwd",
        "ours fwd+bwd",
        "official fwd",
        "official fwd+bwd",
        "ratio fwd (official/ours)",
        "ratio fwd+bwd (official/ours)",
        "ours added peak",
        "official added peak",
        "ours true peak",
        "official true peak",
        "other load (cores)",
    )
    lines += markdown_table(header, table)
    loads = [
        r[i]["other_load_cores"]
        for r in rows
        for i in ("ours", "official")
        if r.get(i) and r[i]["other_load_cores"] is not None
    ]
    if loads and max(loads) > 0.2:
        lines += [
            "",
            f"WARNING: other processes kept up to {max(loads):.2f} CPUs busy during timing; "
            "these numbers (and the ratios) are contaminated. Re-run on an idle machine.",
        ]
    if parity:
        lines += [
            "",
            "Jitter-off agreement (ours deterministic=True vs official with the harness's "
            "deterministic patches), image max |ours − official|:",
            "",
        ]
        for p in parity:
            lines.append(
                f"- {p['resolution']}² background={p['background']}: {p['max_abs_diff']:.3g} "
                f"(max |image| {p['max_abs']:.3g})"
            )
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    ap.add_argument(
        "--repeats", type=int, default=None, help="timed iterations per case (default 3, --quick 1)"
    )
    ap.add_argument("--quick", action="store_true", help="smoke run: 32×32 (bg and no bg), 1 repeat")
    ap.add_argument(
        "--official-root",
        default=None,
        help=f"3DPortraitGAN_pyramid checkout (default: $PORTRAIT3D_OFFICIAL_ROOT, "
        f"else {official.DEFAULT_ROOT} if present)",
    )
    ap.add_argument("--no-official", action="store_true", help="do not time the official renderer")
    ap.add_argument(
        "--full-warmup",
        action="store_true",
        help=f"on CPU, warm up at the case resolution (default: one {CPU_WARMUP_RESOLUTION}² "
        f"fwd+bwd, same code path; on CUDA the warm-up is always full size)",
    )
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    ap.add_argument("--cases", default=None, help="comma-separated case names to run (e.g. '128 no-bg')")
    ap.add_argument("--json", default=None, metavar="OUT", help="write all numbers to this JSON file")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    if args.worker:
        spec = json.loads(args.worker)
        result = {"parity": worker_parity, "time": worker_time, "memory": worker_memory}[spec["mode"]](spec)
        print(RESULT_TAG + json.dumps(result), flush=True)
        return 0

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("--device cuda but CUDA is not available")
    repeats = args.repeats or (1 if args.quick else 3)
    cases = QUICK_CASES if args.quick else FULL_CASES
    if args.cases:
        wanted = [x.strip() for x in args.cases.split(",")]
        unknown = sorted(set(wanted) - {cs.name for cs in cases})
        if unknown:
            raise SystemExit(f"--cases: unknown case(s) {unknown}; valid: {[cs.name for cs in cases]}")
        cases = tuple(cs for cs in cases if cs.name in wanted)
    official_root = resolve_official(args)
    info = machine_info(device)
    t_start = time.time()

    from gan_prior.camera import canonical_label
    from gan_prior.generator import PortraitGAN, PortraitGANConfig

    model = PortraitGAN.random(PortraitGANConfig(), seed=SEED).to(device)
    gen = torch.Generator().manual_seed(SEED)
    z = torch.randn(1, model.cfg.z_dim, generator=gen).to(device)
    c = canonical_label(1).to(device)
    t0 = time.perf_counter()
    with torch.no_grad():
        ws = model.mapping(z, c)
        pyramid = model.synthesize_pyramid(ws)
    sync(device)
    synthesis_s = time.perf_counter() - t0
    del model

    with tempfile.TemporaryDirectory(prefix="bench_renderer_") as tmp:
        inputs = os.path.join(tmp, "inputs.pt")
        torch.save(
            {"seed": SEED, "ws": ws.cpu(), "c": c.cpu(), "pyramid": {r: t.cpu() for r, t in pyramid.items()}},
            inputs,
        )
        levels = sorted(pyramid)
        del pyramid
        base = {"device": device, "inputs": inputs, "seed": SEED, "official_root": official_root}

        parity = None
        if official_root:
            pairs = sorted(
                {
                    (cs.resolution, cs.background)
                    for cs in cases
                    if cs.resolution == min(x.resolution for x in cases)
                }
            )
            print(f"checking jitter-off agreement with the official renderer at {pairs} ...", flush=True)
            parity = run_worker({**base, "mode": "parity", "pairs": pairs}, args.threads)["parity"]

        rows = []
        for cs in cases:
            row = {"case": cs.name, **asdict(cs)}
            warm = (
                cs.resolution
                if (device.startswith("cuda") or args.full_warmup)
                else min(cs.resolution, QUICK_WARMUP_RESOLUTION if args.quick else CPU_WARMUP_RESOLUTION)
            )
            impls = ["ours", "official"] if official_root else ["ours"]
            case_spec = {
                **base,
                "resolution": cs.resolution,
                "background": cs.background,
                "repeats": repeats,
                "warmup_resolution": warm,
            }
            print(f"timing {' + '.join(impls)}, {cs.name} (interleaved) ...", flush=True)
            timed = run_worker({**case_spec, "mode": "time", "impls": impls}, args.threads)
            threads = timed["torch_threads"]
            for impl in impls:
                r = row[impl] = timed["runs"][impl]
                if r["levels_with_grad"] != r["levels"] or not math.isfinite(r["loss"]):
                    raise SystemExit(
                        f"{impl} {cs.name}: backward did not reach every level "
                        f"({r['levels_with_grad']}/{r['levels']}) or loss not finite"
                    )
                print(f"peak memory {impl}, {cs.name} (fresh process) ...", flush=True)
                r.update(
                    run_worker(
                        {**case_spec, "mode": "memory", "impls": [impl]},
                        args.threads,
                        MEMORY_WORKER_ENV if not device.startswith("cuda") else None,
                    )
                )
            rows.append(row)

    info["torch_threads"] = threads
    warm_desc = (
        "full-size fwd+bwd"
        if device.startswith("cuda") or args.full_warmup
        else f"fwd+bwd at min(R, {QUICK_WARMUP_RESOLUTION if args.quick else CPU_WARMUP_RESOLUTION})²"
    )
    meta = {
        "levels": levels,
        "seed": SEED,
        "synthesis_s": synthesis_s,
        "repeats": repeats,
        "warmup": warm_desc,
        "mem_method": rows[0]["ours"]["method"],
        "official": official_root,
        "total_s": time.time() - t_start,
    }
    table = make_table(info, meta, rows, parity)
    print()
    print(table)
    print(f"\n(total {meta['total_s']:.0f} s)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": info, "meta": meta, "cases": rows, "parity": parity}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())

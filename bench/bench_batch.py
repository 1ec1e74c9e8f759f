"""Throughput of ``portrait3d batch`` with 1 vs 2 Ray workers, Ray's overhead per prompt, and a
projection for N GPUs. See bench/README.md (batch).

    PYTHONPATH=. python bench/bench_batch.py                       # tiny config, 4 prompts, 1 and 2 workers
    PYTHONPATH=. python bench/bench_batch.py --prompts 8 --workers 1 2 4 --json batch.json
    PYTHONPATH=. python bench/bench_batch.py --config configs/portrait3d.yaml --prompts 2 --workers 1 \\
        --no-short system.prior_checkpoint=...      # a GPU machine, the full config

Every worker count runs the same prompts into a fresh folder; Ray is started (and timed) for each.
``overhead per prompt`` = (wall time with 1 worker − the prompts' own train + export time) / prompts:
task dispatch, worker start and the bookkeeping, without Ray's start-up (listed on its own).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

# the tiny config, shorter still: one SDS step, no refinement, 2 test views, small videos
SHORT = [
    "system.sds_steps=1",
    "system.refine.steps=0",
    "data.n_test_views=2",
    "system.videos.large_frames=4",
    "system.videos.small_frames=0",
    "trainer.val_check_interval=100",
]


def run_once(workers: int, prompts: list, config: str, overrides: list, out: str) -> dict:
    import ray

    from portrait3d.batch import Job, read_manifest, run_batch, worker_runtime_env

    start = time.time()
    ray.init(
        num_cpus=workers,
        include_dashboard=False,
        runtime_env=worker_runtime_env(),
        log_to_driver=False,
    )
    ray_init = time.time() - start
    jobs = [Job(p, f"p{i}", 0, [], i + 1) for i, p in enumerate(prompts)]
    try:
        start = time.time()
        run_batch(jobs, config, overrides, out, workers=workers, progress=False)
        wall = time.time() - start
    finally:
        start = time.time()
        ray.shutdown()
        ray_down = time.time() - start
    entries = list(read_manifest(out).values())
    failed = [e for e in entries if e["status"] != "done"]
    if failed:
        raise SystemExit(f"error: {failed[0]['name']} failed: {failed[0]['error']}")
    task = [sum(e["times"].values()) for e in entries]
    return {
        "workers": workers,
        "wall_s": wall,
        "ray_init_s": ray_init,
        "ray_shutdown_s": ray_down,
        "task_s": task,
        "task_sum_s": sum(task),
        "portraits_per_min": 60 * len(entries) / wall,
        "peak_memory_mb": max(e["peak_memory_mb"] for e in entries),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default=os.path.join(ROOT, "configs", "portrait3d-tiny.yaml"))
    p.add_argument("--prompts", type=int, default=4)
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument(
        "--gpu-minutes",
        type=float,
        default=30.0,
        help="one portrait's time on one GPU for the projection (the paper: about 30 min)",
    )
    p.add_argument("--no-short", action="store_true", help="the config as it is (no shortening overrides)")
    p.add_argument("--keep", default=None, help="keep the outputs in this folder")
    p.add_argument("--json", default=None)
    p.add_argument("overrides", nargs="*")
    args = p.parse_args(argv)

    from gan_prior.tiny_models import tiny_model_path

    if "tiny" in os.path.basename(args.config):  # build the tiny models before timing anything
        for name in ("portrait-gan", "stable-diffusion", "clip"):
            tiny_model_path(name)
    from portrait3d.threestudio_env import extension_installed, find_threestudio, make_worktree

    base = args.keep or tempfile.mkdtemp(prefix="bench_batch_")
    if not extension_installed(find_threestudio()):
        # a read-only checkout without the extension: a work tree linking to it (as the tests do)
        os.environ["THREESTUDIO_ROOT"] = make_worktree(os.path.join(base, "threestudio"))
    overrides = ([] if args.no_short else SHORT) + args.overrides
    prompts = [f"upper body photo, portrait of person number {i}" for i in range(args.prompts)]
    results = []
    try:
        for w in args.workers:
            print(f"{len(prompts)} prompts, {w} worker(s) ...", file=sys.stderr, flush=True)
            results.append(
                run_once(w, prompts, os.path.abspath(args.config), overrides, os.path.join(base, f"w{w}"))
            )
    finally:
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)

    one = next((r for r in results if r["workers"] == 1), None)
    n = len(prompts)
    print(f"config: {os.path.relpath(args.config, ROOT)} {' '.join(overrides)}")
    print(f"CPU cores: {os.cpu_count()}, load average at the end: {os.getloadavg()[0]:.1f}")
    print(
        "| workers | wall s | portraits/min | speed-up vs 1 | mean prompt s | Ray start s | Ray stop s "
        "| peak RSS MB |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        speedup = f"{one['wall_s'] / r['wall_s']:.2f}×" if one else "–"
        print(
            f"| {r['workers']} | {r['wall_s']:.1f} | {r['portraits_per_min']:.2f} | {speedup} | "
            f"{r['task_sum_s'] / n:.1f} | {r['ray_init_s']:.1f} | {r['ray_shutdown_s']:.1f} | "
            f"{r['peak_memory_mb']:.0f} |"
        )
    overhead = None
    if one:
        overhead = (one["wall_s"] - one["task_sum_s"]) / n
        print(
            f"Ray overhead per prompt (1 worker): {overhead:.2f} s "
            f"({100 * overhead / (one['task_sum_s'] / n):.1f}% of a tiny prompt's {one['task_sum_s'] / n:.1f} s)"
        )
        t = args.gpu_minutes * 60 + overhead
        print(f"projection, {args.gpu_minutes:.0f} min per portrait per GPU + this overhead, 100 prompts:")
        for gpus in (1, 8, 32, 100):
            print(
                f"  {gpus:>3} GPUs: {math.ceil(100 / gpus) * t / 3600:.1f} h "
                f"({gpus * 3600 / t:.1f} portraits/h)"
            )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {
                    "config": args.config,
                    "overrides": overrides,
                    "prompts": n,
                    "results": results,
                    "overhead_per_prompt_s": overhead,
                },
                f,
                indent=1,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())

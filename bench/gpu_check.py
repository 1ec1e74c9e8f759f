#!/usr/bin/env python
"""The whole Portrait3D pipeline at the paper's settings, timed per stage, plus our renderer against
the official one: the measuring half of ``bench/gpu_check.sh`` (see bench/README.md).

Random weights of the real sizes (the released generator ``PortraitGANConfig()``, an SD-1.5-size
UNet / VAE / CLIP text encoder, the LPIPS VGG16) on ``--device``:

* ``candidates``: one CFG UNet call (batch 2) and one VAE decode, timed; 6 images × 50 PLMS steps;
* ``inversion``: ``gan_prior.inversion.inversion_step`` + backward + Adam, timed; 500 steps; posed
  (the SMPL deformation of a seeded body of SMPL's size, p optimised), as the released weights
  invert; the pose-0 step of a checkpoint without SMPL buffers in the notes;
* the extension's own run (bench/extension_run.py): ``configs/portrait3d.yaml`` with these weights,
  ``launch.py --train`` then ``--export`` as threestudio sets them up, shortened (a few SDS and fit
  steps, one validation, a few test views and video frames), each stage timed where the user's run
  executes it: start-up, the SDS training step (render, the guidance's VAE encode + UNet + its
  per-step VAE decode, losses, backward, Adan, logging), validation, the refinement's 21 views +
  SDEdit, the fit step, checkpoint writes, the test views, the official video frames, the rest of
  the test stage, the export; projected to the full configuration's counts;
* on CUDA, the SDS step with ``system.guidance.half_precision_weights=true`` (the fp16 option);
* our renderer against the official one at 128², same inputs, same process (when the official code
  is on disk: ``--official-root``, ``$PORTRAIT3D_OFFICIAL_ROOT`` or /work/official/3DPortraitGAN_pyramid).

Each stage's row: the median time of one unit (the first unit of a stage is a warm-up and not
counted), the count in a full run, the projection, and its memory (bench/harness.py): the true peak
while the stage ran and what was resident when it started. ``--dry-run`` runs the same code with
the tiny models (tiny config, tiny SD, 16–64² images) on the CPU: the table's shape and the code
paths are the real ones, the numbers are not.

    python bench/gpu_check.py --device cuda --out OUT          # on the GPU (gpu_check.sh)
    python bench/gpu_check.py --dry-run --out OUT              # on the CPU, tiny models
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import traceback
from typing import Callable

import extension_run  # bench/ (this script's folder is on sys.path)
import official
import torch
from bench_pipeline import sd15_pipeline
from bench_renderer import make_renderers, render_step
from harness import PeakMemory, fmt_gib, fmt_min, fmt_s, machine_info, markdown_table, sync, timed

from gan_prior.files import write_json, write_text

# Paper §4 (RTX 4090, minutes): inversion ≈ 4, SDS ≈ 22, refinement ≈ 5, whole ≈ 30.
PAPER_4090_MIN = {"inversion": 4.0, "sds": 22.0, "fit": 5.0, "total": 30.0}
TARGET_MIN, TARGET_GIB = 6.0, 10.0
POSED_STEP_CAP_S = 20.0  # a first posed inversion step slower than this is the measurement (no repeats)
# the full configuration's counts (configs/portrait3d.yaml, the official scripts)
FULL = {
    "sds_steps": 2000,
    "refine_steps": 399,
    "val_check_interval": 100,
    "every_n_train_steps": 100,
    "n_test_views": 120,
    "large_frames": 240,
    "small_frames": 120,
}
RUN_STAGES = (
    "start-up",
    "sds step",
    "validation",
    "refinement views + SDEdit",
    "refinement fit step",
    "checkpoint write",
    "test view",
    "official video frame",
    "test stage, rest",
    "export",
)
PROMPT = "upper body photo, portrait of a woman"


# ---------------------------------------------------------------------------------- rows
def row(stage: str, unit: str, per_unit, count: int, memory: dict, steps_timed: int, notes: str = "") -> dict:
    return {
        "stage": stage,
        "unit": unit,
        "per_step_s": per_unit,
        "count": count,
        "projected_s": per_unit * count,
        "steps_timed": steps_timed,
        "peak_bytes": memory.get("peak_bytes"),
        "resident_bytes": memory.get("resident_bytes"),
        "notes": notes,
    }


def failed(stage: str, unit: str, count: int, err: BaseException) -> dict:
    traceback.print_exc()
    return {
        "stage": stage,
        "unit": unit,
        "count": count,
        "per_step_s": None,
        "projected_s": None,
        "peak_bytes": None,
        "resident_bytes": None,
        "error": f"{type(err).__name__}: {err}"[:300],
    }


def measured(stage, unit, step, device, repeats, count, warmup=True) -> dict:
    """A stage timed directly: ``step`` warm-up + ``repeats`` timed calls (bench/harness.py)."""
    with PeakMemory(device) as mem:
        t = timed(step, device, repeats, warmup)
    r = row(stage, unit, t["median_s"], count, mem.final, repeats)
    print(f"  {stage}: {fmt_s(r['per_step_s'])}/{unit} × {count} = {fmt_min(r['projected_s'])}", flush=True)
    return r


def _memory(records: list[dict]) -> dict:
    return {
        "peak_bytes": max(r["peak_bytes"] for r in records),
        "resident_bytes": min(r["resident_bytes"] for r in records),
    }


def run_rows(timer, counts: dict) -> list[dict]:
    """The rows of the extension's run from its :class:`StageTimer` records."""
    rec = timer.records
    rows = []

    def steps(stage):
        later = rec.get(stage, [])
        return later or rec.get(stage + " (first)", [])  # one step only: the warm-up it is

    per = {
        "start-up": (sum(r["seconds"] for r in rec["start-up"]), rec["start-up"]),
        "sds step": (statistics.median(r["seconds"] for r in steps("sds step")), steps("sds step")),
    }
    for stage in ("validation", "checkpoint write", "test view", "export", "refinement views + SDEdit"):
        if rec.get(stage):
            per[stage] = (statistics.median(r["seconds"] for r in rec[stage]), rec[stage])
    if rec.get("refinement fit step") or rec.get("refinement fit step (first)"):
        fit = steps("refinement fit step")
        per["refinement fit step"] = (statistics.median(r["seconds"] for r in fit), fit)
    if rec.get("official videos"):
        videos = rec["official videos"][0]
        per["official video frame"] = (videos["seconds"] / max(1, videos["units"]), [videos])
    if rec.get("test stage"):
        test = rec["test stage"][0]
        views = sum(r["seconds"] for r in rec.get("test view", []))
        videos = sum(r["seconds"] for r in rec.get("official videos", []))
        # the outer record's peak restarts at each inner region (StageTimer), so the stage's memory
        # is the largest of its own and its inner regions' peaks
        inner = rec.get("test view", []) + rec.get("official videos", [])
        per["test stage, rest"] = (max(0.0, test["seconds"] - views - videos), [test] + inner)
    for stage in RUN_STAGES:
        if stage not in per:
            continue
        seconds, records = per[stage]
        unit = {"sds step": "step", "refinement fit step": "step", "test view": "view"}.get(stage, "")
        unit = unit or ("frame" if stage == "official video frame" else "run" if "stage" in stage else "call")
        rows.append(row(stage, unit, seconds, counts[stage], _memory(records), len(records)))
    return rows


def export_steps(trial_dir: str) -> str:
    """The export's own steps, from the ``mesh_fidelity.json`` it wrote (its ``timings_s``), and its
    mesh: what the ``export`` row's time went to."""
    from portrait3d.trial import MESH_REPORT, Trial

    report = Trial(trial_dir).mesh_fidelity
    if not isinstance(report, dict):
        return "no mesh_fidelity.json"
    steps = ", ".join(f"{k} {fmt_s(v)}" for k, v in (report.get("timings_s") or {}).items())
    m = report.get("mesh") or {}

    def psnr(key: str) -> str:
        value = (report.get(key) or {}).get("psnr")
        return f"{value:.2f} dB" if isinstance(value, (int, float)) else str(value)

    return (
        f"{steps}; {m.get('faces')} faces, {m.get('texture_size')}² texture; "
        f"{MESH_REPORT}: textured PSNR {psnr('textured')}, vertex colours {psnr('vertex_colours')}"
    )


# ---------------------------------------------------------------------------------- the pipeline
def pipeline(args, workdir: str) -> dict:
    dev, dry = args.device, args.dry_run
    torch.manual_seed(0)
    rows = []

    def stage(name, unit, count, fn):
        """A stage that fails (say, out of memory) is recorded with its error; the others still run."""
        try:
            result = fn()
        except Exception as err:  # noqa: BLE001  (reported in the table and the JSON)
            result = [failed(name, unit, count, err)]
            if dev.startswith("cuda"):
                torch.cuda.empty_cache()
        rows.extend(result if isinstance(result, list) else [result])
        write_json(os.path.join(args.out, "gpu_check.partial.json"), rows)  # if the call is cut short

    print(f"pipeline at {'tiny (dry run)' if dry else 'paper'} settings on {dev}", flush=True)
    repeats = 1 if dry else 3
    warm = not dry  # the dry run checks the code, not the numbers
    sd_folder, prior = os.path.join(workdir, "sd"), os.path.join(workdir, "prior")
    sd_res, sdedit_steps = candidates(stage, dev, dry, repeats, warm, sd_folder)
    inversion_row = len(rows)  # where the inversion's row goes, measured after the run
    inv_res, measure_inversion = inversion(dev, dry, repeats, warm, prior)
    _free(dev)

    # ---- the extension's run (launch.py --train, --export)
    counts = extension_run.full_counts(FULL)
    if dry:
        config, short = "configs/portrait3d-tiny.yaml", (2, 2)
        weights = [f"system.prior_checkpoint={prior}"]  # the tiny prior with its SMPL buffers
    else:
        config, short = "configs/portrait3d.yaml", (4, 3)
        weights = [
            f"system.prior_checkpoint={prior}",
            f"system.prompt_processor.pretrained_model_name_or_path={sd_folder}",
        ]
    overrides = weights + [
        f"system.prompt_processor.prompt={PROMPT}",
        "system.initializer.source=seed",  # the prompt's initialisation is timed above
        f"exp_root_dir={os.path.join(workdir, 'outputs')}",
        "use_timestamp=false",
        f"system.sds_steps={short[0]}",
        f"system.refine.steps={short[1]}",
        f"trainer.val_check_interval={short[0]}",  # one validation, at the end of SDS
        f"checkpoint.every_n_train_steps={short[0]}",  # last.ckpt once, and the SDS result
        "data.n_test_views=4",  # (threestudio's eval cameras break at 3 views)
        "system.videos.large_frames=3",
        "system.videos.small_frames=2",
        # random weights make a fog that barely reaches the official level σ = 15: threestudio's mean
        # positive σ, so that the export meshes, unwraps and bakes a surface as a trained run's does
        "system.geometry.isosurface_threshold=auto",
    ]

    def the_run():
        timer = extension_run.run(config, overrides + ["tag=run"], dev, workdir)
        rows = run_rows(timer, counts)
        for r in rows:
            if r["stage"] == "export":
                r["notes"] = export_steps(timer.trial_dir)
        return rows

    stage("sds step", "step", counts["sds step"], the_run)
    if dev.startswith("cuda"):  # the fp16 option: SDS steps only

        def fp16_run():
            timer = extension_run.run(
                config,
                overrides
                + ["tag=fp16", "system.guidance.half_precision_weights=true", "system.refine.steps=0"],
                dev,
                workdir,
                test_and_export=False,
            )
            r = next(r for r in run_rows(timer, counts) if r["stage"] == "sds step")
            return {
                **r,
                "stage": "sds step, fp16 guidance (option)",
                "notes": "system.guidance.half_precision_weights=true",
            }

        stage("sds step, fp16 guidance (option)", "step", counts["sds step"], fp16_run)
    # the inversion step last: its posed nearest-face search has never run on a GPU, and a slow one
    # must not leave the run's stages untimed when the call's time runs out
    _free(dev)
    stage("inversion", "step", 500, measure_inversion)
    rows.insert(inversion_row, rows.pop())
    return {
        "rows": rows,
        "settings": {
            "config": config,
            "run_overrides": overrides,
            "full_counts": FULL,
            "inversion_resolution": inv_res,
            "sd_resolution": sd_res,
            "sdedit_steps": sdedit_steps,
        },
    }


def candidates(stage, dev, dry: bool, repeats: int, warm: bool, sd_folder: str) -> tuple[int, int]:
    """One PLMS step of the candidates = one CFG UNet call on batch 2; + a VAE decode per image.
    The SD-1.5-size pipeline is then saved for the run (its guidance, prompt processor and SDEdit
    load it from disk, as a user's do). Returns (image side, SDEdit's step count)."""
    from gan_prior.diffusion import SDEditConfig, sdedit_timesteps

    pipe = sd15_pipeline(dev, tiny=dry)
    sd_res = 64 if dry else 512
    lat = torch.randn(2, 4, sd_res // 8, sd_res // 8, device=dev)
    with torch.no_grad():
        cond, uncond = pipe.encode_prompt("a portrait", dev, 1, True, negative_prompt="")
    text = torch.cat([uncond, cond])

    def unet_call():
        with torch.no_grad():
            pipe.unet(lat, 500, encoder_hidden_states=text)

    def decode():
        with torch.no_grad():
            pipe.vae.decode(lat[:1] / 0.18215)

    name = "candidates (UNet CFG call)"
    stage(name, "call", 300, lambda: measured(name, "call", unet_call, dev, repeats, 6 * 50, warm))
    name = "candidates (VAE decode)"
    stage(name, "image", 6, lambda: measured(name, "image", decode, dev, 1, 6, warm))
    if not dry:
        pipe.save_pretrained(sd_folder, safe_serialization=True)
    return sd_res, len(sdedit_timesteps(pipe.scheduler.config, SDEditConfig()))


def inversion(dev, dry: bool, repeats: int, warm: bool, prior: str) -> tuple[int, Callable[[], dict]]:
    """The generator of the inversion step, saved first as the run's prior (the released
    architecture, random weights, with the SMPL buffers of a seeded body of SMPL's size, as
    model_512.pkl has them), and the step's measurement, to call once the run is timed.

    The step as the released weights take it: the official synthesis path (128² render + SR → 256²)
    in body pose p with the SMPL mesh-guided deformation, 96 + 96 samples, LPIPS-VGG16, backward,
    Adam over w+, the noise and p; the same step at pose 0 (a checkpoint without SMPL buffers) goes
    in the row's notes. Returns ``(compared resolution, measure)``."""
    from gan_prior import PortraitGANConfig, canonical_label, tiny_config
    from gan_prior.inversion import InversionConfig, inversion_step
    from gan_prior.perceptual import VGG16Distance
    from gan_prior.synthetic_smpl import posable_random_generator, smpl_like_template

    cfg = tiny_config(pose_branch=True) if dry else PortraitGANConfig()
    G = posable_random_generator(cfg, seed=0, template=smpl_like_template(0, 8, 10) if dry else None)
    cfg = G.cfg
    G.save(prior)
    res = 32 if dry else InversionConfig().resolution
    inv_cfg = InversionConfig(resolution=res)

    def measure() -> dict:
        G.to(dev)
        c = canonical_label(1).to(dev)
        with torch.no_grad():
            ws = G.mapping(torch.randn(1, cfg.z_dim, generator=torch.Generator().manual_seed(0)).to(dev), c)
        vgg = VGG16Distance.load(None).to(dev)
        w_opt = ws.detach().clone().requires_grad_(True)
        pose = torch.tensor([[0.1, -0.1, 0.05, 0.1, 0.05, -0.1]], device=dev, requires_grad=True)
        noise = [b for name, b in G.backbone.synthesis.named_buffers() if name.endswith("noise_const")]
        for b in noise:
            b.requires_grad_(True)
        opt = torch.optim.Adam([w_opt, pose] + noise, lr=0.01)
        target = torch.rand(1, 3, res, res, device=dev) * 2 - 1

        def step(posed: bool):
            _, loss = inversion_step(
                G, w_opt, noise, target, c, vgg, inv_cfg, 0.3, 1.0, pose if posed else None
            )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        try:
            # the posed step's nearest-face search was never timed on a GPU (24 µs a point on 2 CPU
            # cores): a first step slower than POSED_STEP_CAP_S is the measurement (warm-up included)
            with PeakMemory(dev) as mem:
                sync(dev)
                t0 = time.perf_counter()
                step(True)
                sync(dev)
                first = time.perf_counter() - t0
            if first < POSED_STEP_CAP_S:
                r = measured("inversion", "step", lambda: step(True), dev, repeats, 500, warmup=False)
            else:
                r = row("inversion", "step", first, 500, mem.final, 1)
                print(
                    f"  inversion: {fmt_s(first)}/step (one step) × 500 = {fmt_min(first * 500)}", flush=True
                )
            plain = timed(lambda: step(False), dev, repeats, warm)["median_s"]
            r["notes"] = (
                f"posed (SMPL deformation, p optimised; first step {fmt_s(first)}); the same step at "
                f"pose 0 (a checkpoint without SMPL buffers): {fmt_s(plain)}/step, {fmt_min(plain * 500)}"
            )
            return r
        finally:
            for b in noise:
                b.requires_grad_(False)
            G.cpu()

    return res, measure


def _free(device) -> None:
    import gc

    gc.collect()
    if str(device).startswith("cuda"):
        torch.cuda.empty_cache()


def renderer_vs_official(args) -> dict:
    """Ours vs the official renderer, same inputs, same process, interleaved (bench_renderer)."""
    from gan_prior import PortraitGAN, PortraitGANConfig, canonical_label

    dev = args.device
    root = official.find_root(args.official_root)
    if root is None:
        return {
            "skipped": f"no official code (--official-root, $PORTRAIT3D_OFFICIAL_ROOT, {official.DEFAULT_ROOT})"
        }
    res, repeats = (16, 1) if args.dry_run else (128, 10)
    G = PortraitGAN.random(PortraitGANConfig(), seed=0).to(dev)
    c = canonical_label(1).to(dev)
    gen = torch.Generator().manual_seed(0)
    ws = G.mapping(torch.randn(1, 512, generator=gen).to(dev), c)
    # a random pyramid with the released level sizes (synthesis is not what is compared here)
    levels = {
        r: (torch.randn(1, 3, 36, r, r, generator=gen) * 0.5).to(dev).requires_grad_(True)
        for r in G.cfg.level_sizes
    }
    renders = {impl: make_renderers(impl, G, ws, c, root, dev) for impl in ("ours", "official")}
    with torch.no_grad():
        a, b = renders["ours"](levels, res, False, True), renders["official"](levels, res, False, True)
        agreement = (a - b).abs().max().item()
    times = {impl: {"forward_s": [], "fwd_bwd_s": []} for impl in renders}
    steps = {impl: render_step(render, levels, dev, False) for impl, render in renders.items()}
    for i in range(repeats + 1):
        for impl in ("ours", "official") if i % 2 == 0 else ("official", "ours"):
            forward_s, fwd_bwd_s, _, _ = steps[impl](res)
            if i > 0:  # the first round warms up
                times[impl]["forward_s"].append(forward_s)
                times[impl]["fwd_bwd_s"].append(fwd_bwd_s)
    med = {impl: {k: statistics.median(v) for k, v in d.items()} for impl, d in times.items()}
    return {
        "official_root": root,
        "resolution": res,
        "repeats": repeats,
        "agreement_max_abs": agreement,
        "median": med,
        "ratio_forward": med["official"]["forward_s"] / med["ours"]["forward_s"],
        "ratio_fwd_bwd": med["official"]["fwd_bwd_s"] / med["ours"]["fwd_bwd_s"],
    }


# ---------------------------------------------------------------------------------- report
def table(result: dict) -> str:
    info, rows = result["machine"], result["pipeline"]["rows"]
    gib = 2**30
    dry = result["dry_run"]
    lines = [
        f"## Portrait3D GPU check{' (DRY RUN: tiny models on CPU, numbers not meaningful)' if dry else ''}",
        "",
        f"- device: {info['device']}"
        + (f" ({info['gpu']}, {info['gpu_memory_bytes'] / gib:.0f} GiB)" if "gpu" in info else "")
        + f"; torch {info['torch']}, Python {info['python']}; CPU {info['cpu']}",
        f"- settings: {result['pipeline']['settings']['config']}, run shortened and projected to "
        f"{result['pipeline']['settings']['full_counts']}",
        f"- memory: true peak while the stage ran, and what was resident when it started "
        f"({result['memory_method']})",
        "",
    ]
    body = []
    for r in rows:
        if r.get("error"):
            body.append([r["stage"], f"failed: {r['error']}", r["count"], "–", "–", "–"])
            continue
        body.append(
            [
                r["stage"],
                f"{fmt_s(r['per_step_s'])}/{r['unit']}",
                r["count"],
                fmt_min(r["projected_s"]),
                fmt_gib(r["peak_bytes"]),
                fmt_gib(r["resident_bytes"]),
            ]
        )
    total, peak = result["projected_total_s"], result["peak_bytes"]
    body.append(
        ["**projected total** (fp32 guidance)", "", "", f"**{fmt_min(total)}**", f"**{fmt_gib(peak)}**", ""]
    )
    lines += markdown_table(("stage", "per unit", "count", "projected", "peak", "resident at start"), body)
    lines += [""] + [f"- {r['stage']}: {r['notes']}" for r in rows if r.get("notes")]
    lines += [
        "",
        f"Paper (RTX 4090): inversion ≈ {PAPER_4090_MIN['inversion']:.0f} min, SDS ≈ "
        f"{PAPER_4090_MIN['sds']:.0f} min, refinement ≈ {PAPER_4090_MIN['fit']:.0f} min, whole ≈ "
        f"{PAPER_4090_MIN['total']:.0f} min. Target: ≤ {TARGET_MIN:.0f} min, ≤ {TARGET_GIB:.0f} GiB.",
    ]
    gaps = []
    ok = [r for r in rows if not r.get("error") and "option" not in r["stage"]]
    if len(ok) < len([r for r in rows if "option" not in r["stage"]]):
        gaps.append("failed stages: " + ", ".join(r["stage"] for r in rows if r.get("error")))
    if total / 60 > TARGET_MIN:
        big = sorted(ok, key=lambda r: -r["projected_s"])[:3]
        gaps.append(
            f"time: {total / 60:.1f} min > {TARGET_MIN:.0f}; largest stages: "
            + ", ".join(f"{r['stage']} {r['projected_s'] / 60:.1f} min" for r in big)
        )
    if peak / gib > TARGET_GIB:
        top = max(ok, key=lambda r: r["peak_bytes"])
        gaps.append(f"memory: {peak / gib:.1f} GiB > {TARGET_GIB:.0f}; largest: {top['stage']}")
    lines += ["", "Between this and the target: " + ("; ".join(gaps) if gaps else "nothing (both met).")]
    rv = result["renderer"]
    lines += ["", "### Renderer vs official (same inputs, same process, interleaved)", ""]
    if "skipped" in rv:
        lines.append(f"skipped: {rv['skipped']}")
    else:
        m = rv["median"]
        lines += [
            f"{rv['resolution']}², 48+48 samples, jitter on, median of {rv['repeats']}; "
            f"jitter-off agreement max |ours − official| = {rv['agreement_max_abs']:.3g} "
            "(the official custom ops in their reference implementation)",
            "",
        ]
        lines += markdown_table(
            ("impl", "forward", "forward+backward"),
            [
                ["ours", fmt_s(m["ours"]["forward_s"]), fmt_s(m["ours"]["fwd_bwd_s"])],
                ["official", fmt_s(m["official"]["forward_s"]), fmt_s(m["official"]["fwd_bwd_s"])],
                ["ratio (official / ours)", f"{rv['ratio_forward']:.2f}×", f"{rv['ratio_fwd_bwd']:.2f}×"],
            ],
        )
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    ap.add_argument("--dry-run", action="store_true", help="tiny models on the CPU (tests the script)")
    ap.add_argument("--out", required=True, help="folder for gpu_check.md and gpu_check.json")
    ap.add_argument(
        "--official-root",
        default=None,
        help=f"default: $PORTRAIT3D_OFFICIAL_ROOT, else {official.DEFAULT_ROOT}",
    )
    ap.add_argument("--workdir", default=None, help="scratch folder (default: a temporary one)")
    args = ap.parse_args(argv)
    if args.dry_run:
        args.device = args.device or "cpu"
    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit(
            "gpu_check.py: --device cuda but torch sees no GPU (torch.cuda.is_available() is False)"
        )
    args.out = os.path.abspath(args.out)
    os.makedirs(args.out, exist_ok=True)
    workdir = os.path.abspath(args.workdir or tempfile.mkdtemp(prefix="gpu_check_"))
    t0 = time.time()
    result_pipeline = pipeline(args, workdir)
    try:
        renderer = renderer_vs_official(args)
    except Exception as err:  # noqa: BLE001  (the pipeline's results are written regardless)
        traceback.print_exc()
        renderer = {"skipped": f"failed: {type(err).__name__}: {err}"[:300]}
    rows = result_pipeline["rows"]
    ok = [r for r in rows if not r.get("error") and "option" not in r["stage"]]
    result = {
        "dry_run": args.dry_run,
        "machine": machine_info(args.device),
        "pipeline": result_pipeline,
        "renderer": renderer,
        "projected_total_s": sum(r["projected_s"] for r in ok),
        "peak_bytes": max((r["peak_bytes"] for r in ok), default=0),
        "failed_stages": [r["stage"] for r in rows if r.get("error")],
        "memory_method": PeakMemory(args.device).start().method,
        "wall_s": time.time() - t0,
    }
    markdown = table(result)
    write_json(os.path.join(args.out, "gpu_check.json"), result)
    write_text(os.path.join(args.out, "gpu_check.md"), markdown)
    print(markdown)
    print(f"(wall {result['wall_s']:.0f} s; written {args.out}/gpu_check.md and .json)")
    return 1 if result["failed_stages"] else 0


if __name__ == "__main__":
    sys.exit(main())

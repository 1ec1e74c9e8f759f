#!/usr/bin/env python
"""The whole Portrait3D pipeline at the paper's settings, timed per stage, plus our renderer against
the official one: the measuring half of ``bench/gpu_check.sh`` (see bench/README.md).

Every stage runs a few real steps with random weights of the real sizes (the released generator
``PortraitGANConfig()``, an SD-1.5-size UNet / VAE / CLIP text encoder built from their configs,
the LPIPS VGG16) on ``--device``; the table gives the median time of one step, the projected time
of the full stage at the official counts, and the stage's peak memory
(``torch.cuda.max_memory_allocated`` on CUDA; on CPU the growth of the resident set, see
bench_renderer.PeakMemory). ``--dry-run`` runs the same code with tiny models (tiny generator,
tiny SD, 32² renders) on the CPU in about a minute: the table's shape and the code paths are the
real ones, the numbers are not.

Stages and official counts (paper §3–3.5, official scripts):

* ``candidates``: 6 images × 50 PLMS steps, each a UNet call on batch 2 (CFG), + 6 VAE decodes;
* ``inversion``: 500 steps of synthesis → 256² render (48+48) → LPIPS-VGG16 → backward → Adam;
* ``sds``: 2000 steps of 128² render → 512² → VAE encode → UNet (batch 2, CFG 100) → SDS loss →
  backward into the pyramid → Adan (fp32, the official setting, and fp16 guidance as an option);
* ``views + sdedit``: 21 views at 512² (96+96 samples, GAN background), each refined by SDEdit
  (t = 200: the DDIM steps ≤ 200 of a 50-step schedule, CFG 7.5);
* ``fit``: 399 steps of a 256² patch (48+48, no background) → masked L2 → backward → Adan;
* ``videos``: 240 + 120 frames at 512² (96+96, background).

    python bench/gpu_check.py --device cuda --out OUT          # on the GPU (gpu_check.sh)
    python bench/gpu_check.py --dry-run --out OUT              # on the CPU, tiny models
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import traceback

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "bench")
for _p in (ROOT, BENCH):
    if _p not in sys.path:
        sys.path.insert(0, _p)

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from bench_pipeline import sd15_unet  # noqa: E402
from bench_renderer import PeakMemory, _stepper, machine_info, make_renderers, sync  # noqa: E402

from gan_prior.files import write_json, write_text  # noqa: E402

# Paper Table / §4 (RTX 4090, minutes): inversion ≈ 4, SDS ≈ 22, refinement ≈ 5, whole ≈ 30.
PAPER_4090_MIN = {"inversion": 4.0, "sds": 22.0, "fit": 5.0, "total": 30.0}
TARGET_MIN, TARGET_GIB = 6.0, 10.0


# ---------------------------------------------------------------------------------- models
def sd_pipeline(dry_run: bool, device: str):
    """A Stable Diffusion pipeline with random weights: SD-1.5 sizes (UNet 320…1280, VAE 128…512,
    a 12-layer 768-wide CLIP text tower), or the tests' tiny one for the dry run. The tokenizer is
    the tiny models' byte-level one (no vocabulary files exist offline; the text tower's cost does
    not depend on its vocabulary size)."""
    from diffusers import AutoencoderKL, StableDiffusionPipeline
    from transformers import CLIPTextConfig, CLIPTextModel

    from gan_prior.tiny_models import (
        _byte_level_tokenizer,
        build_tiny_stable_diffusion,
        stable_diffusion_from_parts,
    )

    torch.manual_seed(0)
    if dry_run:
        folder = tempfile.mkdtemp(prefix="gpu_check_sd_")
        build_tiny_stable_diffusion(folder)
        pipe = StableDiffusionPipeline.from_pretrained(
            folder, safety_checker=None, requires_safety_checker=False
        )
    else:
        tok = _byte_level_tokenizer()
        text = CLIPTextModel(
            CLIPTextConfig(
                vocab_size=len(tok),
                hidden_size=768,
                intermediate_size=3072,
                num_hidden_layers=12,
                num_attention_heads=12,
                max_position_embeddings=77,
                bos_token_id=tok.bos_token_id,
                eos_token_id=tok.eos_token_id,
                pad_token_id=tok.pad_token_id,
            )
        )
        vae = AutoencoderKL(
            in_channels=3,
            out_channels=3,
            latent_channels=4,
            sample_size=512,
            block_out_channels=(128, 256, 512, 512),
            layers_per_block=2,
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
        )
        pipe = stable_diffusion_from_parts(vae, text, tok, sd15_unet())
    pipe = pipe.to(device)
    for m in (pipe.text_encoder, pipe.vae, pipe.unet):
        m.eval().requires_grad_(False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


class Adan(torch.optim.Optimizer):
    """Stand-in with Adan's per-parameter cost (three moment buffers), for timing only."""

    def __init__(self, params, lr=1.0):
        super().__init__(params, dict(lr=lr))

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                st = self.state[p]
                if not st:
                    st["m"], st["v"], st["n"], st["prev"] = (torch.zeros_like(p) for _ in range(4))
                diff = p.grad - st["prev"]
                st["m"].mul_(0.98).add_(p.grad, alpha=0.02)
                st["v"].mul_(0.92).add_(diff, alpha=0.08)
                st["n"].mul_(0.99).addcmul_(p.grad + 0.92 * diff, p.grad + 0.92 * diff, value=0.01)
                st["prev"].copy_(p.grad)
                p.addcdiv_(st["m"] + 0.92 * st["v"], st["n"].sqrt().add_(1e-8), value=-group["lr"] * 1e-3)


# ---------------------------------------------------------------------------------- timing
def _write_partial(out: str, rows: list) -> None:
    """The rows so far, in case the call is cut short (the device run's time limit)."""
    write_json(os.path.join(out, "gpu_check.partial.json"), rows)


def measure(name, step, device, n_steps, count, unit, notes="", warmup=True):
    """Warm-up once (unless ``warmup`` is False), then time ``n_steps`` calls of ``step``; peak
    memory over all of them."""
    mem = PeakMemory(device)
    mem.start()
    t0 = time.perf_counter()
    if warmup:
        step()
        sync(device)
    warm = time.perf_counter() - t0
    times = []
    for _ in range(n_steps):
        t0 = time.perf_counter()
        step()
        sync(device)
        times.append(time.perf_counter() - t0)
    per = statistics.median(times)
    row = {
        "stage": name,
        "unit": unit,
        "per_step_s": per,
        "count": count,
        "projected_s": per * count,
        "warmup_s": warm,
        "steps_timed": n_steps,
        "peak_bytes": max(0, mem.peak_bytes()),
        "notes": notes,
    }
    print(
        f"  {name}: {per:.4f} s/{unit} × {count} = {per * count / 60:.2f} min, "
        f"peak {row['peak_bytes'] / 2**30:.2f} GiB",
        flush=True,
    )
    return row


def run(args) -> dict:
    from gan_prior import PortraitGAN, PortraitGANConfig, canonical_label, tiny_config
    from gan_prior.diffusion import SDEditConfig, sdedit, sdedit_timesteps
    from gan_prior.inversion import InversionConfig, inversion_step
    from gan_prior.perceptual import VGG16Distance
    from gan_prior.refinement import RefineFitConfig, patch_loss, refinement_labels

    dev, dry = args.device, args.dry_run
    torch.manual_seed(0)
    cfg = tiny_config() if dry else PortraitGANConfig()
    G = PortraitGAN.random(cfg, seed=0).to(dev)
    c = canonical_label(1).to(dev)
    z = torch.randn(1, cfg.z_dim, generator=torch.Generator().manual_seed(0)).to(dev)
    with torch.no_grad():
        ws = G.mapping(z, c)
        pyramid = G.synthesize_pyramid(ws)
    levels = {r: t.detach().clone().requires_grad_(True) for r, t in pyramid.items()}
    pipe = sd_pipeline(dry, dev)
    vae, unet = pipe.vae, pipe.unet
    # resolutions: the paper's, or scaled down for the dry run (same code paths)
    inv_res = 32 if dry else InversionConfig().resolution
    sds_res, view_res, sd_res = (32, 32, 64) if dry else (128, 512, 512)
    fit_cfg = RefineFitConfig(resolution=32, patch_resolution=16) if dry else RefineFitConfig()
    samples = (12, 12) if dry else (96, 96)
    n = (
        {"candidates": 1, "inversion": 1, "sds": 1, "views": 1, "fit": 1, "videos": 1}
        if dry
        else {"candidates": 3, "inversion": 3, "sds": 5, "views": 2, "fit": 3, "videos": 2}
    )
    chunk = 16384  # rays per renderer call of views and videos, as the system's default
    sdedit_steps = len(sdedit_timesteps(pipe.scheduler.config, SDEditConfig()))
    with torch.no_grad():
        cond, uncond = pipe.encode_prompt("a portrait", dev, 1, True, negative_prompt="")
    text = torch.cat([uncond, cond])
    lat_side = sd_res // 8
    rows = []

    def m(name, step, device, n_steps, count, unit, **k):
        """measure(), the dry run without warm-ups (it checks the code, not the numbers); a stage
        that fails (say, out of memory) is recorded with its error and the others still run."""
        try:
            row = measure(name, step, device, n_steps, count, unit, warmup=not dry, **k)
        except Exception as err:  # noqa: BLE001  (reported in the table and the JSON)
            traceback.print_exc()
            row = {
                "stage": name,
                "unit": unit,
                "count": count,
                "per_step_s": None,
                "projected_s": None,
                "peak_bytes": None,
                "error": f"{type(err).__name__}: {err}"[:300],
            }
            if device.startswith("cuda"):
                torch.cuda.empty_cache()
        _write_partial(args.out, rows + [row])
        return row

    print(f"pipeline at {'tiny (dry run)' if dry else 'paper'} settings on {dev}", flush=True)

    # ---- candidates: one PLMS step = one CFG UNet call on batch 2; + VAE decode per image
    lat = torch.randn(2, 4, lat_side, lat_side, device=dev)

    def candidate_step():
        with torch.no_grad():
            unet(lat, 500, encoder_hidden_states=text)

    rows.append(m("candidates (UNet CFG call)", candidate_step, dev, n["candidates"], 6 * 50, "call"))

    def decode():
        with torch.no_grad():
            vae.decode(lat[:1] / 0.18215)

    rows.append(m("candidates (VAE decode)", decode, dev, 1, 6, "image"))

    # ---- inversion
    vgg = VGG16Distance.load(None).to(dev)
    inv_cfg = InversionConfig(resolution=inv_res)
    w_opt = ws.detach().clone().requires_grad_(True)
    noise = [b for name, b in G.backbone.synthesis.named_buffers() if name.endswith("noise_const")]
    for b in noise:
        b.requires_grad_(True)
    opt = torch.optim.Adam([w_opt] + noise, lr=0.01)
    target = torch.rand(1, 3, inv_res, inv_res, device=dev) * 2 - 1

    def inversion():
        _, loss = inversion_step(
            G, w_opt, noise, target, c, lambda a, b: vgg(a, b), inv_cfg, t=0.3, w_std=1.0
        )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    rows.append(m("inversion", inversion, dev, n["inversion"], 500, "step"))
    for b in noise:
        b.requires_grad_(False)
    opt = w_opt = None  # free them before the SDS stage

    # ---- SDS (fp32 guidance, the official setting; then fp16 guidance)
    alphas = torch.linspace(0.9991, 0.0047, 1000, device=dev)  # SD's alphas_cumprod range

    def sds_factory(vae_, unet_, dtype):
        adan = Adan(list(levels.values()))
        text_ = text.to(dtype)

        def sds():
            image = G.render(levels, ws, c, resolution=sds_res, background=False)["image"]
            rgb = F.interpolate(
                (image * 0.5 + 0.5).clamp(0, 1), (sd_res, sd_res), mode="bilinear", align_corners=False
            )
            latents = vae_.encode((rgb * 2 - 1).to(dtype)).latent_dist.sample() * 0.18215
            t = torch.randint(20, 400, (1,), device=dev)
            noise_ = torch.randn_like(latents)
            a = alphas[t].to(dtype)
            with torch.no_grad():
                noisy = a.sqrt() * latents + (1 - a).sqrt() * noise_
                pred_u, pred_c = unet_(torch.cat([noisy] * 2), t, encoder_hidden_states=text_).sample.chunk(2)
                grad = (1 - a) * (pred_u + 100.0 * (pred_c - pred_u) - noise_)
            loss = 0.5 * F.mse_loss(latents.float(), (latents - grad).detach().float(), reduction="sum")
            for p in levels.values():
                p.grad = None
            loss.backward()
            adan.step()

        return sds

    rows.append(m("sds (fp32 guidance)", sds_factory(vae, unet, torch.float32), dev, n["sds"], 2000, "step"))
    if dev.startswith("cuda"):
        vae16, unet16 = (
            m.__class__.from_config(m.config).half().to(dev).eval().requires_grad_(False) for m in (vae, unet)
        )
        rows.append(
            m(
                "sds (fp16 guidance, option)",
                sds_factory(vae16, unet16, torch.float16),
                dev,
                n["sds"],
                2000,
                "step",
                notes="system.guidance.half_precision_weights=true",
            )
        )
        del vae16, unet16

    # ---- refinement: 21 views + SDEdit, then the fit
    labels = refinement_labels(0).to(dev)
    frozen = {r: t.detach() for r, t in levels.items()}

    def view():
        """One 512² view (the refinement views and the video frames render the same way)."""
        with torch.no_grad():
            return G.render(
                frozen,
                ws,
                labels[:1],
                resolution=view_res,
                deterministic=True,
                chunk=chunk,
                depth_resolution=samples[0],
                depth_resolution_importance=samples[1],
            )["image"]

    rows.append(m("refinement views (render)", view, dev, n["views"], 21, "view"))
    img = torch.rand(1, 3, sd_res, sd_res, device=dev) * 2 - 1

    def sdedit_one():
        sdedit(pipe, img, "a portrait", SDEditConfig(), progress=False)

    rows.append(m(f"refinement SDEdit ({sdedit_steps} CFG steps)", sdedit_one, dev, 1, 21, "view"))
    targets = torch.rand(1, 3, fit_cfg.resolution, fit_cfg.resolution, device=dev) * 2 - 1
    adan = Adan(list(levels.values()))

    def fit():
        loss = patch_loss(G, levels, ws, labels[:1], targets, 0, 0, fit_cfg)
        for p in levels.values():
            p.grad = None
        loss.backward()
        adan.step()

    rows.append(m("refinement fit", fit, dev, n["fit"], 399, "step"))

    # ---- videos
    def frame():
        view().cpu()

    rows.append(m("videos (frame)", frame, dev, n["videos"], 240 + 120, "frame"))
    return {
        "rows": rows,
        "settings": {
            "inversion_resolution": inv_res,
            "sds_resolution": sds_res,
            "view_resolution": view_res,
            "sd_resolution": sd_res,
            "fit": vars(fit_cfg),
            "view_samples": samples,
            "sdedit_steps": sdedit_steps,
            "steps_timed": n,
            "chunk": chunk,
        },
    }


def renderer_vs_official(args) -> dict:
    """Ours vs the official renderer, same inputs, same process, interleaved (bench_renderer)."""
    from gan_prior import PortraitGAN, PortraitGANConfig, canonical_label

    dev = args.device
    root = args.official_root
    if not root or not os.path.isfile(os.path.join(root, "training", "neural_renderer.py")):
        return {"skipped": f"no official code at {root!r} (PORTRAIT3D_OFFICIAL_ROOT)"}
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
    steps = {impl: _stepper(render, levels, dev, False) for impl, render in renders.items()}
    for i in range(repeats + 1):
        for impl in ("ours", "official") if i % 2 == 0 else ("official", "ours"):
            forward_s, fwd_bwd_s, _, _ = steps[impl](res)
            if i > 0:  # the first round warms up
                times[impl]["forward_s"].append(forward_s)
                times[impl]["fwd_bwd_s"].append(fwd_bwd_s)
    med = {impl: {k: statistics.median(v) for k, v in d.items()} for impl, d in times.items()}
    return {
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
        + (f" ({info['gpu']})" if "gpu" in info else "")
        + f"; torch {info['torch']}, Python {info['python']}; CPU {info['cpu']}",
        f"- settings: {json.dumps(result['pipeline']['settings'])}",
        f"- peak memory: {result['memory_method']}",
        "",
        "| stage | per step | count | projected | peak memory |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        if r.get("error"):
            lines.append(f"| {r['stage']} | failed: {r['error']} | {r['count']} | – | – |")
            continue
        lines.append(
            f"| {r['stage']} | {r['per_step_s'] * 1e3:.1f} ms/{r['unit']} | {r['count']} | "
            f"{r['projected_s'] / 60:.2f} min | {r['peak_bytes'] / gib:.2f} GiB |"
        )
    total, peak = result["projected_total_s"], result["peak_bytes"]
    lines += [
        f"| **projected total** (fp32 guidance) | | | **{total / 60:.2f} min** | **{peak / gib:.2f} GiB** |",
        "",
        f"Paper (RTX 4090): inversion ≈ {PAPER_4090_MIN['inversion']:.0f} min, SDS ≈ "
        f"{PAPER_4090_MIN['sds']:.0f} min, refinement ≈ {PAPER_4090_MIN['fit']:.0f} min, whole ≈ "
        f"{PAPER_4090_MIN['total']:.0f} min. Target: ≤ {TARGET_MIN:.0f} min, ≤ {TARGET_GIB:.0f} GiB.",
    ]
    gaps = []
    ok = [r for r in rows if not r.get("error")]
    if len(ok) < len(rows):
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
            f"jitter-off agreement max |ours − official| = {rv['agreement_max_abs']:.3g}",
            "",
            "| impl | forward | forward+backward |",
            "|---|---:|---:|",
            f"| ours | {m['ours']['forward_s'] * 1e3:.1f} ms | {m['ours']['fwd_bwd_s'] * 1e3:.1f} ms |",
            f"| official | {m['official']['forward_s'] * 1e3:.1f} ms | {m['official']['fwd_bwd_s'] * 1e3:.1f} ms |",
            f"| ratio (official / ours) | {rv['ratio_forward']:.2f}× | {rv['ratio_fwd_bwd']:.2f}× |",
        ]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    ap.add_argument("--dry-run", action="store_true", help="tiny models on the CPU (tests the script)")
    ap.add_argument("--out", required=True, help="folder for gpu_check.md and gpu_check.json")
    ap.add_argument("--official-root", default=os.environ.get("PORTRAIT3D_OFFICIAL_ROOT"))
    args = ap.parse_args(argv)
    if args.dry_run:
        args.device = args.device or "cpu"
    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit(
            "gpu_check.py: --device cuda but torch sees no GPU (torch.cuda.is_available() is False)"
        )
    os.makedirs(args.out, exist_ok=True)
    t0 = time.time()
    pipeline = run(args)
    try:
        renderer = renderer_vs_official(args)
    except Exception as err:  # noqa: BLE001  (the pipeline's results are written regardless)
        traceback.print_exc()
        renderer = {"skipped": f"failed: {type(err).__name__}: {err}"[:300]}
    rows = pipeline["rows"]
    ok = [r for r in rows if not r.get("error")]
    total = sum(r["projected_s"] for r in ok if "fp16" not in r["stage"])
    result = {
        "dry_run": args.dry_run,
        "machine": machine_info(args.device),
        "pipeline": pipeline,
        "renderer": renderer,
        "projected_total_s": total,
        "peak_bytes": max((r["peak_bytes"] for r in ok), default=0),
        "failed_stages": [r["stage"] for r in rows if r.get("error")],
        "memory_method": (
            "torch.cuda.max_memory_allocated − memory_allocated before, per stage"
            if args.device.startswith("cuda")
            else "resident-set growth per stage (VmHWM − VmRSS before)"
        ),
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

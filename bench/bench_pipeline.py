#!/usr/bin/env python
"""Per-step cost of the whole pipeline at full size, for planning a run.

Times one unit of every step with the real architectures and random weights (no weights needed):

* ``pyramid``: mapping + pyramid synthesis (levels 8…512) of the released configuration;
* ``inversion step``: synthesis + the official synthesis path (128² render with 48+48 samples and
  the background, superresolution to 512², area resize to 256²) + VGG16 distance, forward+backward;
  also ``inversion step (raw 256²)``, the former path (256² neural render, no SR), with the ratio;
* ``sd unet``: one SD-1.5-size UNet call (64² latents, batch 2 = CFG) — candidates (6×50 steps),
  SDS (one per step) and SDEdit (21×10 steps) are made of these;
* ``sds render``: 128² render (48+48) forward+backward into the pyramid (one SDS step's render);
* ``view render``: one refinement view at 512² with 96+96 samples and the GAN background (timed
  at ``--view-resolution`` and scaled by the pixel count);
* ``fit step``: one refinement patch (256², 48+48, no background) forward+backward (timed at
  ``--patch-resolution`` and scaled);

then multiplies by the official counts (500 inversion steps, 300 UNet calls for candidates, 2000
SDS steps, 21 views, 210 SDEdit UNet calls, 399 fit steps) and prints the projected minutes, with
the true peak memory of the whole run (bench/harness.py). Projections from scaled-down timings
are marked ``~``.

    PYTHONPATH=. python bench/bench_pipeline.py                              # CPU: ~5 min
    PYTHONPATH=. python bench/bench_pipeline.py --device cuda --view-resolution 512 --patch-resolution 256
"""

from __future__ import annotations

import argparse
import json

import harness  # bench/harness.py (the script's folder is on sys.path)
import torch

from gan_prior import PortraitGAN, PortraitGANConfig, canonical_label
from gan_prior.inversion import InversionConfig, synthesize_for_distance
from gan_prior.perceptual import VGG16Distance


def timed(fn, device: str, repeats: int) -> float:
    """The median of ``repeats`` timed calls after a warm-up (bench/harness.py)."""
    return harness.timed(fn, device, repeats)["median_s"]


def sd15_unet():
    """The SD-1.5 UNet's architecture (860 M parameters), random weights."""
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=64,
        cross_attention_dim=768,
        attention_head_dim=8,
        block_out_channels=(320, 640, 1280, 1280),
        layers_per_block=2,
    ).eval()


def sd15_pipeline(device, tiny: bool = False):
    """A Stable Diffusion pipeline with random weights of SD-1.5's sizes (the UNet above, the VAE
    128…512, a 12-layer 768-wide CLIP text tower), frozen, on ``device``; ``tiny``: the tests' tiny
    SD. The tokenizer is the tiny models' byte-level one (no vocabulary files exist offline; the text
    tower's cost does not depend on its vocabulary size)."""
    from diffusers import AutoencoderKL, StableDiffusionPipeline
    from transformers import CLIPTextConfig, CLIPTextModel

    from gan_prior.tiny_models import byte_level_tokenizer, stable_diffusion_from_parts, tiny_model_path

    torch.manual_seed(0)
    if tiny:
        pipe = StableDiffusionPipeline.from_pretrained(
            tiny_model_path("stable-diffusion"), safety_checker=None, requires_safety_checker=False
        )
    else:
        tok = byte_level_tokenizer()
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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--view-resolution", type=int, default=64, help="timed size of a 512² view (scaled up)")
    p.add_argument(
        "--patch-resolution", type=int, default=64, help="timed size of a 256² fit patch (scaled up)"
    )
    p.add_argument(
        "--no-unet", action="store_true", help="skip the SD-1.5-size UNet (3.4 GB of random weights)"
    )
    p.add_argument(
        "--only",
        nargs="*",
        choices=("pyramid", "inversion", "sds", "view", "fit", "unet"),
        default=None,
        help="time only these steps",
    )
    p.add_argument("--json", default=None)
    args = p.parse_args()

    def want(step: str) -> bool:
        return args.only is None or step in args.only

    dev = args.device
    mem = harness.PeakMemory(dev).start()  # the run's true peak (bench/harness.py)
    torch.manual_seed(0)
    G = PortraitGAN.random(PortraitGANConfig()).to(dev).eval().requires_grad_(False)
    c = canonical_label(1).to(dev)
    z = torch.randn(1, 512, device=dev)
    rows = {}

    with torch.no_grad():
        ws = G.mapping(z, c)
    if want("pyramid"):
        rows["pyramid"] = (timed(lambda: G.synthesize_pyramid(G.mapping(z, c)), dev, args.repeats), 1, "")
    pyramid = {r: t.detach().requires_grad_(True) for r, t in G.synthesize_pyramid(ws).items()}

    vgg = VGG16Distance.load(None).to(dev)
    target = torch.rand(1, 3, 256, 256, device=dev) * 2 - 1
    w_opt = ws.clone().requires_grad_(True)

    def inversion_step(mode):
        img = synthesize_for_distance(G, w_opt, c, InversionConfig(mode=mode))
        vgg(img, target).sum().backward()

    inversion_ratio = None
    if want("inversion"):
        rows["inversion step"] = (timed(lambda: inversion_step("official"), dev, args.repeats), 500, "")
        rows["inversion step (raw 256²)"] = (timed(lambda: inversion_step("raw"), dev, args.repeats), 500, "")
        inversion_ratio = rows["inversion step"][0] / rows["inversion step (raw 256²)"][0]

    def sds_render():
        G.render(pyramid, ws, c, resolution=128, background=False)["image"].square().mean().backward()

    if want("sds"):
        rows["sds render"] = (timed(sds_render, dev, args.repeats), 2000, "")

    if want("view"):
        v = args.view_resolution
        with torch.no_grad():
            t = timed(
                lambda: G.render(
                    pyramid,
                    ws,
                    c,
                    resolution=v,
                    deterministic=True,
                    chunk=16384,
                    depth_resolution=96,
                    depth_resolution_importance=96,
                ),
                dev,
                1,
            )
        rows["view render"] = (t * (512 / v) ** 2, 21, "~" if v != 512 else "")

    s = args.patch_resolution

    def fit_step():
        G.render(pyramid, ws, c, resolution=2 * s, background=False, patch=(0, 0, s))[
            "image"
        ].square().mean().backward()

    if want("fit"):
        rows["fit step"] = (timed(fit_step, dev, args.repeats) * (256 / s) ** 2, 399, "~" if s != 256 else "")

    if not args.no_unet and want("unet"):
        unet = sd15_unet().to(dev)
        lat = torch.randn(2, 4, 64, 64, device=dev)
        text = torch.randn(2, 77, 768, device=dev)
        with torch.no_grad():
            t = timed(lambda: unet(lat, 500, encoder_hidden_states=text), dev, max(1, args.repeats - 2))
        rows["sd unet (candidates)"] = (t, 6 * 50, "")
        rows["sd unet (SDS)"] = (t, 2000, "")
        rows["sd unet (SDEdit)"] = (t, 21 * 10, "")

    peak = mem.result()
    print(f"device: {dev}   peak memory: {harness.fmt_mib(peak['peak_bytes'])} ({peak['method']})")
    if inversion_ratio is not None:
        print(f"inversion step, official (128² + SR 512² → 256²) / raw 256²: {inversion_ratio:.2f}×")
    print(f"{'step':<22} {'one unit (s)':>13} {'count':>6} {'projected (min)':>16}")
    for name, (sec, count, mark) in rows.items():
        print(
            f"{name:<22} {mark + format(sec, '.3f'):>13} {count:>6} {mark + format(sec * count / 60, '.1f'):>16}"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {
                    "device": dev,
                    "peak_mib": peak["peak_bytes"] / 2**20,
                    "inversion_official_over_raw": inversion_ratio,
                    "rows": {
                        k: {"seconds": s_, "count": n, "scaled": bool(m)} for k, (s_, n, m) in rows.items()
                    },
                },
                f,
                indent=1,
            )


if __name__ == "__main__":
    main()

"""``python -m gan_prior``: sample a portrait pyramid from a seed, render any pyramid file, invert a photo
(or a prompt's image) into the prior, or evaluate rendered views.

    python -m gan_prior sample --checkpoint model_512.pkl --seed 7 --out out/seed7
    python -m gan_prior render --checkpoint model_512.pkl --pyramid out/seed7/pyramid.safetensors \
        --out out/seed7/render --angles 0 45 90
"""
from __future__ import annotations

import argparse
import os
import sys
from functools import partial
from typing import Optional, Sequence

import torch

from .camera import GAN_FOCAL, camera_label, canonical_label, elevation_azimuth_to_hv, lookat_pose
from .checkpoint import CheckpointError
from .diffusion import DEFAULT_TEXT_TO_IMAGE_MODEL
from .evaluation import add_cli as add_evaluate_cli
from .generator import PortraitGAN
from .media import contact_sheet, render_frames, save_image, save_video, turntable_labels
from .pyramid_files import load_pyramid, save_pyramid


def write_turntable(G, pyramid, ws, out_dir: str, frames: int, resolution: int, chunk: int, fps: int = 30,
                    **options) -> str:
    path = os.path.join(out_dir, "turntable.mp4")
    save_video(path, render_frames(partial(G.render, pyramid, ws), turntable_labels(frames), resolution, chunk, "turntable",
                                   **options), fps=fps)
    return path


def _resolve_ws(G: PortraitGAN, ws: Optional[torch.Tensor], path: str) -> torch.Tensor:
    if ws is None:
        raise SystemExit(f"error: {path} holds no 'ws'; the ToRGB and background need the latent it was made "
                         "from (files from `sample`, inversion_trigrid.pkl, df.pth, epoch_*.pth and the gallery have it)")
    if ws.shape[-1] != G.cfg.w_dim:
        raise SystemExit(f"error: {path}: ws has width {ws.shape[-1]}, the checkpoint's w_dim is {G.cfg.w_dim}")
    return ws


def cmd_sample(args) -> None:
    G = PortraitGAN.from_checkpoint(args.checkpoint)
    gen = torch.Generator().manual_seed(args.seed)
    z = torch.randn(1, G.cfg.z_dim, generator=gen)
    with torch.no_grad():
        ws = G.mapping(z, canonical_label(1), truncation_psi=args.truncation)
        pyramid = G.synthesize_pyramid(ws)
    os.makedirs(args.out, exist_ok=True)
    save_pyramid(os.path.join(args.out, "pyramid.safetensors"), pyramid, ws,
                 metadata={"seed": args.seed, "truncation": args.truncation, "checkpoint": os.path.abspath(args.checkpoint)})
    with torch.no_grad():
        front = G.render(pyramid, ws, canonical_label(1), resolution=args.resolution, deterministic=True,
                         chunk=args.chunk)
    save_image(os.path.join(args.out, "front.png"), front["image"][0])
    written = ["pyramid.safetensors", "front.png"]
    if G.superresolution is not None:  # the GAN's own output: 128² render → superresolution → 512²
        with torch.no_grad():
            image = G.synthesize(ws, canonical_label(1), pyramid=pyramid, deterministic=True, chunk=args.chunk)
        save_image(os.path.join(args.out, "image.png"), image["image"][0])
        written.append("image.png")
    video = write_turntable(G, pyramid, ws, args.out, args.frames, args.resolution, args.chunk)
    print(f"wrote {args.out}/{', '.join(written)}, {os.path.basename(video)}")


def cmd_render(args) -> None:
    G = PortraitGAN.from_checkpoint(args.checkpoint)
    pyramid, ws = load_pyramid(args.pyramid)
    ws = _resolve_ws(G, ws, args.pyramid)
    os.makedirs(args.out, exist_ok=True)
    if args.angles:
        h, v = elevation_azimuth_to_hv(torch.full((len(args.angles),), float(args.elevation)),
                                       torch.tensor(args.angles, dtype=torch.float32))
        labels = camera_label(lookat_pose(h, v), GAN_FOCAL)
        frames = list(render_frames(partial(G.render, pyramid, ws), labels, args.resolution, args.chunk, "views"))
        for angle, frame in zip(args.angles, frames):
            save_image(os.path.join(args.out, f"azimuth_{angle:+06.1f}.png"), frame)
        save_image(os.path.join(args.out, "views.png"), contact_sheet(frames, len(frames)))
    if args.frames > 0:
        write_turntable(G, pyramid, ws, args.out, args.frames, args.resolution, args.chunk)
    print(f"wrote renders to {args.out}")


def cmd_invert(args) -> None:
    from .inversion import InversionConfig
    from .portrait_init import PortraitInitConfig, initialize_portrait

    G = PortraitGAN.from_checkpoint(args.checkpoint)
    if args.vgg16 is None:
        print("warning: no --vgg16 given: using a randomly initialised VGG16 (only for smoke tests)", file=sys.stderr)
    cfg = PortraitInitConfig(
        prompt=args.prompt, image=args.image, text_to_image_model=args.sd_model, num_candidates=args.candidates,
        candidate_seed=args.seed, candidate_steps=args.sd_steps, candidate_resolution=args.sd_resolution,
        detector=args.detector, aligned_resolution=args.aligned_resolution, vgg16=args.vgg16,
        allow_random_vgg16=args.vgg16 is None,
        inversion=InversionConfig(steps=args.steps, resolution=args.resolution))
    device = "cuda" if torch.cuda.is_available() and not args.cpu else "cpu"
    try:
        initialize_portrait(G, args.checkpoint, cfg, args.out, device)
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None
    print(f"wrote {args.out}: aligned.png, w_plus.safetensors, pyramid.safetensors, comparison.png (target | inversion)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m gan_prior", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)

    def common(sp):
        sp.add_argument("--checkpoint", required=True, help="model_512.pkl, an official-key state dict, or a saved folder")
        sp.add_argument("--out", required=True, help="output folder")
        sp.add_argument("--resolution", type=int, default=256, help="render size in pixels (neural rendering, no SR)")
        sp.add_argument("--frames", type=int, default=120, help="turntable frames (0 = no video)")
        sp.add_argument("--chunk", type=int, default=16384, help="rays per renderer call (memory cap)")

    s = sub.add_parser("sample", help="seed → pyramid tri-grid file + front render + the GAN's superresolved "
                                      "image.png (512²) + turntable video")
    common(s)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--truncation", type=float, default=0.7)
    s.set_defaults(func=cmd_sample)

    r = sub.add_parser("render", help="any pyramid tri-grid file (ours or official) → images and a turntable")
    common(r)
    r.add_argument("--pyramid", required=True, help="pyramid file: ours (.safetensors) or official (.pkl/.pth)")
    r.add_argument("--angles", type=float, nargs="*", default=[], help="azimuths in degrees (0 = front)")
    r.add_argument("--elevation", type=float, default=0.0, help="elevation in degrees for --angles")
    r.set_defaults(func=cmd_render)

    v = sub.add_parser("invert", help="a photo (or a prompt) → aligned crop → w+ → pyramid tri-grid (GAN inversion)")
    v.add_argument("--checkpoint", required=True, help="model_512.pkl, an official-key state dict, or a saved folder")
    src = v.add_mutually_exclusive_group(required=True)
    src.add_argument("--image", help="a portrait photo (any size; the face is found and framed as the GAN's renders)")
    src.add_argument("--prompt", help="generate candidate portraits with Stable Diffusion first")
    v.add_argument("--out", required=True, help="output folder (finished steps in it are reused)")
    v.add_argument("--vgg16", default=None, help="torchvision VGG16 state dict (torch.save) for the perceptual loss")
    v.add_argument("--detector", default="haar",
                   help="'haar' (OpenCV, default), an OpenCV cascade .xml, 'module:callable', or 'none' (already aligned)")
    v.add_argument("--steps", type=int, default=500)
    v.add_argument("--resolution", type=int, default=256, help="neural render size compared with the image")
    v.add_argument("--aligned-resolution", type=int, default=512)
    v.add_argument("--sd-model", default=DEFAULT_TEXT_TO_IMAGE_MODEL, help="diffusers folder or hub id")
    v.add_argument("--candidates", type=int, default=6)
    v.add_argument("--seed", type=int, default=0, help="seed of the first candidate (candidate i: seed + i)")
    v.add_argument("--sd-steps", type=int, default=50)
    v.add_argument("--sd-resolution", type=int, default=512)
    v.add_argument("--cpu", action="store_true", help="stay on the CPU even when CUDA is available")
    v.set_defaults(func=cmd_invert)
    add_evaluate_cli(sub)
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except CheckpointError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0

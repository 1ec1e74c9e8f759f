"""``python -m gan_prior``: sample a portrait pyramid from a seed, render any pyramid file, invert a photo
(or a prompt's image) into the prior, or evaluate rendered views.

    python -m gan_prior sample --checkpoint model_512.pkl --seed 7 --out out/seed7
    python -m gan_prior render --checkpoint model_512.pkl --pyramid out/seed7/pyramid.safetensors \\
        --out out/seed7/render --angles 0 45 90

Every command checks its arguments before loading anything, refuses to replace files already in
``--out`` unless ``--overwrite`` is given (then it names them), writes only what was asked for, and
ends a bad input with one ``error:`` line (exit code 2).
"""

from __future__ import annotations

import argparse
import os
import sys
from functools import partial
from typing import Optional, Sequence

import torch

from .camera import GAN_FOCAL, camera_label, canonical_label, elevation_azimuth_to_hv, lookat_pose
from .checks import (
    MAX_FRAMES,
    MAX_RESOLUTION,
    MAX_SEED,
    OneLineParser,
    bounded_int,
    check_pyramid,
    finite_float,
    report_error,
)
from .diffusion import DEFAULT_TEXT_TO_IMAGE_MODEL
from .evaluation import add_cli as add_evaluate_cli
from .files import check_out
from .generator import PortraitGAN
from .media import contact_sheet, render_frames, save_image, save_video, turntable_labels
from .pyramid_files import load_pyramid_for, save_pyramid
from .tiny_models import tiny_model_path

DEBUG_ENV = "GAN_PRIOR_DEBUG"  # set to 1 to see the traceback of an unexpected error


class UsageError(ValueError):
    """A bad argument: printed as one ``error:`` line."""


TINY_CHECKPOINT = "tiny"
CHECKPOINT_HELP = (
    "model_512.pkl, an official-key state dict, or a saved folder; 'tiny' = a tiny random GAN "
    "built on first use (smoke runs: its images are coloured noise)"
)


def checkpoint_path(value: str) -> str:
    """``--checkpoint``: a path as given, or the tiny random GAN's folder for ``tiny``."""
    if value == TINY_CHECKPOINT:
        return tiny_model_path("portrait-gan")
    return value


def write_turntable(
    G, pyramid, ws, out_dir: str, frames: int, resolution: int, chunk: int, fps: int = 30, **options
) -> str:
    path = os.path.join(out_dir, "turntable.mp4")
    save_video(
        path,
        render_frames(
            partial(G.render, pyramid, ws),
            turntable_labels(frames),
            resolution,
            chunk,
            "turntable",
            **options,
        ),
        fps=fps,
    )
    return path


def _load_pyramid_for(G: PortraitGAN, path: str):
    pyramid, ws = load_pyramid_for(G, path)
    if ws.shape[0] != 1 or next(iter(pyramid.values())).shape[0] != 1:
        raise UsageError(
            f"{path} holds {max(ws.shape[0], next(iter(pyramid.values())).shape[0])} pyramids; "
            "render renders one: save each on its own"
        )
    return pyramid, ws


def sample_outputs(args) -> list[str]:
    """What ``sample`` may write (``image.png`` where the generator has its superresolution module)."""
    return ["pyramid.safetensors", "front.png", "image.png"] + (["turntable.mp4"] if args.frames > 0 else [])


def cmd_sample(args) -> None:
    G = PortraitGAN.from_checkpoint(args.checkpoint)
    gen = torch.Generator().manual_seed(args.seed)
    z = torch.randn(1, G.cfg.z_dim, generator=gen)
    with torch.no_grad():
        ws = G.mapping(z, canonical_label(1), truncation_psi=args.truncation)
        pyramid = G.synthesize_pyramid(ws)
    check_pyramid(pyramid, ws, G, f"{args.checkpoint} (the generator's output for seed {args.seed})")
    save_pyramid(
        os.path.join(args.out, "pyramid.safetensors"),
        pyramid,
        ws,
        metadata={
            "seed": args.seed,
            "truncation": args.truncation,
            "checkpoint": os.path.abspath(args.checkpoint),
        },
    )
    with torch.no_grad():
        front = G.render(
            pyramid, ws, canonical_label(1), resolution=args.resolution, deterministic=True, chunk=args.chunk
        )
    save_image(os.path.join(args.out, "front.png"), front["image"][0])
    written = ["pyramid.safetensors", "front.png"]
    if G.superresolution is not None:  # the GAN's own output: 128² render → superresolution → 512²
        with torch.no_grad():
            image = G.synthesize(
                ws, canonical_label(1), pyramid=pyramid, deterministic=True, chunk=args.chunk
            )
        save_image(os.path.join(args.out, "image.png"), image["image"][0])
        written.append("image.png")
    if args.frames > 0:
        write_turntable(G, pyramid, ws, args.out, args.frames, args.resolution, args.chunk)
        written.append("turntable.mp4")
    print(f"wrote {', '.join(os.path.join(args.out, f) for f in written)}")


def _azimuth_name(angle: float) -> str:
    return f"azimuth_{angle:+06.1f}.png"


def render_outputs(args) -> list[str]:
    views = [_azimuth_name(a) for a in args.angles] + ["views.png"] if args.angles else []
    return views + (["turntable.mp4"] if args.frames > 0 else [])


def cmd_render(args) -> None:
    G = PortraitGAN.from_checkpoint(args.checkpoint)
    pyramid, ws = _load_pyramid_for(G, args.pyramid)
    if args.angles:
        h, v = elevation_azimuth_to_hv(
            torch.full((len(args.angles),), float(args.elevation)),
            torch.tensor(args.angles, dtype=torch.float32),
        )
        labels = camera_label(lookat_pose(h, v), GAN_FOCAL)
        frames = list(
            render_frames(partial(G.render, pyramid, ws), labels, args.resolution, args.chunk, "views")
        )
        for angle, frame in zip(args.angles, frames):
            save_image(os.path.join(args.out, _azimuth_name(angle)), frame)
        save_image(os.path.join(args.out, "views.png"), contact_sheet(frames, len(frames)))
    if args.frames > 0:
        write_turntable(G, pyramid, ws, args.out, args.frames, args.resolution, args.chunk)
    print(f"wrote {', '.join(render_outputs(args))} to {args.out}")


def cmd_invert(args) -> None:
    from .alignment import allow_detector_import, make_detector
    from .portrait_init import RANDOM_VGG16, PortraitInitConfig, initialize_portrait

    cfg = PortraitInitConfig.from_dict(
        dict(
            prompt=args.prompt,
            image=args.image,
            text_to_image_model=args.sd_model,
            num_candidates=args.candidates,
            candidate_seed=args.seed,
            candidate_steps=args.sd_steps,
            candidate_resolution=args.sd_resolution,
            detector=args.detector,
            aligned_resolution=args.aligned_resolution,
            vgg16=args.vgg16 or RANDOM_VGG16,
            inversion=dict(steps=args.steps, resolution=args.resolution),
        )
    )
    if args.prompt is not None and not args.prompt.strip():
        raise UsageError('--prompt: empty; describe the portrait, e.g. "portrait of a 25 y.o. woman"')
    if args.seed + args.candidates - 1 > MAX_SEED:
        raise UsageError(
            f"--seed: {args.seed} + {args.candidates} candidates passes the largest seed {MAX_SEED}"
        )
    try:  # a bad --detector fails here, before any model is loaded
        if ":" in args.detector:  # "module:attr" on the user's own command line: the explicit opt-in
            allow_detector_import(args.detector)
        make_detector(args.detector)
    except ValueError as e:
        raise UsageError(f"--detector: {e}") from None
    try:
        cfg.validate(args.checkpoint)
    except ValueError as e:
        message = str(e)  # "image: …", "vgg16: …", "detector: …": named as the options
        named = message.startswith(("image:", "vgg16:", "detector:"))
        raise UsageError(f"--{message}" if named else message) from None
    G = PortraitGAN.from_checkpoint(args.checkpoint)
    if cfg.allow_random_vgg16:
        print(
            "warning: no --vgg16 file: using a randomly initialised VGG16 (only for smoke tests)",
            file=sys.stderr,
        )
    device = "cuda" if torch.cuda.is_available() and not args.cpu else "cpu"
    initialize_portrait(G, args.checkpoint, cfg, args.out, device, overwrite=args.overwrite or False)
    print(
        f"wrote {args.out}: aligned.png, w_plus.safetensors, pyramid.safetensors, comparison.png (target | inversion)"
    )


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="python -m gan_prior", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True, parser_class=OneLineParser)
    resolution = bounded_int(1, MAX_RESOLUTION)

    def common(sp):
        sp.add_argument("--checkpoint", required=True, type=checkpoint_path, help=CHECKPOINT_HELP)
        sp.add_argument("--out", required=True, help="output folder")
        sp.add_argument(
            "--resolution",
            type=resolution,
            default=256,
            help="render size in pixels (neural rendering, no SR)",
        )
        sp.add_argument(
            "--frames", type=bounded_int(0, MAX_FRAMES), default=120, help="turntable frames (0 = no video)"
        )
        sp.add_argument(
            "--chunk", type=bounded_int(1), default=16384, help="rays per renderer call (memory cap)"
        )
        sp.add_argument(
            "--overwrite", action="store_true", help="replace files of the same name already in --out"
        )

    s = sub.add_parser(
        "sample",
        help="seed → pyramid tri-grid file + front render + the GAN's superresolved "
        "image.png (512²) + turntable video",
    )
    common(s)
    s.add_argument("--seed", type=bounded_int(0, MAX_SEED), default=0, help="seed of the latent z")
    s.add_argument(
        "--truncation",
        type=finite_float(-10.0, 10.0),
        default=0.7,
        help="ψ: 0 = the average face, 1 = no truncation",
    )
    s.set_defaults(func=cmd_sample, outputs=sample_outputs)

    r = sub.add_parser("render", help="any pyramid tri-grid file (ours or official) → images and a turntable")
    common(r)
    r.add_argument(
        "--pyramid", required=True, help="pyramid file: ours (.safetensors) or official (.pkl/.pth)"
    )
    r.add_argument(
        "--angles",
        type=finite_float(-3600.0, 3600.0),
        nargs="*",
        default=[],
        help="azimuths in degrees (0 = front)",
    )
    r.add_argument(
        "--elevation", type=finite_float(-89.0, 89.0), default=0.0, help="elevation in degrees for --angles"
    )
    r.set_defaults(func=cmd_render, outputs=render_outputs)

    v = sub.add_parser(
        "invert", help="a photo (or a prompt) → aligned crop → w+ → pyramid tri-grid (GAN inversion)"
    )
    v.add_argument("--checkpoint", required=True, type=checkpoint_path, help=CHECKPOINT_HELP)
    src = v.add_mutually_exclusive_group(required=True)
    src.add_argument(
        "--image", help="a portrait photo (any size; the face is found and framed as the GAN's renders)"
    )
    src.add_argument("--prompt", help="generate candidate portraits with Stable Diffusion first")
    v.add_argument(
        "--out", required=True, help="output folder (finished steps made from the same inputs are reused)"
    )
    v.add_argument(
        "--overwrite",
        action="store_true",
        help="redo every step, replacing a result in --out (also one made from other inputs)",
    )
    v.add_argument(
        "--vgg16",
        default=None,
        help="the official vgg16.pt or a torchvision VGG16 state dict for the "
        "perceptual loss; 'random' (or none) = a random network, for smoke runs only",
    )
    v.add_argument(
        "--detector",
        default="haar",
        help="'haar' (OpenCV, default), 'none' (already aligned), a registered detector name, an OpenCV "
        "cascade .xml, or 'module:attr' (a gan_prior.alignment.FaceDetector or @face_detector function)",
    )
    v.add_argument("--steps", type=bounded_int(0, 100_000), default=500, help="inversion steps")
    v.add_argument(
        "--resolution",
        type=bounded_int(16, MAX_RESOLUTION),
        default=256,
        help="neural render size compared with the image",
    )
    v.add_argument(
        "--aligned-resolution",
        type=bounded_int(16, MAX_RESOLUTION),
        default=512,
        help="size of the aligned square crop",
    )
    v.add_argument("--sd-model", default=DEFAULT_TEXT_TO_IMAGE_MODEL, help="diffusers folder or hub id")
    v.add_argument(
        "--candidates", type=bounded_int(1, 64), default=6, help="candidate images from the prompt"
    )
    v.add_argument(
        "--seed",
        type=bounded_int(0, MAX_SEED),
        default=0,
        help="seed of the first candidate (candidate i: seed + i)",
    )
    v.add_argument("--sd-steps", type=bounded_int(1, 1000), default=50, help="PLMS steps per candidate")
    v.add_argument("--sd-resolution", type=bounded_int(64, 2048), default=512, help="a multiple of 8")
    v.add_argument("--cpu", action="store_true", help="stay on the CPU even when CUDA is available")
    v.set_defaults(func=cmd_invert, outputs=lambda args: [])
    add_evaluate_cli(sub)
    return p


def _check_args(args) -> None:
    """Checks that need several arguments, or the file system, before anything is loaded."""
    if args.command == "render" and not args.angles and args.frames == 0:
        raise UsageError("nothing to render: give --angles and/or --frames > 0")
    if args.command == "render" and args.angles:
        seen: dict[str, float] = {}
        for angle in args.angles:  # one file per view: two angles may not share a name
            name = _azimuth_name(angle)
            if name in seen:
                raise UsageError(
                    f"--angles: {seen[name]:g} and {angle:g} would both be written to {name}; give each "
                    "angle once, at least 0.1° apart"
                )
            seen[name] = angle
    if args.command == "invert" and args.sd_resolution % 8:
        raise UsageError(
            f"--sd-resolution: {args.sd_resolution} is not a multiple of 8 (Stable Diffusion's VAE)"
        )
    for option in ("checkpoint", "pyramid", "image", "vgg16", "inception"):
        path = getattr(args, option, None)
        if path is not None and (not path.strip() or "\0" in path):
            raise UsageError(f"--{option}: empty or invalid path")
    check_out(args.out, args.outputs(args), args.overwrite)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run a command; a bad input ends in one ``error:`` line on stderr and exit code 2."""
    args = build_parser().parse_args(argv)
    try:
        _check_args(args)
        args.func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # one line; the traceback of a bug on request (GAN_PRIOR_DEBUG=1)
        return report_error(e, DEBUG_ENV, "lower --resolution or --chunk", where=getattr(args, "out", ""))
    return 0

"""From a prompt or a photo to the GAN prior's pyramid tri-grid (paper §3.4; official ``portrait3d_main.py`` steps 1–4), in one
call, resumable step by step.

Steps, each writing its files into ``out_dir`` (atomically; the step's JSON is written last and
marks it done, so a rerun or an interrupted run skips finished steps):

1. ``candidates``  (prompt only) — :func:`gan_prior.diffusion.generate_candidates`:
   ``candidates/candidate_{i}_seed{seed}.png`` + ``candidates.json``;
2. ``alignment`` — framing measured from the GAN's renders (:mod:`gan_prior.alignment`), the best
   candidate picked with reasons, the square crop, and a camera estimate
   (:func:`gan_prior.inversion.estimate_camera`): ``aligned.png`` + ``alignment.json``;
3. ``inversion`` — w+ (:func:`gan_prior.inversion.invert`), then the pyramid from it (official ``3DPortraitGAN_pyramid/run_trigrid_gen.py``):
   ``w_plus.safetensors``, ``pyramid.safetensors``, ``comparison.png`` (target | inversion) +
   ``inversion.json``.

``out_dir`` should be specific to the inputs: :func:`init_key` hashes everything that changes the
result, and the threestudio initializer puts each run in ``…/init/<key>/``. Time and peak memory of
every step are recorded in ``timings.json``.
"""
from __future__ import annotations

import hashlib
import json
import os
import resource
import time
from dataclasses import asdict, dataclass, field, fields
from typing import Callable, Mapping, Optional

import imageio.v2 as imageio
import numpy as np
import torch
from safetensors.torch import save_file

from .alignment import (align_image, detector_name, load_or_measure_framing, make_detector, require_faces,
                        select_candidate)
from .camera import canonical_label
from .diffusion import (DEFAULT_TEXT_TO_IMAGE_MODEL, TextToImageConfig, clear_pipeline_cache, generate_candidates,
                        load_pipeline, portrait_prompt)
from .files import atomic_path, read_json, write_json
from .generator import PortraitGAN
from .inversion import InversionConfig, estimate_camera, invert
from .media import as_rgb, from_uint8, save_image
from .perceptual import VGG16Distance
from .pyramid_files import load_pyramid, save_pyramid

ProgressFn = Callable[[str], None]


@dataclass
class PortraitInitConfig:
    """Everything that decides the initialisation (and therefore :func:`init_key`)."""

    prompt: Optional[str] = None  # text → candidates (step 1) …
    image: Optional[str] = None  # … or a user's photo (step 1 skipped)
    text_to_image_model: str = DEFAULT_TEXT_TO_IMAGE_MODEL
    num_candidates: int = 6
    candidate_seed: int = 0
    candidate_steps: int = 50
    candidate_guidance_scale: float = 5.0
    candidate_resolution: int = 512
    detector: str = "haar"  # see gan_prior.alignment.make_detector
    aligned_resolution: int = 512
    max_padding: float = 0.2
    estimate_camera: bool = True
    camera_resolution: int = 64
    vgg16: Optional[str] = None  # official vgg16.pt or a torchvision VGG16 state dict; None only with allow_random_vgg16
    allow_random_vgg16: bool = False  # smoke tests: a random perceptual network
    inversion: InversionConfig = field(default_factory=InversionConfig)

    @classmethod
    def from_dict(cls, d: Mapping, option: str = "portrait") -> "PortraitInitConfig":
        """From plain options (``inversion`` a dict of :class:`InversionConfig` fields); an unknown
        key is a one-line error naming ``option`` and the valid keys."""
        for name, kind, given in ((option, cls, d), (f"{option}.inversion", InversionConfig, d.get("inversion") or {})):
            unknown = set(given) - {f.name for f in fields(kind)}
            if unknown:
                raise ValueError(f"{name}: unknown key(s) {sorted(unknown)}; valid: {sorted(f.name for f in fields(kind))}")
        d = dict(d)
        if not isinstance(d.get("inversion", InversionConfig()), InversionConfig):
            d["inversion"] = InversionConfig(**dict(d["inversion"]))
        return cls(**d)

    def validate(self) -> None:
        if bool(self.prompt) == bool(self.image):
            raise ValueError("give exactly one of prompt (text → portrait) and image (a photo to invert)")
        if self.image and not os.path.isfile(self.image):
            raise ValueError(f"image: {self.image} not found; give the path to a portrait photo")
        if self.vgg16 is None and not self.allow_random_vgg16:
            raise ValueError("vgg16: the inversion needs a perceptual network; give the official vgg16.pt (StyleGAN2-ADA "
                             "metrics) or a torchvision VGG16 state dict, e.g. PORTRAIT3D_VGG16=/path/to/vgg16.pt")
        if self.vgg16 is not None and not os.path.isfile(self.vgg16):
            raise ValueError(f"vgg16: {self.vgg16} not found; give the path to a VGG16 state dict")


def init_key(cfg: PortraitInitConfig, checkpoint: str) -> str:
    """12 hex digits identifying the inputs (config, checkpoint and image files by path, size and mtime)."""
    def stamp(path: Optional[str]):
        return None if not path or not os.path.exists(path) else \
            [os.path.abspath(path), os.path.getsize(path), int(os.path.getmtime(path))]

    blob = json.dumps({"cfg": asdict(cfg), "checkpoint": stamp(checkpoint), "image": stamp(cfg.image),
                       "vgg16": stamp(cfg.vgg16)}, sort_keys=True, default=str)
    return hashlib.sha1(blob.encode()).hexdigest()[:12]


def read_rgb(path: str) -> np.ndarray:
    """Any image file → uint8 ``[H, W, 3]``; unreadable files get a one-line error naming them."""
    try:
        return as_rgb(imageio.imread(path))
    except Exception as e:
        raise ValueError(f"{path}: not a readable image ({type(e).__name__}); give a PNG or JPEG photo") from None


class _StepTimer:
    """Wall time and peak memory (process RSS high-water mark; CUDA peak when used) of each step."""

    def __init__(self, path: str):
        self.path = path
        self.records = read_json(path) or {}

    def __call__(self, name: str, fn: Callable[[], dict]) -> dict:
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        result = fn()
        record = {"seconds": round(time.perf_counter() - start, 3),
                  "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
        if torch.cuda.is_available():
            record["peak_cuda_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        self.records[name] = record
        write_json(self.path, self.records)
        return result


def initialize_portrait(G: PortraitGAN, checkpoint: str, cfg: PortraitInitConfig, out_dir: str,
                        device: torch.device | str = "cpu", log: ProgressFn = print) -> tuple[dict, torch.Tensor]:
    """Run (or reuse) steps 1–3 in ``out_dir``; returns ``(pyramid {R: [1, 3, C, R, R]}, ws [1, N, D])``."""
    cfg.validate()
    os.makedirs(out_dir, exist_ok=True)
    timer = _StepTimer(os.path.join(out_dir, "timings.json"))
    pyramid_path = os.path.join(out_dir, "pyramid.safetensors")
    if read_json(os.path.join(out_dir, "inversion.json")) is not None:
        log(f"Reusing the initialisation in {out_dir}")
        levels, ws = load_pyramid(pyramid_path)
        return levels, ws

    # 1. candidates ------------------------------------------------------------------------------
    if cfg.prompt:
        names = read_json(os.path.join(out_dir, "candidates.json"))
        if names is None:
            names = timer("candidates", lambda: _generate(cfg, out_dir, device, log))
        else:
            log(f"Reusing {len(names['files'])} candidate images in {out_dir}/candidates")
        sources = [os.path.join(out_dir, f) for f in names["files"]]
    else:
        sources = [cfg.image]

    # 2. alignment ------------------------------------------------------------------------------
    alignment = read_json(os.path.join(out_dir, "alignment.json"))
    G = G.to(device)
    distance = VGG16Distance.load(cfg.vgg16).to(device)  # camera estimate and inversion
    if alignment is None:
        alignment = timer("alignment", lambda: _align(G, checkpoint, cfg, sources, out_dir, distance, log))
    target = torch.from_numpy(read_rgb(os.path.join(out_dir, "aligned.png"))).permute(2, 0, 1)[None]
    target = from_uint8(target.to(device))
    label = torch.tensor(alignment["camera"]["label"], dtype=torch.float32, device=device)

    # 3. inversion and pyramid ------------------------------------------------------------------
    def run_inversion() -> dict:
        log(f"Inverting {os.path.join(out_dir, 'aligned.png')} ({cfg.inversion.steps} steps)")
        result = invert(G, target, label, distance, cfg.inversion)
        ws = result["ws"]
        with atomic_path(os.path.join(out_dir, "w_plus.safetensors"), ".safetensors") as tmp:
            save_file({"ws": ws.detach().float().cpu().contiguous(), "camera": label.cpu().contiguous()}, tmp)
        with torch.no_grad():
            levels = G.synthesize_pyramid(ws)
        save_pyramid(pyramid_path, levels, ws, metadata={"source": sources[alignment["chosen"]], "camera": label.tolist()})
        side = torch.nn.functional.interpolate(target, size=result["image"].shape[-2:], mode="area")
        save_image(os.path.join(out_dir, "comparison.png"), torch.cat([side[0], result["image"][0]], -1))
        summary = {"steps": cfg.inversion.steps, "distance_first": result["distance"][0] if result["distance"] else None,
                   "distance_last": result["distance"][-1] if result["distance"] else None}
        write_json(os.path.join(out_dir, "inversion.json"), summary)
        return summary

    timer("inversion", run_inversion)
    levels, ws = load_pyramid(pyramid_path)
    log(f"Initialisation written to {out_dir} (candidates, aligned.png, w_plus, pyramid, comparison.png)")
    return levels, ws


def _generate(cfg: PortraitInitConfig, out_dir: str, device, log: ProgressFn) -> dict:

    prompt = portrait_prompt(cfg.prompt)
    log(f"Generating {cfg.num_candidates} candidate portraits with {cfg.text_to_image_model}: {prompt!r}")
    pipe = load_pipeline(cfg.text_to_image_model, device=device, option="text_to_image_model")
    t2i = TextToImageConfig(steps=cfg.candidate_steps, guidance_scale=cfg.candidate_guidance_scale,
                            resolution=cfg.candidate_resolution, num_candidates=cfg.num_candidates,
                            seed=cfg.candidate_seed)
    candidates = generate_candidates(pipe, prompt, t2i)
    del pipe
    clear_pipeline_cache()  # the inversion and the SDS guidance do not need this copy
    files = []
    for i, cand in enumerate(candidates):
        name = f"candidates/candidate_{i}_seed{cand.seed}.png"
        save_image(os.path.join(out_dir, name), cand.image)
        files.append(name)
    record = {"prompt": prompt, "model": cfg.text_to_image_model, "files": files,
              "seeds": [cand.seed for cand in candidates], "settings": asdict(t2i)}
    write_json(os.path.join(out_dir, "candidates.json"), record)
    return record


def _align(G: PortraitGAN, checkpoint: str, cfg: PortraitInitConfig, sources: list[str], out_dir: str,
           distance: VGG16Distance, log: ProgressFn) -> dict:
    detector = make_detector(cfg.detector)
    images = [read_rgb(p) for p in sources]
    names = [os.path.relpath(p, out_dir) if p.startswith(out_dir) else p for p in sources]
    require_faces(images, detector, names)
    framing = load_or_measure_framing(G, checkpoint, detector)
    if len(images) == 1 or detector_name(detector) == "none":  # "none": the images are aligned already; take the first
        aligned = [align_image(images[0], framing, detector, cfg.aligned_resolution, source=names[0])]
        reason = "the only image" if len(images) == 1 else "detector 'none': the first image, taken as aligned"
        chosen, report = 0, [{"name": names[0], "kept": True, "reason": reason}]
    else:
        chosen, aligned, report = select_candidate(images, framing, detector, names, size=cfg.aligned_resolution,
                                                   max_padding=cfg.max_padding)
    for row in report:
        log(f"  {row['name']}: {'kept' if row['kept'] else 'dropped'} ({row['reason']})")
    log(f"Chose {names[chosen]}")
    best = aligned[chosen]
    save_image(os.path.join(out_dir, "aligned.png"), best.image)
    if cfg.estimate_camera:
        target = from_uint8(torch.from_numpy(best.image).permute(2, 0, 1)[None])
        camera = estimate_camera(G, target, distance, resolution=cfg.camera_resolution)
        log(f"Camera estimate: yaw {camera['yaw']:+g}°, elevation {camera['elevation']:+g}°")
    else:
        camera = {"label": canonical_label(1), "yaw": 0.0, "elevation": 0.0, "distances": {}}
    record = {"chosen": chosen, "report": report, "framing": framing.to_dict(),
              "crop": list(best.crop), "padding": best.padding,
              "camera": {**camera, "label": camera["label"].cpu().tolist()}}
    write_json(os.path.join(out_dir, "alignment.json"), record)
    return record

"""From a prompt or a photo to the GAN prior's pyramid tri-grid (paper §3.4; official ``portrait3d_main.py`` steps 1–4), in one
call, resumable step by step.

Steps, each writing its files into ``out_dir`` (atomically; the step's JSON is written last and
marks it done, so a rerun or an interrupted run skips finished steps):

1. ``candidates``  (prompt only) — :func:`gan_prior.diffusion.generate_candidates`:
   ``candidates/candidate_{i}_seed{seed}.png`` + ``candidates.json``;
2. ``alignment`` — framing measured from the GAN's renders (:mod:`gan_prior.alignment`), the best
   candidate picked with reasons, the square crop, and a camera estimate
   (:func:`gan_prior.inversion.estimate_camera`): ``aligned.png`` + ``alignment.json``;
3. ``inversion`` — the starting body pose p₀ from the checkpoint's pose predictor (on the crop and
   its person mask, :func:`gan_prior.alignment.person_mask`), the camera estimated again in pose p₀
   and p₀ predicted again from it (``camera_pose_rounds``), w+ and the body pose
   (:func:`gan_prior.inversion.invert`), then the pyramid from w+ at pose 0 (official
   ``3DPortraitGAN_pyramid/run_trigrid_gen.py``): ``mask.png``, ``w_plus.safetensors`` (``ws``,
   ``camera``, ``pose``), ``pyramid.safetensors``, ``comparison.png`` (target | inversion) +
   ``inversion.json``. A generator without the SMPL buffers is inverted at pose 0, with a notice.

Each step's JSON records the inputs it was made from (``"inputs"``: settings, and the files it read
by content or size and mtime); a step is reused only for the same inputs and only when its files
can still be read, otherwise it is recomputed (or, with ``overwrite=False``, refused). ``out_dir``
should be specific to the inputs: :func:`init_key` hashes everything that changes the result, and
the threestudio initializer puts each run in ``…/init/<key>/``. Time and peak memory of every step
are recorded in ``timings.json``.
"""

from __future__ import annotations

import filecmp
import hashlib
import json
import math
import os
import resource
import shutil
import time
from dataclasses import asdict, dataclass, field, fields
from typing import Callable, Mapping, Optional

import imageio.v2 as imageio
import numpy as np
import torch
from safetensors.torch import save_file

from .alignment import (
    align_image,
    check_detector_spec,
    detector_name,
    load_or_measure_framing,
    make_detector,
    person_mask,
    require_faces,
    select_candidate,
)
from .camera import canonical_label
from .checkpoint import CheckpointError, read_safetensors
from .checks import MAX_RESOLUTION, check_setting, require_finite
from .diffusion import (
    DEFAULT_TEXT_TO_IMAGE_MODEL,
    TextToImageConfig,
    clear_pipeline_cache,
    generate_candidates,
    load_pipeline,
    portrait_prompt,
)
from .files import atomic_path, fingerprint, read_json, write_json
from .generator import PortraitGAN
from .inversion import (
    Distance,
    InversionConfig,
    check_inversion_config,
    estimate_camera,
    invert,
    w_statistics,
)
from .media import as_rgb, from_uint8, save_image
from .perceptual import VGG16Distance
from .pose import PosePredictor, clamp_pose
from .pyramid_files import load_pyramid_for, save_pyramid
from .tiny_models import is_tiny_model

ProgressFn = Callable[[str], None]


RANDOM_VGG16 = "random"  # vgg16 option value: a randomly initialised perceptual network (smoke runs only)
MIN_PHOTO_SIDE = 16  # px: a photo smaller than this holds no portrait to invert


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
    camera_refine_to_deg: float = 0.5  # the grid camera refined by a local search (0: the grid's)
    camera_search_starts: int = 3  # … started from this many best grid cameras, the best end kept
    # Not official: once p₀ is predicted, the camera estimated again with the average portrait in
    # pose p₀ and p₀ predicted again from that camera, this many times (0: the alignment's camera)
    camera_pose_rounds: int = 1
    vgg16: Optional[str] = (
        None  # official vgg16.pt or a torchvision VGG16 state dict; None only with allow_random_vgg16
    )
    allow_random_vgg16: bool = False  # smoke tests: a random perceptual network
    inversion: InversionConfig = field(default_factory=InversionConfig)

    @property
    def posed_camera_rounds(self) -> int:
        """How often the camera is estimated again in the predicted pose (none without a first estimate)."""
        return self.camera_pose_rounds if self.estimate_camera else 0

    @classmethod
    def from_dict(cls, d: Mapping, option: str = "portrait") -> "PortraitInitConfig":
        """From plain options (``inversion`` a dict of :class:`InversionConfig` fields; ``vgg16:
        random`` = a random perceptual network, for smoke runs); an unknown key is a one-line error
        naming ``option`` and the valid keys."""
        for name, kind, given in (
            (option, cls, d),
            (f"{option}.inversion", InversionConfig, d.get("inversion") or {}),
        ):
            unknown = set(given) - {f.name for f in fields(kind)}
            if unknown:
                raise ValueError(
                    f"{name}: unknown key(s) {sorted(unknown)}; valid: {sorted(f.name for f in fields(kind))}"
                )
        d = dict(d)
        if d.get("vgg16") == RANDOM_VGG16:
            d.update(vgg16=None, allow_random_vgg16=True)
        if not isinstance(d.get("inversion", InversionConfig()), InversionConfig):
            d["inversion"] = InversionConfig(**dict(d["inversion"]))
        return cls(**d)

    def check_settings(self) -> None:
        """The numbers (counts, sizes, rates, ``inversion``), one line naming the setting; no file read."""
        rounds = self.camera_pose_rounds
        if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 0:
            raise ValueError(
                f"camera_pose_rounds: {rounds!r} is not a whole number ≥ 0; give 1 (the default) or 0 to "
                "keep the alignment's camera"
            )
        starts = self.camera_search_starts
        if isinstance(starts, bool) or not isinstance(starts, int) or starts < 1:
            raise ValueError(
                f"camera_search_starts: {starts!r} is not a whole number ≥ 1; give 3 (the default) or 1 to "
                "refine only the best grid camera"
            )
        default = {f.name: f.default for f in fields(PortraitInitConfig)}
        for name, low, high in (
            ("num_candidates", 1, 1000),
            ("candidate_steps", 1, 1000),
            ("aligned_resolution", 16, MAX_RESOLUTION),
            ("camera_resolution", 8, MAX_RESOLUTION),  # 0 divided by zero in the camera search
        ):
            check_setting(name, getattr(self, name), low, high, whole=True, default=default[name])
        for name, high in (
            ("candidate_guidance_scale", None),
            ("max_padding", 1),
            ("camera_refine_to_deg", 90),
        ):
            check_setting(name, getattr(self, name), 0, high, default=default[name])
        check_inversion_config(self.inversion, "inversion.")

    def validate(self, checkpoint: Optional[str] = None) -> None:
        """Cheap checks of the settings (and, given the GAN's ``checkpoint``, of the detector for it)."""
        if bool(self.prompt) == bool(self.image):
            raise ValueError("give exactly one of prompt (text → portrait) and image (a photo to invert)")
        if self.image and os.path.isdir(self.image):
            raise ValueError(f"image: {self.image} is a folder; give the path to a portrait photo")
        if self.image and not os.path.isfile(self.image):
            raise ValueError(f"image: {self.image} not found; give the path to a portrait photo")
        if self.vgg16 is None and not self.allow_random_vgg16:
            raise ValueError(
                "vgg16: the inversion needs a perceptual network; give the official vgg16.pt (StyleGAN2-ADA "
                "metrics) or a torchvision VGG16 state dict, e.g. PORTRAIT3D_VGG16=/path/to/vgg16.pt"
            )
        self.check_settings()
        if self.vgg16 is not None and not os.path.isfile(self.vgg16):
            raise ValueError(f"vgg16: {self.vgg16} not found; give the path to a VGG16 state dict")
        try:  # a string from a config may name only safe detectors (nothing is imported here)
            check_detector_spec(self.detector)
        except ValueError as e:
            raise ValueError(f"detector: {e}") from None
        if checkpoint and (self.detector or "").strip() != "none" and is_tiny_model(checkpoint):
            # the framing is measured by detecting faces in the GAN's renders (alignment.measure_framing)
            raise ValueError(
                f"detector: {self.detector!r} cannot be used with the tiny GAN {checkpoint}: its weights "
                "are random and its renders hold no face to frame by; use detector 'none' with an image "
                "already cropped like the GAN's renders (square, the face centred)"
            )


def init_key(cfg: PortraitInitConfig, checkpoint: str) -> str:
    """12 hex digits identifying the inputs (config, checkpoint and image files by path, size and mtime)."""

    def stamp(path: Optional[str]):
        return (
            None
            if not path or not os.path.exists(path)
            else [os.path.abspath(path), os.path.getsize(path), int(os.path.getmtime(path))]
        )

    blob = json.dumps(
        {
            "cfg": asdict(cfg),
            "checkpoint": stamp(checkpoint),
            "image": stamp(cfg.image),
            "vgg16": stamp(cfg.vgg16),
        },
        sort_keys=True,
        default=str,
    )
    return hashlib.sha1(blob.encode()).hexdigest()[:12]


def read_rgb(path: str, min_side: int = 1) -> np.ndarray:
    """Any image file → uint8 ``[H, W, 3]``, at least ``min_side`` px a side (a user's photo:
    :data:`MIN_PHOTO_SIDE`); unreadable, too large or too small files get a one-line error naming them."""
    from PIL import Image

    try:
        image = as_rgb(imageio.imread(path))
    except PermissionError:
        raise ValueError(f"{path}: permission denied; make the image readable for you (chmod u+r)") from None
    except Image.DecompressionBombError:
        raise ValueError(
            f"{path}: the image is larger than {Image.MAX_IMAGE_PIXELS * 2:,} pixels (PIL's bound against "
            "decompression bombs); give a photo of a usual size"
        ) from None
    except Exception as e:
        raise ValueError(
            f"{path}: not a readable image ({type(e).__name__}); give a PNG or JPEG photo"
        ) from None
    if min(image.shape[:2]) < min_side:
        h, w = image.shape[:2]
        raise ValueError(f"{path}: the image is {w}×{h} px; give a photo at least {min_side} px a side")
    return image


class _StepTimer:
    """Wall time and peak memory of each step: the process's resident-set high-water mark, and on a
    CUDA ``device`` its peak allocation (a CPU run never touches CUDA: that would open a context on
    GPU 0)."""

    def __init__(self, path: str, device: torch.device | str = "cpu"):
        self.path = path
        self.device = torch.device(device)
        self.records = read_json(path) or {}

    def __call__(self, name: str, fn: Callable[[], dict]) -> dict:
        cuda = self.device.type == "cuda"
        if cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
        start = time.perf_counter()
        result = fn()
        record = {
            "seconds": round(time.perf_counter() - start, 3),
            "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        }
        if cuda:
            record["peak_cuda_mib"] = round(torch.cuda.max_memory_allocated(self.device) / 2**20, 1)
        self.records[name] = record
        write_json(self.path, self.records)
        return result


def file_stamp(path: Optional[str], content: bool = False) -> Optional[dict]:
    """What identifies an input file: its sha1 (``content``; for small files such as photos) or its
    absolute path, size and mtime (checkpoints, folders of weights). None when there is no file."""
    if not path or not os.path.exists(path):
        return None if not path else {"path": os.path.abspath(path), "missing": True}
    if content and os.path.isfile(path):
        digest = hashlib.sha1()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        return {"sha1": digest.hexdigest()}
    return {"path": os.path.abspath(path), **fingerprint(path)}


def _canonical(inputs: dict) -> dict:
    return json.loads(json.dumps(inputs, sort_keys=True, default=str))


def step_inputs(cfg: PortraitInitConfig, checkpoint: str, step: str, upstream: Optional[dict] = None) -> dict:
    """The inputs that decide ``step`` ("candidates", "alignment" or "inversion"), as stored in its JSON."""
    if step == "candidates":
        inputs = {
            "prompt": cfg.prompt,
            "model": cfg.text_to_image_model,
            "model_files": file_stamp(cfg.text_to_image_model),
            "num_candidates": cfg.num_candidates,
            "seed": cfg.candidate_seed,
            "steps": cfg.candidate_steps,
            "guidance_scale": cfg.candidate_guidance_scale,
            "resolution": cfg.candidate_resolution,
        }
    elif step == "alignment":
        detector_file = (
            cfg.detector if cfg.detector not in ("haar", "none") and os.path.isfile(cfg.detector) else None
        )
        inputs = {
            "image": file_stamp(cfg.image, content=True) if cfg.image else None,
            "candidates": upstream,
            "detector": cfg.detector,
            "detector_file": file_stamp(detector_file, content=True),
            "aligned_resolution": cfg.aligned_resolution,
            "max_padding": cfg.max_padding,
            "estimate_camera": cfg.estimate_camera,
            "camera_resolution": cfg.camera_resolution,
            "camera_refine_to_deg": cfg.camera_refine_to_deg,
            "camera_search_starts": cfg.camera_search_starts,
            "checkpoint": file_stamp(checkpoint),
            "vgg16": file_stamp(cfg.vgg16),
        }
    elif step == "inversion":
        inputs = {
            "alignment": upstream,
            "inversion": asdict(cfg.inversion),
            "camera_pose_rounds": cfg.posed_camera_rounds,
            "camera_search_starts": cfg.camera_search_starts,
            "checkpoint": file_stamp(checkpoint),
            "vgg16": file_stamp(cfg.vgg16),
        }
    else:
        raise ValueError(f"unknown step {step!r}")
    return _canonical(inputs)


class _Steps:
    """Decides, step by step, whether ``out_dir`` holds a reusable result (see :func:`initialize_portrait`)."""

    def __init__(self, out_dir: str, overwrite: Optional[bool], log: ProgressFn):
        self.out_dir, self.overwrite, self.log = out_dir, overwrite, log

    def reusable(
        self,
        name: str,
        record: Optional[dict],
        inputs: dict,
        valid: Callable[[dict], Optional[str]],
        outputs: tuple = (),
    ) -> bool:
        """True when ``record`` (the step's JSON) was made from ``inputs`` and its files pass ``valid``
        (which returns None, or why they cannot be used). ``outputs``: the files the step writes, named
        when an unfinished step left them (they are replaced)."""
        if record is None:
            left = [f for f in outputs if os.path.lexists(os.path.join(self.out_dir, f))]
            if left:
                self.log(f"Replacing {', '.join(left)} in {self.out_dir} (no finished {name} step)")
            return False
        if self.overwrite:
            self.log(f"Replacing the {name} step in {self.out_dir} (overwrite)")
            return False
        stored = record.get("inputs")
        if stored != inputs:
            changed = sorted(k for k in inputs if not isinstance(stored, dict) or stored.get(k) != inputs[k])
            why = f"it was made from other inputs ({', '.join(changed) or 'an older version'})"
            if self.overwrite is False:
                raise ValueError(
                    f"{self.out_dir}: holds a {name} step that {why[3:]}; pass --overwrite to "
                    "replace it, or choose another output folder"
                )
            self.log(f"Recomputing the {name} step in {self.out_dir}: {why}")
            return False
        problem = valid(record)
        if problem:
            self.log(f"Recomputing the {name} step in {self.out_dir}: {problem}")
            return False
        return True


def _inside(out_dir: str, name) -> Optional[str]:
    """``out_dir/name`` when ``name`` is a relative path inside ``out_dir`` naming a file, else None."""
    if not isinstance(name, str) or not name or os.path.isabs(name):
        return None
    root = os.path.realpath(out_dir)
    path = os.path.realpath(os.path.join(root, name))
    if os.path.commonpath([root, path]) != root or not os.path.isfile(path):
        return None
    return path


def _check_candidates(out_dir: str, record: dict) -> Optional[str]:
    files = record.get("files")
    if not isinstance(files, list) or not files:
        return "candidates.json lists no files"
    for name in files:
        path = _inside(out_dir, name)
        if path is None:
            return f"candidates.json lists {str(name)[:80]!r}, not a file inside the folder"
        try:
            read_rgb(path)
        except ValueError:
            return f"{name} cannot be read"
    return None


def _check_alignment(out_dir: str, record: dict, n_sources: int) -> Optional[str]:
    try:
        chosen = record["chosen"]
        label = torch.tensor(record["camera"]["label"], dtype=torch.float32)
        if not isinstance(chosen, int) or not 0 <= chosen < n_sources or label.shape != (1, 25):
            return "alignment.json is not a valid record"
        require_finite(label, "alignment.json: camera label")
        read_rgb(os.path.join(out_dir, "aligned.png"))
    except (KeyError, TypeError, ValueError) as e:
        return f"it cannot be read ({str(e).splitlines()[0][:120] if str(e) else type(e).__name__})"
    return None


def initialize_portrait(
    G: PortraitGAN,
    checkpoint: str,
    cfg: PortraitInitConfig,
    out_dir: str,
    device: torch.device | str = "cpu",
    log: ProgressFn = print,
    overwrite: Optional[bool] = None,
) -> tuple[dict, torch.Tensor]:
    """Run (or reuse) steps 1–3 in ``out_dir``; returns ``(pyramid {R: [1, 3, C, R, R]}, ws [1, N, D])``.

    A finished step is reused when it was made from the same inputs and its files can be read.
    ``overwrite``: None (default) recomputes a step made from other inputs, saying so; False refuses
    it with a ``ValueError`` (the command line without ``--overwrite``); True recomputes every step.
    """
    cfg.validate(checkpoint)
    os.makedirs(out_dir, exist_ok=True)
    steps = _Steps(out_dir, overwrite, log)
    timer = _StepTimer(os.path.join(out_dir, "timings.json"), device)
    pyramid_path = os.path.join(out_dir, "pyramid.safetensors")
    wplus_path = os.path.join(out_dir, "w_plus.safetensors")

    # 1. candidates ------------------------------------------------------------------------------
    upstream = None
    if cfg.prompt:
        upstream = step_inputs(cfg, checkpoint, "candidates")
        names = read_json(os.path.join(out_dir, "candidates.json"))
        if steps.reusable(
            "candidates", names, upstream, lambda r: _check_candidates(out_dir, r), ("candidates",)
        ):
            log(f"Reusing {len(names['files'])} candidate images in {out_dir}/candidates")
        else:
            names = timer("candidates", lambda: _generate(cfg, out_dir, device, log, upstream))
        sources = [os.path.join(out_dir, f) for f in names["files"]]
    else:
        sources = [_copy_photo(cfg.image, out_dir)]

    # 2. alignment ------------------------------------------------------------------------------
    align_inputs = step_inputs(cfg, checkpoint, "alignment", upstream)
    inv_inputs = step_inputs(cfg, checkpoint, "inversion", align_inputs)
    alignment = read_json(os.path.join(out_dir, "alignment.json"))
    aligned_ok = steps.reusable(
        "alignment",
        alignment,
        align_inputs,
        lambda r: _check_alignment(out_dir, r, len(sources)),
        ("aligned.png",),
    )
    inversion = read_json(os.path.join(out_dir, "inversion.json")) if aligned_ok else None

    reused: list = []  # the checked pyramid, loaded once

    def check_inversion(record: dict) -> Optional[str]:
        try:
            reused.append(load_pyramid_for(G, pyramid_path))
        except (CheckpointError, ValueError) as e:
            return f"{os.path.basename(pyramid_path)} cannot be used ({str(e).splitlines()[0][:160]})"
        return None

    if aligned_ok and steps.reusable(
        "inversion",
        inversion,
        inv_inputs,
        check_inversion,
        ("w_plus.safetensors", "pyramid.safetensors", "comparison.png"),
    ):
        log(f"Reusing the initialisation in {out_dir}")
        return reused[-1]

    G = G.to(device)
    distance = VGG16Distance.load(cfg.vgg16).to(device)  # camera estimate and inversion
    if not aligned_ok:
        alignment = timer(
            "alignment", lambda: _align(G, checkpoint, cfg, sources, out_dir, distance, log, align_inputs)
        )
    target = torch.from_numpy(read_rgb(os.path.join(out_dir, "aligned.png"))).permute(2, 0, 1)[None]
    target = from_uint8(target.to(device))
    alignment_label = torch.tensor(alignment["camera"]["label"], dtype=torch.float32, device=device)

    # 3. inversion and pyramid ------------------------------------------------------------------
    def pyramid_from_wplus() -> Optional[dict]:
        """The pyramid again from a finished, readable ``w_plus.safetensors`` (a damaged pyramid file)."""
        if inversion is None or inversion.get("inputs") != inv_inputs or overwrite:
            return None
        try:
            ws = read_safetensors(wplus_path)["ws"]
            require_finite(ws, wplus_path)
            if ws.shape != (1, G.num_ws, G.cfg.w_dim):
                return None
        except (CheckpointError, KeyError, ValueError):
            return None
        log(f"Rebuilding {pyramid_path} from {wplus_path}")
        with torch.no_grad():
            levels = G.synthesize_pyramid(ws.to(device))
        camera = inversion.get("camera_start", alignment_label.tolist())
        save_pyramid(
            pyramid_path,
            levels,
            ws,
            metadata={"source": cfg.image or sources[alignment["chosen"]], "camera": camera},
        )
        return inversion

    def run_inversion() -> dict:
        pose, label = starting_pose(G, checkpoint, target, alignment_label, out_dir, log, distance, cfg)
        log(f"Inverting {os.path.join(out_dir, 'aligned.png')} ({cfg.inversion.steps} steps)")
        result = invert(G, target, label, distance, cfg.inversion, pose=pose)
        ws = result["ws"]
        require_finite(
            ws.detach(), "the inversion's w+ (diverged; lower the learning rate or check the image)"
        )
        tensors = {
            "ws": ws.detach().float().cpu().contiguous(),
            "camera": result["camera"].cpu().contiguous(),
        }
        if result["pose"] is not None:
            require_finite(result["pose"], "the inversion's body pose (diverged; check the image)")
            tensors["pose"] = result["pose"].float().cpu().contiguous()
        with atomic_path(wplus_path, ".safetensors") as tmp:
            save_file(tensors, tmp)
        with torch.no_grad():
            levels = G.synthesize_pyramid(ws)
        save_pyramid(
            pyramid_path,
            levels,
            ws,
            metadata={"source": cfg.image or sources[alignment["chosen"]], "camera": label.tolist()},
        )
        side = torch.nn.functional.interpolate(target, size=result["image"].shape[-2:], mode="area")
        save_image(os.path.join(out_dir, "comparison.png"), torch.cat([side[0], result["image"][0]], -1))
        summary = {
            "steps": cfg.inversion.steps,
            "pose_start": None if pose is None else pose.cpu().tolist(),
            "camera_start": label.cpu().tolist(),
            "pose": None if result["pose"] is None else result["pose"].cpu().tolist(),
            "camera": result["camera"].cpu().tolist(),
            "distance_first": result["distance"][0] if result["distance"] else None,
            "distance_last": result["distance"][-1] if result["distance"] else None,
            "inputs": inv_inputs,
        }
        write_json(os.path.join(out_dir, "inversion.json"), summary)
        return summary

    if pyramid_from_wplus() is None:
        timer("inversion", run_inversion)
    levels, ws = load_pyramid_for(G, pyramid_path)
    log(f"Initialisation written to {out_dir} (candidates, aligned.png, w_plus, pyramid, comparison.png)")
    return levels, ws


def _estimate_camera(
    G: PortraitGAN, target: torch.Tensor, distance: Distance, cfg: PortraitInitConfig, pose=None
) -> dict:
    """:func:`estimate_camera` with the config's camera settings (``pose``: the average portrait in it)."""
    return estimate_camera(
        G,
        target,
        distance,
        resolution=cfg.camera_resolution,
        refine_to_deg=cfg.camera_refine_to_deg,
        starts=cfg.camera_search_starts,
        pose=pose,
    )


def starting_pose(
    G: PortraitGAN,
    checkpoint: str,
    target: torch.Tensor,
    label: torch.Tensor,
    out_dir: str,
    log: ProgressFn,
    distance: Optional[Distance] = None,
    cfg: Optional[PortraitInitConfig] = None,
) -> tuple[Optional[torch.Tensor], torch.Tensor]:
    """``(p₀ [1, 6], camera [1, 25])`` for the inversion of ``target`` (the aligned crop, seen from
    ``label``), p₀ None (pose 0, no deformation) with one notice line when the generator cannot
    render posed. As ``run_inversion_with_pose_optimization.py``: the checkpoint's ``D_ema`` pose
    predictor on the 512² crop in [−1, 1] and its person mask (written to ``mask.png``), clamped to
    the training range with a notice.

    Not official (it has an SMPL-fitted camera): ``cfg.posed_camera_rounds`` times (none without
    ``cfg``), the camera estimated again (:func:`estimate_camera` with ``cfg``'s settings and
    ``distance``) with the average portrait in pose p₀, so that a turned neck is not taken for a
    camera change, then p₀ predicted again from that camera; it stops early when the camera no
    longer moves."""
    if G.renderer is None:
        log(
            f"Note: {checkpoint} holds no SMPL buffers (renderer.aligned_SMPL.*): the inversion keeps the "
            "body pose at 0, without the mesh-guided deformation (the official inversion optimises it)"
        )
        return None, label
    try:
        predictor = PosePredictor.from_checkpoint(checkpoint).to(target.device)
    except CheckpointError as e:
        if "no 'D_ema'" not in str(e):
            raise
        log(f"Note: {checkpoint} holds no pose predictor (D_ema): the body pose starts at 0 and is optimised")
        return torch.zeros(1, 6, device=target.device), label
    with torch.no_grad():
        w_avg, _ = w_statistics(G)
        ws = w_avg.repeat(1, G.num_ws, 1)
        prior = G.render(G.synthesize_pyramid(ws), ws, label, resolution=128, deterministic=True)["opacity"]
    mask = person_mask(read_rgb(os.path.join(out_dir, "aligned.png")), prior[0, 0].cpu().numpy())
    save_image(os.path.join(out_dir, "mask.png"), np.repeat(mask[..., None] * 255, 3, -1).astype(np.uint8))
    size = predictor.cfg.img_resolution
    image_in = torch.nn.functional.interpolate(target, size=(size, size), mode="bilinear", antialias=True)
    mask_in = torch.from_numpy(mask)[None, None].to(target.device)

    def predict(c: torch.Tensor) -> torch.Tensor:
        pose = clamp_pose(predictor.predict(image_in, mask_in, c), log=lambda m: log(f"Note: {m}"))
        degrees = [round(math.degrees(x), 1) for x in pose[0].tolist()]
        log(f"Starting body pose (neck, head axis-angle, degrees): {degrees}")
        return pose

    pose = predict(label)
    for _ in range(cfg.posed_camera_rounds if cfg is not None else 0):
        camera = _estimate_camera(G, target, distance, cfg, pose)
        if torch.equal(camera["label"], label):
            break
        label = camera["label"]
        log(f"Camera estimate in that pose: yaw {camera['yaw']:+.4g}°, elevation {camera['elevation']:+.4g}°")
        pose = predict(label)
    return pose, label


def _generate(cfg: PortraitInitConfig, out_dir: str, device, log: ProgressFn, inputs: dict) -> dict:

    prompt = portrait_prompt(cfg.prompt)
    log(f"Generating {cfg.num_candidates} candidate portraits with {cfg.text_to_image_model}: {prompt!r}")
    pipe = load_pipeline(cfg.text_to_image_model, device=device, option="text_to_image_model")
    t2i = TextToImageConfig(
        steps=cfg.candidate_steps,
        guidance_scale=cfg.candidate_guidance_scale,
        resolution=cfg.candidate_resolution,
        num_candidates=cfg.num_candidates,
        seed=cfg.candidate_seed,
    )
    candidates = generate_candidates(pipe, prompt, t2i)
    del pipe
    clear_pipeline_cache()  # the inversion and the SDS guidance do not need this copy
    files = []
    for i, cand in enumerate(candidates):
        name = f"candidates/candidate_{i}_seed{cand.seed}.png"
        save_image(os.path.join(out_dir, name), cand.image)
        files.append(name)
    record = {
        "prompt": prompt,
        "model": cfg.text_to_image_model,
        "files": files,
        "seeds": [cand.seed for cand in candidates],
        "settings": asdict(t2i),
        "inputs": inputs,
    }
    write_json(os.path.join(out_dir, "candidates.json"), record)
    return record


def _copy_photo(image: str, out_dir: str) -> str:
    """The user's photo copied into ``out_dir/input/`` (kept with what was made from it, and shown by
    the report page from inside the trial folder); returns the copy's path."""
    copy = os.path.join(out_dir, "input", os.path.basename(image))
    if not (os.path.isfile(copy) and filecmp.cmp(image, copy, shallow=False)):
        with atomic_path(copy, os.path.splitext(copy)[1]) as tmp:
            shutil.copyfile(image, tmp)
    return copy


def _align(
    G: PortraitGAN,
    checkpoint: str,
    cfg: PortraitInitConfig,
    sources: list[str],
    out_dir: str,
    distance: VGG16Distance,
    log: ProgressFn,
    inputs: dict,
) -> dict:
    detector = make_detector(cfg.detector)
    names = [os.path.relpath(p, out_dir) if p.startswith(out_dir) else p for p in sources]
    shown = [cfg.image] if cfg.image else names  # errors name the user's photo, not its copy
    images = [read_rgb(cfg.image, MIN_PHOTO_SIDE)] if cfg.image else [read_rgb(p) for p in sources]
    require_faces(images, detector, shown)
    framing = load_or_measure_framing(G, checkpoint, detector)
    if (
        len(images) == 1 or detector_name(detector) == "none"
    ):  # "none": the images are aligned already; take the first
        aligned = [align_image(images[0], framing, detector, cfg.aligned_resolution, source=shown[0])]
        reason = (
            "the only image" if len(images) == 1 else "detector 'none': the first image, taken as aligned"
        )
        chosen, report = 0, [{"name": names[0], "kept": True, "reason": reason}]
    else:
        chosen, aligned, report = select_candidate(
            images, framing, detector, names, size=cfg.aligned_resolution, max_padding=cfg.max_padding
        )
    for row in report:
        log(f"  {row['name']}: {'kept' if row['kept'] else 'dropped'} ({row['reason']})")
    log(f"Chose {names[chosen]}")
    best = aligned[chosen]
    save_image(os.path.join(out_dir, "aligned.png"), best.image)
    if cfg.estimate_camera:
        target = from_uint8(torch.from_numpy(best.image).permute(2, 0, 1)[None])
        camera = _estimate_camera(G, target, distance, cfg)
        log(f"Camera estimate: yaw {camera['yaw']:+.4g}°, elevation {camera['elevation']:+.4g}°")
    else:
        camera = {"label": canonical_label(1), "yaw": 0.0, "elevation": 0.0, "distances": {}}
    record = {
        "chosen": chosen,
        "report": report,
        "framing": framing.to_dict(),
        "crop": list(best.crop),
        "padding": best.padding,
        "camera": {**camera, "label": camera["label"].cpu().tolist()},
        "inputs": inputs,
    }
    write_json(os.path.join(out_dir, "alignment.json"), record)
    return record

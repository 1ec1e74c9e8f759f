"""Automatic alignment: any portrait photo → a square crop framed like the GAN's own frontal renders.

The official pipeline (``data_processing/preprocess_img_for_inversion.py``) frames a photo with keypoints, head boxes, an SMPL fit and
DensePose, and a person deletes the bad crops by hand. This port replaces all of it with one face
detector and one measurement:

1. :func:`measure_framing` renders the GAN from its frontal camera (:func:`canonical_label`) for a
   few random latents, runs the *same* detector on those renders and records where the face sits,
   as fractions of the image side (:class:`Framing`). :func:`load_or_measure_framing` stores that
   beside the checkpoint (``<checkpoint>.framing.json``), one entry per detector.
2. :func:`align_image` detects the face in a photo and cuts the square that puts it at the same
   place and size: side = ``face.size / framing.size``, the face centre at
   ``(framing.center_x, framing.center_y)`` of the crop. Parts of the crop outside the photo are
   filled by edge replication and reported as ``padding``.
3. :func:`select_candidate` aligns several candidates (e.g. the six text-to-image samples), drops
   the unusable ones with a reason (no face, several faces, a tiny face, too much padding) and picks
   the best of the rest: the manual deletion step, made automatic and explained.

Conventions: images are uint8 ``[H, W, 3]`` RGB (grayscale and RGBA are converted). Boxes are in
continuous pixel coordinates, x right, y down, pixel ``i`` covering ``[i, i + 1)``, so a box of the
pixels ``x_min … x_max`` is ``x0 = x_min, x1 = x_max + 1`` (OpenCV's ``(x, y, w, h)`` maps to
``x0 = x, x1 = x + w``). A face's size is ``sqrt(w·h)``, which is stable for boxes that are not
square and exact for the area of the box.

A detector is any callable ``uint8 [H, W, 3] → list[FaceBox]`` with a ``name``;
:func:`make_detector` builds one from a string ("haar", "none", a registered name, a cascade ``.xml``, or
``module:attr`` where the user allowed it: strings may come from files others wrote, so a string never
reaches code that is not a detector).
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import math
import os
import re
from dataclasses import asdict, dataclass, fields
from typing import Callable, Optional, Sequence

import cv2
import numpy as np
import torch
from tqdm import tqdm

from .camera import canonical_label
from .files import cache_root, fingerprint, read_json, write_json
from .media import as_rgb, to_uint8

DEFAULT_CASCADE = "haarcascade_frontalface_default.xml"  # ships in opencv-python(-headless) 4.x wheels
HAAR_WINDOW = 24  # the frontal-face cascades' training window: no smaller face can be found
HAAR_SCALE_FACTOR = 1.1  # pyramid step of detectMultiScale (OpenCV's default)
HAAR_MIN_NEIGHBORS = 5  # overlapping hits needed to accept a face (OpenCV's samples use 3–6)
DEFAULT_MIN_FACE_PX = 32  # quoted in the "no face" message for detectors that state no minimum
AMBIGUOUS_FACE_RATIO = 0.5  # a second face at least this size × the largest makes a photo ambiguous
NONE_FRAMING_SIZE = 1.0  # Framing.size recorded for detector "none" (unused: the whole image is the crop)
FRAMING_SUFFIX = ".framing.json"
DETECTOR_CHOICES = (
    "'haar', 'none', a registered detector name, a path to an OpenCV cascade .xml, or 'module:attr' "
    "(a FaceDetector or @face_detector function; from your command line or PORTRAIT3D_DETECTORS)"
)

Detector = Callable[[np.ndarray], "list[FaceBox]"]


# --------------------------------------------------------------------------- boxes, errors
@dataclass(frozen=True)
class FaceBox:
    """A face in pixels of the image it was found in (x right, y down, ``x1``/``y1`` exclusive edges)."""

    x0: float
    y0: float
    x1: float
    y1: float
    score: float = 1.0

    @property
    def center(self) -> tuple[float, float]:
        return (0.5 * (self.x0 + self.x1), 0.5 * (self.y0 + self.y1))

    @property
    def size(self) -> float:
        """``sqrt(w·h)``: the side of the square with the box's area."""
        return math.sqrt(max(self.x1 - self.x0, 0.0) * max(self.y1 - self.y0, 0.0))


class FramingError(ValueError):
    """The detector finds no face in the GAN's own renders (:func:`measure_framing`; remembered with
    the framing records, so a retry with the same detector fails at once)."""


class NoFaceError(ValueError):
    """No usable face: raised by :func:`align_image` and :func:`select_candidate` (one-line message)."""


def _no_face(source: str, min_px: int) -> NoFaceError:
    return NoFaceError(
        f"{source}: no face found; use a photo with one clearly visible, roughly frontal face at "
        f"least {min_px} px wide, or pass an aligned square crop with detector 'none'"
    )


def _min_face_px(detector: Detector, height: int, width: int) -> int:
    fn = getattr(detector, "min_face_px", None)
    return int(fn(height, width)) if callable(fn) else DEFAULT_MIN_FACE_PX


def detector_name(detector: Detector) -> str:
    """``detector.name``, or ``module:qualname`` for a callable without one."""
    name = getattr(detector, "name", None)
    if isinstance(name, str) and name:
        return name
    target = detector if hasattr(detector, "__qualname__") else type(detector)
    return f"{target.__module__}:{target.__qualname__}"


def _is_none_detector(detector: Detector) -> bool:
    return isinstance(detector, NoDetector) or getattr(detector, "name", None) == "none"


# --------------------------------------------------------------------------- detectors
class FaceDetector:
    """Base of the detectors: ``name``, and ``__call__(image uint8 [H, W, 3]) → list[FaceBox]``.
    Subclass it (or mark a function with :func:`face_detector`) so that a string may name it."""

    name: str = ""

    def __call__(self, image: np.ndarray) -> list[FaceBox]:
        raise NotImplementedError


class HaarCascadeDetector(FaceDetector):
    """OpenCV's Viola–Jones cascade; by default the frontal-face model inside the opencv wheel.

    ``min_size_fraction`` is the smallest face searched for, as a fraction of the image's shorter
    side (never below the cascade's 24 px window). The score of a box is the cascade's final-stage
    certainty (``levelWeights`` of ``detectMultiScale3(outputRejectLevels=True)``): comparable
    between images for the same cascade, not a probability.
    """

    def __init__(self, cascade_path: Optional[str] = None, min_size_fraction: float = 0.1):
        path = cascade_path or os.path.join(cv2.data.haarcascades, DEFAULT_CASCADE)
        if not os.path.isfile(path):
            raise ValueError(f"{path}: OpenCV cascade file not found")
        try:
            cascade = cv2.CascadeClassifier(path)
            ok = not cascade.empty()
        except (cv2.error, SystemError):  # a malformed XML raises inside the constructor
            ok = False
        if not ok:
            raise ValueError(f"{path}: not a valid OpenCV cascade XML (could not be loaded)")
        if not 0.0 < min_size_fraction < 1.0:
            raise ValueError(f"min_size_fraction must be in (0, 1), got {min_size_fraction}")
        self.cascade = cascade
        self.path = path
        self.min_size_fraction = min_size_fraction
        self.name = "haar:" + os.path.basename(path)

    def min_face_px(self, height: int, width: int) -> int:
        return max(HAAR_WINDOW, int(math.ceil(self.min_size_fraction * min(height, width))))

    def __call__(self, image: np.ndarray) -> list[FaceBox]:
        gray = cv2.equalizeHist(cv2.cvtColor(as_rgb(image), cv2.COLOR_RGB2GRAY))
        m = self.min_face_px(*gray.shape)
        if m > min(gray.shape):
            return []
        rects, _, weights = self.cascade.detectMultiScale3(
            gray,
            scaleFactor=HAAR_SCALE_FACTOR,
            minNeighbors=HAAR_MIN_NEIGHBORS,
            minSize=(m, m),
            outputRejectLevels=True,
        )
        weights = np.asarray(weights, dtype=np.float64).reshape(-1)
        return [
            FaceBox(float(x), float(y), float(x + w), float(y + h), float(s))
            for (x, y, w, h), s in zip(np.asarray(rects).reshape(-1, 4), weights)
        ]


class NoDetector(FaceDetector):
    """Detector "none": the image is already aligned (a GAN render, a pre-cropped square photo).

    :func:`align_image` does not call it: the whole (square) image is the crop. Called directly it
    returns the whole image as one box.
    """

    name = "none"

    def __call__(self, image: np.ndarray) -> list[FaceBox]:
        h, w = np.asarray(image).shape[:2]
        return [FaceBox(0.0, 0.0, float(w), float(h))]


class _NamedDetector(FaceDetector):
    """A user callable without a ``name``, named after where it was imported from."""

    def __init__(self, fn: Callable, name: str):
        self.fn, self.name = fn, name

    def __call__(self, image: np.ndarray) -> list[FaceBox]:
        return self.fn(image)


def detect(detector: Detector, image: np.ndarray) -> list[FaceBox]:
    """``detector(image)``, checked: a failure of a user's detector or an answer that is not a list
    of finite :class:`FaceBox` becomes a one-line ``ValueError`` naming the detector."""
    if isinstance(detector, (HaarCascadeDetector, NoDetector)):
        return detector(image)
    name = detector_name(detector)
    usage = "a detector is a function image [H, W, 3] uint8 → list of FaceBox(x0, y0, x1, y1, score)"
    try:
        boxes = detector(image)
    except Exception as e:  # the user's code: any failure is reported as a bad detector
        message = (str(e).splitlines() or [""])[0][:160]
        raise ValueError(
            f"detector {name!r} failed on an image ({type(e).__name__}: {message}); {usage}"
        ) from None
    if (
        not isinstance(boxes, (list, tuple))
        or not all(isinstance(b, FaceBox) for b in boxes)
        or not all(math.isfinite(v) for b in boxes for v in (b.x0, b.y0, b.x1, b.y1, b.score))
    ):
        raise ValueError(
            f"detector {name!r} returned {type(boxes).__name__} {str(boxes)[:60]!r}, not a list of "
            f"FaceBox with finite coordinates; {usage}"
        )
    return list(boxes)


def other_detectors(failed: str) -> str:
    """The detector choices, less the one named ``failed`` (a :func:`detector_name`) that just failed."""
    choices = [
        None if failed == f"haar:{DEFAULT_CASCADE}" else "'haar'",
        "another OpenCV cascade .xml" if failed.startswith("haar:") else "an OpenCV cascade .xml",
        "a registered detector name",
        "'module:attr' (a FaceDetector or @face_detector function; from your command line or "
        "PORTRAIT3D_DETECTORS)",
        "or 'none' (images already cropped like the GAN's renders)",
    ]
    return "another detector: " + ", ".join(c for c in choices if c)


# --------------------------------------------------------------------------- naming detectors
# A detector named by a string may come from data a user received (a config, a prompt file's
# overrides, a trial's parsed.yaml), so a string reaches only detectors that are safe by design:
# the built-in ones, registered ones, cascade files, and a "module:attr" only where the user opted
# in on their own command line (``python -m gan_prior invert --detector``) or environment
# (:data:`DETECTORS_ENV`). Whatever "module:attr" names must be a detector (:func:`is_detector`),
# so that it never calls ``pickle.loads`` or ``os.system`` on an image.
DETECTOR_ENTRY_POINTS = "gan_prior.detectors"  # installed packages register detectors by name here
DETECTORS_ENV = "PORTRAIT3D_DETECTORS"  # "module:attr" detectors a config may name, comma-separated
_REGISTRY: dict[str, object] = {"haar": HaarCascadeDetector, "none": NoDetector}
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*$")
_IMPORT = re.compile(
    r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$"
)


def face_detector(fn: Callable) -> Callable:
    """Mark a function ``image uint8 [H, W, 3] → list[FaceBox]`` as a face detector, so that
    ``module:attr`` may name it (an unmarked callable is refused without being called)."""
    fn.is_face_detector = True
    return fn


def is_detector(target) -> bool:
    """A :class:`FaceDetector` subclass or instance, or a function marked with :func:`face_detector`."""
    if isinstance(target, type):
        return issubclass(target, FaceDetector)
    return isinstance(target, FaceDetector) or (
        inspect.isfunction(target) and target.__dict__.get("is_face_detector") is True
    )


def register_detector(name: str, target) -> None:
    """Make ``name`` (letters, digits, ``_.-``) a detector name for :func:`make_detector` and every
    config: ``target`` is a :class:`FaceDetector` subclass (instantiated without arguments) or
    instance, or a :func:`face_detector` function."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(f"detector name {name!r}: use letters, digits, '_', '.' and '-'")
    if not is_detector(target):
        raise ValueError(
            f"detector {name!r}: {target!r:.60} is not a FaceDetector or a @face_detector function"
        )
    _REGISTRY[name] = target


def _entry_point(name: str):
    from importlib.metadata import entry_points

    found = [ep for ep in entry_points(group=DETECTOR_ENTRY_POINTS) if ep.name == name]
    return found[0] if found else None


_ALLOWED_HERE: set[str] = set()  # "module:attr" given on this process's own command line


def allow_detector_import(spec: str) -> None:
    """The user's own command line names ``spec`` ("module:attr"): allow it in this process (as
    if listed in :data:`DETECTORS_ENV`), so that the configs it builds may name it."""
    _ALLOWED_HERE.add((spec or "").strip())


def _allowed_imports() -> set[str]:
    listed = os.environ.get(DETECTORS_ENV, "").replace(";", ",").split(",")
    return {s.strip() for s in listed if s.strip()} | _ALLOWED_HERE


def _refused_import(spec: str) -> ValueError:
    return ValueError(
        f"detector {spec!r}: a 'module:attr' detector is code, and configs, prompt files and overrides "
        f"may not name code; give it on your own command line (python -m gan_prior invert --detector "
        f"{spec}) or allow it in your environment ({DETECTORS_ENV}={spec}), or register it by name "
        f"(entry point group {DETECTOR_ENTRY_POINTS!r})"
    )


def check_detector_spec(spec: str, allow_import: bool = False) -> None:
    """Refuse, without importing or running anything, a detector string :func:`make_detector`
    would refuse for where it came from (``allow_import``: the user's own command line)."""
    spec = (spec or "").strip()
    if spec in _REGISTRY or spec.lower().endswith(".xml") or os.path.isfile(spec):
        return
    if ":" in spec:
        if not _IMPORT.match(spec):
            raise ValueError(f"detector {spec!r}: not of the form module:attr; use {DETECTOR_CHOICES}")
        if not (allow_import or spec in _allowed_imports()):
            raise _refused_import(spec)
        return
    if _NAME.match(spec) and _entry_point(spec) is not None:
        return
    raise ValueError(f"unknown detector {spec!r}; use {DETECTOR_CHOICES}")


def _import(spec: str):
    module_name, _, attr = spec.partition(":")
    try:
        obj = importlib.import_module(module_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except Exception as e:  # ImportError, AttributeError, or the module failing as it is imported
        raise ValueError(
            f"detector {spec!r}: cannot import it ({type(e).__name__}: "
            f"{(str(e).splitlines() or [''])[0][:160]})"
        ) from None
    return obj


def _instantiate(target, spec: str) -> Detector:
    if not is_detector(target):
        what = "not callable" if not callable(target) else f"a {type(target).__name__}, not a face detector"
        raise ValueError(
            f"detector {spec!r} is {what}; refused without calling it: a detector is a "
            "gan_prior.alignment.FaceDetector subclass or a function marked @face_detector "
            "(image [H, W, 3] uint8 → list of FaceBox)"
        )
    if isinstance(target, type):
        try:
            target = target()
        except Exception as e:
            raise ValueError(
                f"detector {spec!r}: the class cannot be instantiated without arguments "
                f"({type(e).__name__}); give a callable image → list of FaceBox"
            ) from None
    name = getattr(target, "name", None)
    return target if isinstance(name, str) and name else _NamedDetector(target, spec)


def make_detector(spec: str = "haar", allow_import: bool = False) -> Detector:
    """A detector from a string: a registered name ("haar": OpenCV's default frontal cascade,
    "none", :func:`register_detector` names, entry points of :data:`DETECTOR_ENTRY_POINTS`), a
    path to a cascade ``.xml``, or "module:attr" (a :class:`FaceDetector` or a
    :func:`face_detector` function) — the last only with ``allow_import`` (the user's own command
    line) or when listed in :data:`DETECTORS_ENV`."""
    spec = (spec or "").strip()
    check_detector_spec(spec, allow_import)
    if spec in _REGISTRY:
        return _instantiate(_REGISTRY[spec], spec)
    if spec.lower().endswith(".xml") or os.path.isfile(spec):
        return HaarCascadeDetector(spec)
    if ":" in spec:
        return _instantiate(_import(spec), spec)
    try:
        target = _entry_point(spec).load()
    except Exception as e:
        raise ValueError(
            f"detector {spec!r}: its entry point cannot be loaded ({type(e).__name__}: {e})"
        ) from None
    return _instantiate(target, spec)


# --------------------------------------------------------------------------- framing
@dataclass
class Framing:
    """Where the GAN puts the face in its frontal renders, as fractions of the image side:
    the face box centre ``(center_x, center_y)`` and its size ``sqrt(w·h) / side``, the medians
    over ``renders`` renders in which ``detector`` found a face."""

    center_x: float
    center_y: float
    size: float
    detector: str
    renders: int

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Framing":
        names = [f.name for f in fields(cls)]
        missing = [n for n in names if n not in d]
        if missing:
            raise ValueError(f"framing record lacks {missing}")
        try:
            framing = cls(
                float(d["center_x"]),
                float(d["center_y"]),
                float(d["size"]),
                str(d["detector"]),
                int(d["renders"]),
            )
        except (TypeError, ValueError, OverflowError) as e:
            raise ValueError(f"framing record has a bad value ({e})") from None
        if (
            not all(math.isfinite(v) for v in (framing.center_x, framing.center_y, framing.size))
            or framing.size <= 0
        ):
            raise ValueError(f"framing record has non-finite or non-positive values {framing}")
        return framing


def none_framing() -> Framing:
    """The framing of detector "none": the whole image is the crop (``size`` is unused)."""
    return Framing(0.5, 0.5, NONE_FRAMING_SIZE, "none", 0)


@torch.no_grad()
def measure_framing(
    G,
    detector: Detector,
    n: int = 16,
    seed: int = 0,
    resolution: int = 256,
    truncation_psi: float = 0.7,
    progress: bool = True,
) -> Framing:
    """Render ``n`` random latents (``torch.Generator`` seeded with ``seed``) from the frontal camera,
    deterministically, run ``detector`` on each uint8 render, keep the largest box per render and
    return the median centre and size. Raises ``ValueError`` if fewer than half the renders have a face."""
    name = detector_name(detector)
    if _is_none_detector(detector):
        return none_framing()
    device = next(G.parameters()).device
    z_all = torch.randn(n, G.cfg.z_dim, generator=torch.Generator().manual_seed(seed))
    c = canonical_label(1).to(device)
    found = []
    for z in tqdm(z_all, desc=f"framing ({name})", unit="render", disable=not progress):
        ws = G.mapping(z[None].to(device), c, truncation_psi=truncation_psi)
        image = G.render(G.synthesize_pyramid(ws), ws, c, resolution=resolution, deterministic=True)["image"]
        boxes = detect(detector, to_uint8(image[0]))
        if boxes:
            box = max(boxes, key=lambda b: (b.size, b.score))
            cx, cy = box.center
            found.append((cx / resolution, cy / resolution, box.size / resolution))
    if 2 * len(found) < n:
        raise FramingError(
            f"detector {name!r} found a face in only {len(found)} of {n} frontal renders of the GAN: "
            f"it does not find faces in the GAN's renders; use {other_detectors(name)}"
        )
    cx, cy, size = np.median(np.asarray(found), axis=0)
    return Framing(float(cx), float(cy), float(size), name, len(found))


_FRAMING_SETTINGS = ("n", "seed", "resolution", "truncation_psi")  # what a stored framing depends on


def framing_paths(checkpoint: str) -> tuple[str, str]:
    """(beside the checkpoint, the fallback in the cache) for the framing record of ``checkpoint``."""
    path = os.path.abspath(checkpoint).rstrip(os.sep)
    fp = fingerprint(path)
    key = hashlib.sha1(f"{path}\n{fp['size']}\n{fp['mtime_ns']}".encode()).hexdigest()
    # the fallback stays where earlier versions kept it
    return path + FRAMING_SUFFIX, str(cache_root() / "tiny" / "framing" / f"{key}.json")


def load_or_measure_framing(G, checkpoint: str, detector: Detector, **measure_kwargs) -> Framing:
    """The framing of ``checkpoint``'s GAN for ``detector``, measured once and stored with the model.

    The record is ``<checkpoint>.framing.json`` beside the checkpoint (written atomically), or, when
    that folder is not writable, ``<cache_root()>/tiny/framing/<sha1 of path, size, mtime>.json``. It
    holds the checkpoint's size and mtime and one entry per detector name with the measurement
    settings; an entry is reused when the checkpoint is unchanged and the settings are the same,
    otherwise the framing is measured (:func:`measure_framing` with ``measure_kwargs``) and stored.
    A detector that finds no face in the renders is recorded too: asked again, it fails at once
    (:class:`FramingError`). Detector "none" needs no framing and renders nothing.
    """
    if _is_none_detector(detector):
        return none_framing()
    name = detector_name(detector)
    defaults = {
        k: p.default
        for k, p in inspect.signature(measure_framing).parameters.items()
        if k in _FRAMING_SETTINGS
    }
    settings = {k: measure_kwargs.get(k, v) for k, v in defaults.items()}
    cascade = getattr(detector, "path", None)  # a cascade file edited in place keeps its name: key on it too
    if isinstance(cascade, str) and os.path.isfile(cascade):
        settings["detector_file"] = fingerprint(cascade)
    fp = fingerprint(checkpoint)
    beside, cached = framing_paths(checkpoint)
    record = None
    for path in (beside, cached):
        data = read_json(path)
        if data is not None and data.get("checkpoint") == fp and isinstance(data.get("framings"), dict):
            record = data
            entry = data["framings"].get(name)
            if isinstance(entry, dict) and entry.get("settings") == settings:
                if isinstance(entry.get("failed"), str):  # measured before, with no faces found
                    raise FramingError(f"{entry['failed']} (found earlier, recorded in {path})")
                try:
                    return Framing.from_dict(entry)
                except ValueError:
                    pass
            break
    record = record or {"checkpoint": fp, "framings": {}}
    try:
        framing = measure_framing(G, detector, **measure_kwargs)
    except FramingError as e:
        record["framings"][name] = {"failed": str(e), "settings": settings}
        _write_framing_record(beside, cached, record)
        raise
    record["framings"][name] = {**framing.to_dict(), "settings": settings}
    _write_framing_record(beside, cached, record)
    return framing


def _write_framing_record(beside: str, cached: str, record: dict) -> None:
    try:
        write_json(beside, record)
    except OSError:
        write_json(cached, record)


# --------------------------------------------------------------------------- alignment
@dataclass
class AlignedImage:
    image: np.ndarray  # uint8 [size, size, 3]
    face: Optional[FaceBox]  # in source pixels (None for detector "none")
    crop: tuple[float, float, float]  # (x0, y0, side) of the square crop in source pixels
    padding: float  # fraction of the crop's area outside the source image (filled by edge replication)


def crop_padding(x0: float, y0: float, side: float, width: int, height: int) -> float:
    """Fraction of the square ``(x0, y0, side)`` that lies outside a ``width × height`` image."""
    inside_w = max(0.0, min(x0 + side, width) - max(x0, 0.0))
    inside_h = max(0.0, min(y0 + side, height) - max(y0, 0.0))
    return max(0.0, 1.0 - inside_w * inside_h / (side * side))


def _resample(image: np.ndarray, x0: float, y0: float, side: float, size: int) -> np.ndarray:
    """The square ``(x0, y0, side)`` of ``image`` (continuous pixel coordinates) at ``size × size``.

    Downscaling first shrinks the whole image with ``cv2.resize(INTER_AREA)`` to about the output
    scale (exact per-axis factors kept), then one ``warpAffine(INTER_LINEAR, BORDER_REPLICATE)``
    places the crop: area averaging without aliasing, one affine map with sub-pixel placement.
    """
    h, w = image.shape[:2]
    sx = sy = 1.0
    if side > size:
        nw, nh = max(1, round(w * size / side)), max(1, round(h * size / side))
        image = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_AREA)
        sx, sy = nw / w, nh / h
    # output pixel centre i + 0.5 ↔ source coordinate x0 + (i + 0.5)·side/size, in pixel-centre indices
    kx, ky = side * sx / size, side * sy / size
    m = np.array([[kx, 0.0, x0 * sx + 0.5 * kx - 0.5], [0.0, ky, y0 * sy + 0.5 * ky - 0.5]])
    return cv2.warpAffine(
        image, m, (size, size), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REPLICATE
    )


def _align_face(image: np.ndarray, face: FaceBox, framing: Framing, size: int) -> AlignedImage:
    side = face.size / framing.size
    cx, cy = face.center
    x0, y0 = cx - framing.center_x * side, cy - framing.center_y * side
    h, w = image.shape[:2]
    return AlignedImage(
        _resample(image, x0, y0, side, size), face, (x0, y0, side), crop_padding(x0, y0, side, w, h)
    )


def _align_whole(image: np.ndarray, size: int, source: str) -> AlignedImage:
    h, w = image.shape[:2]
    if h != w:
        raise ValueError(
            f"{source}: detector 'none' needs an aligned square image, got {w}x{h}; "
            "crop it square or use a face detector (e.g. 'haar')"
        )
    return AlignedImage(_resample(image, 0.0, 0.0, float(w), size), None, (0.0, 0.0, float(w)), 0.0)


def _largest(boxes: Sequence[FaceBox]) -> list[FaceBox]:
    return sorted(boxes, key=lambda b: (b.size, b.score), reverse=True)


def require_faces(images: Sequence[np.ndarray], detector: Detector, names: Sequence[str]) -> None:
    """Raise :class:`NoFaceError` when no image has a face (checked before the framing is measured)."""
    if _is_none_detector(detector):
        return
    images = [as_rgb(im) for im in images]
    if any(detect(detector, im) for im in images):
        return
    if len(images) == 1:
        raise _no_face(names[0], _min_face_px(detector, *images[0].shape[:2]))
    raise NoFaceError(
        f"no face found in any of the {len(images)} images ({', '.join(names)}); try another "
        "prompt or seed, or pass an aligned square crop with detector 'none'"
    )


def align_image(
    image: np.ndarray, framing: Framing, detector: Detector, size: int = 512, source: str = "image"
) -> AlignedImage:
    """Crop ``image`` square around its largest (then highest-scoring) face so that the face sits
    where ``framing`` says the GAN puts it, resampled to ``size × size``.

    Detector "none": the image must already be square and aligned; it is only resized.
    Raises :class:`NoFaceError` (naming ``source``) when the detector finds no face.
    """
    image = as_rgb(image)
    if _is_none_detector(detector):
        return _align_whole(image, size, source)
    boxes = _largest(detect(detector, image))
    if not boxes:
        raise _no_face(source, _min_face_px(detector, *image.shape[:2]))
    return _align_face(image, boxes[0], framing, size)


def select_candidate(
    images: Sequence[np.ndarray],
    framing: Framing,
    detector: Detector,
    names: Optional[Sequence[str]] = None,
    size: int = 512,
    max_padding: float = 0.2,
    min_face_fraction: float = 0.08,
) -> tuple[int, list[Optional[AlignedImage]], list[dict]]:
    """Align every candidate, drop the unusable ones and pick the best of the rest.

    Dropped: no face; an ambiguous photo (a second face at least half the size of the largest); a
    face smaller than ``min_face_fraction`` of the image's shorter side; a crop with more than
    ``max_padding`` of its area outside the image. Among those kept the highest detector score
    wins, ties going to the least padding (then the first). With detector "none" every square
    image is kept (score 1, padding 0) and the first wins.

    Returns ``(best index, aligned images (None where dropped), report)``: one dict per image,
    ``{"name", "kept", "reason", "faces", "score", "padding", "face_fraction"}``. Raises
    :class:`NoFaceError` listing every candidate's reason when none is kept.
    """
    names = list(names) if names is not None else [f"candidate {i}" for i in range(len(images))]
    if len(names) != len(images):
        raise ValueError(f"{len(images)} images but {len(names)} names")
    if not images:
        raise ValueError("select_candidate needs at least one image")
    aligned: list[Optional[AlignedImage]] = []
    report: list[dict] = []
    for image, name in zip(images, names):
        image = as_rgb(image)
        h, w = image.shape[:2]
        row = {
            "name": name,
            "kept": False,
            "reason": "",
            "faces": 0,
            "score": None,
            "padding": None,
            "face_fraction": None,
        }
        result = None
        if _is_none_detector(detector):
            try:
                result = _align_whole(image, size, name)
                row.update(faces=1, score=1.0, padding=0.0, face_fraction=None)
            except ValueError:
                row["reason"] = f"not square ({w}x{h}) and detector 'none' does not crop"
        else:
            boxes = _largest(detect(detector, image))
            row["faces"] = len(boxes)
            if boxes:
                face = boxes[0]
                candidate = _align_face(image, face, framing, size)
                row.update(
                    score=float(face.score),
                    padding=float(candidate.padding),
                    face_fraction=face.size / min(h, w),
                )
            if not boxes:
                row["reason"] = "no face found"
            elif len(boxes) > 1 and boxes[1].size >= AMBIGUOUS_FACE_RATIO * boxes[0].size:
                row["reason"] = (
                    f"ambiguous: {len(boxes)} faces, the second {boxes[1].size / boxes[0].size:.2f}x "
                    f"the size of the largest"
                )
            elif row["face_fraction"] < min_face_fraction:
                row["reason"] = (
                    f"face too small: {face.size:.0f} px, {row['face_fraction']:.3f} of the image side "
                    f"(< {min_face_fraction})"
                )
            elif candidate.padding > max_padding:
                row["reason"] = (
                    f"crop needs {candidate.padding:.1%} padding outside the image "
                    f"(> {max_padding:.0%}): the face is too close to the border or too large"
                )
            else:
                result = candidate
        row["kept"] = result is not None
        aligned.append(result)
        report.append(row)
    kept = [i for i, r in enumerate(report) if r["kept"]]
    if not kept:
        reasons = "; ".join(f"{r['name']}: {r['reason']}" for r in report)
        raise NoFaceError(f"no usable candidate among {len(images)} image(s): {reasons}")
    best = min(kept, key=lambda i: (-report[i]["score"], report[i]["padding"], i))
    for i in kept:
        r = report[i]
        summary = f"{r['faces']} face(s), score {r['score']:.3g}, padding {r['padding']:.1%}"
        r["reason"] = (
            f"selected: {summary}"
            if i == best
            else f"kept but not selected: {summary} (selected {report[best]['name']!r})"
        )
    return best, aligned, report


# ---------------------------------------------------------------------------- person mask
def person_mask(image: np.ndarray, prior: np.ndarray, iterations: int = 5) -> np.ndarray:
    """A person mask ``[H, W]`` in {0, 1} of an aligned crop ``image`` (uint8 ``[H, W, 3]``) for the
    pose predictor's ``image_mask``.

    The official pipeline segments the crop with DeepLabV3-ResNet101 (person class,
    ``segmentation_example.py``), whose weights cannot be had here. Instead: OpenCV's GrabCut, started
    from ``prior`` ``[H, W]`` in [0, 1] — the mask of the GAN's average portrait rendered from the
    estimated camera, which the crop is framed to match — as "probably person" (> 0.5) and "probably
    background", with the image corners outside it as certain background. Seeded, so repeatable.
    """
    h, w = image.shape[:2]
    prior = cv2.resize(prior.astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR)
    state = np.where(prior > 0.5, cv2.GC_PR_FGD, cv2.GC_PR_BGD).astype(np.uint8)
    state[(prior < 0.02)] = cv2.GC_BGD
    if not (state == cv2.GC_PR_FGD).any() or not np.isin(state, (cv2.GC_BGD, cv2.GC_PR_BGD)).any():
        return (prior > 0.5).astype(np.float32)
    cv2.setRNGSeed(0)
    bgd, fgd = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
    cv2.grabCut(
        np.ascontiguousarray(image[..., ::-1]), state, None, bgd, fgd, iterations, cv2.GC_INIT_WITH_MASK
    )
    return np.isin(state, (cv2.GC_FGD, cv2.GC_PR_FGD)).astype(np.float32)

"""The paper's quantitative evaluation (§5.2): CLIP score of rendered views against the prompt,
and FID / KID between images of the diffusion model and rendered views.

- CLIP score (Hessel et al. 2021, as torchmetrics): ``100 · max(cos(image, text), 0)`` averaged
  over the views; any transformers CLIP (local folder or hub id), e.g. ``openai/clip-vit-large-patch14``.
- FID / KID on the standard 2048-d pool3 features of the TF-ported Inception v3
  (``pt_inception-2015-12-05-6726825d.pth``, the file pytorch-fid and most papers use), loaded
  from a local path with ``torch.load(weights_only=True)`` into pytorch-fid's network (its own
  download is never called). FID is the Fréchet distance of the two Gaussians; KID the unbiased
  MMD² with the cubic polynomial kernel, averaged over random subsets.

The paper does not give its CLIP variant, sample counts or view set; the numbers are comparable
between runs of this code, not to the paper's table.
"""

from __future__ import annotations

import functools
import json
import math
import os
import warnings
from typing import Optional, Sequence, Union

import imageio.v2 as imageio
import numpy as np
import torch
from scipy import linalg
from tqdm import tqdm

from .files import write_json
from .media import as_rgb, contact_sheet, save_image

Images = Union[str, Sequence[str], Sequence[np.ndarray]]
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


class EvaluationError(ValueError):
    """One line naming the option or file and the fix."""


OUTPUTS = ("metrics.json", "contact_sheet.png")  # what :func:`evaluate` writes into its folder


MIN_SIDE = 4  # px: CLIP's processor takes an image 1 or 3 px high for channels-first (1×1, 2×1 broke it)
MAX_DECODED_BYTES = 1 << 30  # uint8 pixels one set of images may decode to (240 frames of 512² are 0.2 GiB)
VIDEO_SUFFIXES = (".mp4", ".gif", ".webm", ".mov")


def check_weights(
    clip_model: Optional[str],
    inception: Optional[str],
    clip_option: str = "--clip",
    inception_option: str = "--inception",
) -> None:
    """Fail before any work on a CLIP folder or an Inception file that is not there (a hub id is
    checked when it loads). The one check of these options: the ``gan_prior evaluate`` and
    ``portrait3d evaluate`` commands and ``system.evaluation`` name their own option."""
    if clip_model and str(clip_model).startswith((".", "/", "~")):
        if not os.path.isdir(os.path.expanduser(clip_model)):
            raise EvaluationError(
                f"{clip_option}: folder {clip_model} not found; give a CLIP model folder or a hub id "
                "(e.g. openai/clip-vit-large-patch14), or leave it unset"
            )
    if inception and not os.path.isfile(inception):
        raise EvaluationError(
            f"{inception_option}: {inception} not found; give pt_inception-2015-12-05-6726825d.pth "
            "(the FID Inception weights pytorch-fid uses), or leave it unset"
        )


def load_images(
    source: Images, option: str = "--renders", exclude: Sequence[str] = (), max_bytes: int = MAX_DECODED_BYTES
) -> list[np.ndarray]:
    """uint8 ``[H, W, 3]`` images from a folder (sorted; hidden files and the paths in ``exclude``,
    e.g. this command's own outputs, skipped), a video (every frame), files, or arrays.

    Videos are decoded a frame at a time, and all the images together may decode to at most
    ``max_bytes``: a small file claiming many large frames is refused (from its header where it
    states them, else as soon as the frames read pass the bound), never loaded whole."""
    if isinstance(source, (list, tuple)) and source and isinstance(source[0], np.ndarray):
        images = [np.asarray(x) for x in source]
    else:
        paths = [source] if isinstance(source, str) else list(source)
        skip = {os.path.realpath(p) for p in exclude}
        files: list[str] = []
        for p in paths:
            if os.path.isdir(p):
                try:
                    names = sorted(os.listdir(p))
                except OSError as e:
                    raise EvaluationError(f"{option}: {p} cannot be listed ({e.strerror})") from None
                files += [
                    os.path.join(p, f)
                    for f in names
                    if f.lower().endswith(IMAGE_SUFFIXES)
                    and not f.startswith(".")
                    and os.path.realpath(os.path.join(p, f)) not in skip
                ]
            elif os.path.isfile(p):
                files.append(p)
            else:
                raise EvaluationError(
                    f"{option}: {p} not found; give a folder of images, image files or a video"
                )
        images = _decode(files, option, max_bytes)
    if not images:
        raise EvaluationError(f"{option}: no images found in {source!r}")
    try:
        return [as_rgb(x) for x in images]
    except ValueError as e:
        raise EvaluationError(f"{option}: {e}") from None


def _decode(files: Sequence[str], option: str, max_bytes: int) -> list[np.ndarray]:
    """The images and video frames of ``files``, decoded one at a time within ``max_bytes``."""
    images: list[np.ndarray] = []
    total = 0

    def too_much(f: str, what: str) -> EvaluationError:
        return EvaluationError(
            f"{option}: {f} decodes to more than {max_bytes >> 20} MiB of pixels{what}; give fewer or "
            "smaller images (e.g. render the views at a lower resolution or with fewer frames)"
        )

    for f in files:
        try:
            if f.lower().endswith(VIDEO_SUFFIXES):
                with imageio.get_reader(f) as reader:
                    meta = reader.get_meta_data()
                    size, n = meta.get("size"), meta.get("nframes")
                    if not (isinstance(n, (int, float)) and math.isfinite(n)):  # ffmpeg: from the duration
                        n = float(meta.get("duration") or 0) * float(meta.get("fps") or 0)
                    if size and math.isfinite(n) and n > 0:
                        claimed = round(n) * int(size[0]) * int(size[1]) * 3
                        if total + claimed > max_bytes:  # refused before any frame is decoded
                            raise too_much(f, f" ({round(n)} frames of {size[0]}×{size[1]})")
                    for frame in reader:
                        total += np.asarray(frame).nbytes
                        if total > max_bytes:
                            raise too_much(f, f" (stopped after {len(images)} frames)")
                        images.append(np.asarray(frame))
            else:
                image = np.asarray(imageio.imread(f))
                total += image.nbytes
                if total > max_bytes:
                    raise too_much(f, " (with the images before it)")
                images.append(image)
        except EvaluationError:
            raise
        except PermissionError:
            raise EvaluationError(
                f"{option}: {f}: permission denied; make it readable for you (chmod u+r)"
            ) from None
        except MemoryError:
            raise too_much(f, "") from None
        except Exception as e:
            raise EvaluationError(
                f"{option}: {f} is not a readable image or video ({type(e).__name__})"
            ) from None
    return images


@functools.lru_cache(maxsize=1)
def _load_clip(model: str):
    """The CLIP model and processor (the last one kept: a set of portraits loads it once)."""
    from transformers import CLIPModel, CLIPProcessor

    try:
        return CLIPModel.from_pretrained(model).eval(), CLIPProcessor.from_pretrained(model)
    except Exception as e:
        raise EvaluationError(
            f"--clip: cannot load a CLIP model from {model!r} ({type(e).__name__}); give a local "
            "folder (e.g. a download of openai/clip-vit-large-patch14) or a cached hub id"
        ) from None


def default_device() -> torch.device:
    """Where the metric networks run unless told: the GPU when there is one."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@torch.no_grad()
def clip_score(
    images: Sequence[np.ndarray], prompt: str, model: str, batch_size: int = 16, device=None
) -> dict:
    """``{"clip_score": mean, "per_image": [...]}``, each ``100 · max(cos(image, text), 0)``; CLIP
    runs on ``device`` (default: the GPU when there is one)."""
    if not prompt.strip():
        raise EvaluationError("--prompt is empty; give the prompt the portrait was made from")
    device = torch.device(device) if device is not None else default_device()
    clip, processor = _load_clip(model)
    clip.to(device)  # the cached model follows the last caller's device
    max_len = processor.tokenizer.model_max_length
    if len(processor.tokenizer(prompt)["input_ids"]) > max_len:
        warnings.warn(f"the prompt is longer than CLIP's {max_len} tokens; it is truncated", stacklevel=2)
    text = processor(text=[prompt], return_tensors="pt", padding=True, truncation=True, max_length=max_len)
    t = torch.nn.functional.normalize(clip.get_text_features(**text.to(device)), dim=-1)
    scores = []
    for i in range(0, len(images), batch_size):
        pixels = processor(images=list(images[i : i + batch_size]), return_tensors="pt")["pixel_values"]
        v = torch.nn.functional.normalize(clip.get_image_features(pixel_values=pixels.to(device)), dim=-1)
        scores.append(100 * (v @ t.T).squeeze(-1).clamp(min=0))
    scores = torch.cat(scores).tolist()  # one read for all the images
    return {"clip_score": float(np.mean(scores)), "per_image": scores}


class InceptionFeatures:
    """FID Inception v3 pool3 features ``[N, 2048]`` from uint8 images (any size; resized to 299)."""

    def __init__(self, weights_path: str, device=None):
        import pytorch_fid.inception as fid_inception

        if not weights_path:
            raise EvaluationError("--inception: no file given; give pt_inception-2015-12-05-6726825d.pth")
        check_weights(None, weights_path)
        try:
            state = torch.load(weights_path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise EvaluationError(
                f"--inception: {weights_path} is not a readable weights file ({type(e).__name__})"
            ) from None
        damaged = (
            next(
                (
                    k
                    for k, v in state.items()
                    if torch.is_tensor(v) and v.is_floating_point() and not v.isfinite().all()
                ),
                None,
            )
            if isinstance(state, dict)
            else None
        )
        if damaged is not None:
            raise EvaluationError(
                f"--inception: {weights_path} holds non-finite values in {damaged}; the file is damaged: "
                "download pt_inception-2015-12-05-6726825d.pth again"
            )
        original = fid_inception.load_state_dict_from_url
        fid_inception.load_state_dict_from_url = lambda *args, **kwargs: state  # never download
        try:
            self.net = fid_inception.InceptionV3([fid_inception.InceptionV3.BLOCK_INDEX_BY_DIM[2048]])
        except RuntimeError as e:
            raise EvaluationError(
                f"--inception: {weights_path} does not hold the FID Inception weights "
                f"({str(e).splitlines()[0]})"
            ) from None
        finally:
            fid_inception.load_state_dict_from_url = original
        self.device = torch.device(device) if device is not None else default_device()
        self.net = self.net.eval().to(self.device)

    @torch.no_grad()
    def __call__(self, images: Sequence[np.ndarray], batch_size: int = 16) -> np.ndarray:
        feats = []
        for i in tqdm(range(0, len(images), batch_size), desc="inception", unit="batch"):
            x = torch.from_numpy(np.stack(images[i : i + batch_size])).permute(0, 3, 1, 2).float() / 255
            feats.append(self.net(x.to(self.device))[0].flatten(1))
        return torch.cat(feats).cpu().double().numpy()  # one read for all the images


def frechet_distance(feats_a: np.ndarray, feats_b: np.ndarray) -> float:
    """FID: ``‖μa − μb‖² + Tr(Σa + Σb − 2 (Σa Σb)^½)`` (pytorch-fid's numerics)."""
    mu_a, mu_b = feats_a.mean(0), feats_b.mean(0)
    cov_a, cov_b = np.atleast_2d(np.cov(feats_a, rowvar=False)), np.atleast_2d(np.cov(feats_b, rowvar=False))
    covmean = linalg.sqrtm(cov_a.dot(cov_b))
    if not np.isfinite(covmean).all():
        offset = np.eye(cov_a.shape[0]) * 1e-6
        covmean = linalg.sqrtm((cov_a + offset).dot(cov_b + offset))
    covmean = covmean.real
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * np.trace(covmean))


def _mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    d = x.shape[1]
    kxx, kyy, kxy = ((x @ x.T) / d + 1) ** 3, ((y @ y.T) / d + 1) ** 3, ((x @ y.T) / d + 1) ** 3
    m, n = len(x), len(y)
    return float(
        (kxx.sum() - np.trace(kxx)) / (m * (m - 1))
        + (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
        - 2 * kxy.mean()
    )


def kernel_inception_distance(
    feats_a: np.ndarray, feats_b: np.ndarray, subsets: int = 100, subset_size: int = 1000, seed: int = 0
) -> tuple[float, float]:
    """KID ``(mean, std)`` over ``subsets`` random subsets of ``min(subset_size, len(a), len(b))``."""
    size = min(subset_size, len(feats_a), len(feats_b))
    if size < 2:
        raise EvaluationError("KID needs at least 2 images in each set")
    rng = np.random.RandomState(seed)
    values = [
        _mmd2_unbiased(
            feats_a[rng.choice(len(feats_a), size, replace=False)],
            feats_b[rng.choice(len(feats_b), size, replace=False)],
        )
        for _ in range(subsets)
    ]
    return float(np.mean(values)), float(np.std(values))


def evaluate(
    renders: Images,
    prompt: str,
    out_dir: str,
    clip_model: Optional[str] = None,
    reference: Optional[Images] = None,
    inception_weights: Optional[str] = None,
    sheet_columns: int = 8,
    device=None,
) -> dict:
    """Compute the requested metrics; write ``metrics.json`` and ``contact_sheet.png`` to ``out_dir``.
    CLIP and Inception run on ``device`` (default: the GPU when there is one)."""
    if (reference is None) != (inception_weights is None):
        raise EvaluationError(
            "FID/KID need both --reference (images of the diffusion model) and --inception "
            "(the FID Inception weights); give both or neither"
        )
    if sheet_columns < 1:
        raise EvaluationError(f"--columns: {sheet_columns} is not a positive number of contact-sheet columns")
    if clip_model is None and reference is None:
        raise EvaluationError(
            "nothing to compute: give --clip (the CLIP score) and/or --reference with --inception (FID/KID)"
        )
    if clip_model is not None and not (prompt or "").strip():
        raise EvaluationError("--prompt is empty; give the prompt the portrait was made from")
    check_weights(clip_model, inception_weights)
    own = [os.path.join(out_dir, name) for name in OUTPUTS]
    views = load_images(renders, "--renders", exclude=own)
    ref = load_images(reference, "--reference", exclude=own) if reference is not None else None
    for option, images in (("--renders", views), ("--reference", ref)):
        if images is None:
            continue
        if ref is not None and len(images) < 2:  # a covariance of one image: NaN, and sqrtm never ends
            raise EvaluationError(
                f"{option}: FID/KID need at least 2 images in each set; it holds {len(images)}"
            )
        small = next((i for i, x in enumerate(images) if min(x.shape[:2]) < MIN_SIDE), None)
        if small is not None:
            h, w = images[small].shape[:2]
            raise EvaluationError(
                f"{option}: image {small + 1} of {len(images)} is {w}×{h} px; the metrics need images at "
                f"least {MIN_SIDE} px a side"
            )
    result = {
        "prompt": prompt,
        "num_renders": len(views),
        "num_reference": None,
        "clip_model": clip_model,
        "inception_weights": inception_weights,
        "clip_score": None,
        "fid": None,
        "kid_mean": None,
        "kid_std": None,
    }
    extractor = InceptionFeatures(inception_weights, device) if ref is not None else None  # checked first
    if clip_model is not None:
        result["clip_score"] = clip_score(views, prompt, clip_model, device=device)["clip_score"]
    if extractor is not None:
        fa, fb = extractor(views), extractor(ref)
        result.update(num_reference=len(ref), fid=frechet_distance(fa, fb))
        result["kid_mean"], result["kid_std"] = kernel_inception_distance(fa, fb)
    os.makedirs(out_dir, exist_ok=True)
    write_json(os.path.join(out_dir, "metrics.json"), result)
    side = min(min(v.shape[:2]) for v in views)
    tiles = [np.asarray(_resize(v, side)) for v in views]
    save_image(
        os.path.join(out_dir, "contact_sheet.png"), contact_sheet(tiles, min(sheet_columns, len(tiles)))
    )
    return result


def _resize(image: np.ndarray, side: int) -> np.ndarray:
    import cv2

    return (
        image
        if image.shape[:2] == (side, side)
        else cv2.resize(image, (side, side), interpolation=cv2.INTER_AREA)
    )


def add_cli(subparsers) -> None:
    from .checks import bounded_int

    e = subparsers.add_parser(
        "evaluate", help="CLIP score and FID/KID of rendered views (paper §5.2) → metrics.json"
    )
    e.add_argument("--renders", required=True, nargs="+", help="folder of views, image files, or a video")
    e.add_argument("--prompt", required=True)
    e.add_argument("--out", required=True, help="output folder (metrics.json, contact_sheet.png)")
    e.add_argument(
        "--clip", default=None, help="CLIP model: local folder or hub id (e.g. openai/clip-vit-large-patch14)"
    )
    e.add_argument(
        "--reference", default=None, nargs="+", help="images of the diffusion model (FID/KID reference)"
    )
    e.add_argument(
        "--inception", default=None, help="pt_inception-2015-12-05-6726825d.pth (FID Inception weights)"
    )
    e.add_argument("--columns", type=bounded_int(1, 1024), default=8, help="contact sheet columns")
    e.add_argument(
        "--overwrite", action="store_true", help="replace metrics.json / contact_sheet.png in --out"
    )
    e.set_defaults(func=_cmd_evaluate, outputs=lambda args: list(OUTPUTS))


def _cmd_evaluate(args) -> None:
    result = evaluate(
        args.renders, args.prompt, args.out, args.clip, args.reference, args.inception, args.columns
    )
    print(json.dumps(result, indent=1))

"""Checks of user inputs, each failing with one line that names the input and the fix.

Command-line option types (``argparse`` ``type=`` callables: finite floats, bounded integers) and
checks of loaded data against the generator (pyramid levels and ``ws`` shapes, finite values).
"""

from __future__ import annotations

import argparse
import math
import os
from typing import Mapping, Optional

import torch
from torch import Tensor

MAX_RESOLUTION = 4096  # renders, aligned crops, inversion: larger is a typo (a 4096² render is 16 M rays)
MAX_FRAMES = 100_000
MAX_ISOSURFACE_RESOLUTION = 1024  # the marching-cubes lattice: 1024³ is 4 GiB of float32 density
MAX_SEED = 2**63 - 1  # torch.Generator.manual_seed takes a 64-bit integer


class OneLineParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one line (not argparse's usage block) and whose
    ``--help`` shows the defaults; pass it as ``parser_class`` to ``add_subparsers`` too."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", argparse.ArgumentDefaultsHelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        self.exit(2, f"error: {self.prog}: {message} (see --help)\n")


def bounded_int(low: int, high: Optional[int] = None, what: str = "") -> callable:
    """An ``argparse`` type: an integer in ``[low, high]`` (``high`` None: no upper bound)."""

    def parse(text: str) -> int:
        try:
            value = int(text, 0) if text.strip().lower().startswith(("0x", "0o", "0b")) else int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < low or (high is not None and value > high):
            span = f"≥ {low}" if high is None else f"between {low} and {high}"
            raise argparse.ArgumentTypeError(f"{value} is out of range: give an integer {span}{what}")
        return value

    parse.__name__ = "integer"
    return parse


def finite_float(low: float = -math.inf, high: float = math.inf) -> callable:
    """An ``argparse`` type: a finite float in ``[low, high]`` (``nan``/``inf`` are refused)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(
                f"{value:g} is out of range: give a number between {low:g} and {high:g}"
            )
        return value

    parse.__name__ = "number"
    return parse


_OOM_MESSAGES = (
    "DefaultCPUAllocator: can't allocate memory",  # torch on Linux/macOS (also under RLIMIT_AS)
    "DefaultCPUAllocator: not enough memory",  # torch on Windows
    "out of memory",  # CUDA, MPS, and "CUDA error: out of memory"
)


def is_out_of_memory(e: BaseException) -> bool:
    """True for an allocation that failed: ``MemoryError``, CUDA's ``OutOfMemoryError``, and the
    ``RuntimeError`` torch raises when a CPU allocation fails."""
    if isinstance(e, (MemoryError, torch.cuda.OutOfMemoryError)):
        return True
    return isinstance(e, RuntimeError) and any(m in str(e) for m in _OOM_MESSAGES)


def one_line(text) -> str:
    """A (possibly multi-line) message as one line: its first three non-empty lines joined."""
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    return " ".join(lines) if len(lines) <= 3 else " ".join(lines[:3]) + " …"


def report_error(e: BaseException, debug_env: str, oom_fix: str, where: str = "") -> int:
    """The command-line contract of ``python -m gan_prior`` and ``portrait3d``, in one place: print
    one ``error:`` line for ``e`` on stderr and return the exit code. A bad input the user can fix
    (``ValueError`` and its subclasses, a file that cannot be read or written, nesting too deep to
    read, out of memory, CPU or GPU) is exit 2; anything else is a bug: one line and exit 1, or the
    traceback when the environment variable ``debug_env`` is set (re-raised: call this inside the
    ``except`` block). ``where``: the file to name when an ``OSError`` names none."""
    import sys

    if is_out_of_memory(e):  # MemoryError, CUDA's, and torch's RuntimeError for a failed CPU allocation
        message, code = f"out of memory ({type(e).__name__}); {oom_fix}", 2
    elif isinstance(e, ValueError):  # usage errors, damaged files, bad values (UnicodeDecodeError too)
        message, code = one_line(e), 2
    elif isinstance(e, OSError):  # unreadable or unwritable files: name the file and the reason
        message = f"{e.filename or where}: {e.strerror or one_line(e)}; check the path and its permissions"
        code = 2
    elif isinstance(e, RecursionError):  # JSON or YAML nested thousands deep
        message, code = f"an input is nested too deeply to read ({one_line(e)}); check the files given", 2
    else:
        if os.environ.get(debug_env):
            raise e
        message = (
            f"unexpected {type(e).__name__}: {one_line(e)} (a bug; set {debug_env}=1 for the traceback "
            "and report it)"
        )
        code = 1
    print(f"error: {message}", file=sys.stderr)
    return code


LOAD_FIX = "the file is damaged or was saved from a diverged run: use an earlier checkpoint"
SAVE_FIX = "not saved: the values diverged; resume from an earlier checkpoint or lower the learning rate"


def require_finite(tensor: Tensor, what: str, fix: str = LOAD_FIX) -> Tensor:
    """``tensor`` itself, or ``ValueError`` ("<what> holds N NaN/Inf values; <fix>") when any is not finite."""
    if tensor.is_floating_point() or tensor.is_complex():
        bad = int((~torch.isfinite(tensor)).sum())
        if bad:
            raise ValueError(f"{what} holds {bad} NaN/Inf value(s) of {tensor.numel()}; {fix}")
    return tensor


def check_pyramid(levels: Mapping[int, Tensor], ws: Optional[Tensor], G, source: str) -> None:
    """Refuse a pyramid ``{R: [B, 3, C, R, R]}`` / ``ws [B, num_ws, w_dim]`` that ``G`` cannot render:
    empty batches or levels, a channel count other than the generator's, batches that differ,
    a ``ws`` of the wrong shape, NaN/Inf values. Messages start with ``source`` (the file)."""
    cfg = G.cfg
    if not levels:
        raise ValueError(f"{source}: no pyramid levels")
    batches = set()
    for r, t in sorted(levels.items()):
        if r < 1 or t.ndim != 5 or t.shape[1] != 3 or tuple(t.shape[-2:]) != (r, r):
            raise ValueError(
                f"{source}: level trigrids_{r} has shape {tuple(t.shape)}, expected [B, 3, C, {r}, {r}]"
            )
        if t.shape[2] != cfg.plane_channels:
            raise ValueError(
                f"{source}: level trigrids_{r} has {t.shape[2]} channels, the checkpoint's generator "
                f"reads {cfg.plane_channels}; was it made with another generator?"
            )
        if t.shape[0] < 1:
            raise ValueError(f"{source}: level trigrids_{r} holds no pyramid (batch 0)")
        batches.add(t.shape[0])
        require_finite(t, f"{source}: level trigrids_{r}")
    if len(batches) > 1:
        raise ValueError(f"{source}: the levels hold different numbers of pyramids {sorted(batches)}")
    if ws is not None:
        want = (G.num_ws, cfg.w_dim)
        if ws.ndim != 3 or tuple(ws.shape[1:]) != want or ws.shape[0] not in (1, *batches):
            raise ValueError(
                f"{source}: ws has shape {tuple(ws.shape)}, the checkpoint's generator needs "
                f"[{max(batches)}, {want[0]}, {want[1]}]; was it made with another generator?"
            )
        require_finite(ws, f"{source}: ws")


# ---------------------------------------------------------------------------- generator configs
# (low, high, power of two) of every integer option of PortraitGANConfig; beyond these a config is a
# typo or an attack (a 515-byte config.json with synthesis_resolution 2**20 would allocate until the
# machine runs out). The released model_512 uses 512/512/25/6/2/256/12/3/32/128/32768/512.
GENERATOR_INT_BOUNDS = {
    "z_dim": (1, 4096, False),
    "w_dim": (1, 4096, False),
    "c_dim": (25, 25, False),
    "pose_dim": (6, 6, False),
    "mapping_layers": (1, 32, False),
    "synthesis_resolution": (4, 1024, True),
    "trigrid_channels": (1, 256, False),
    "trigrid_depth": (1, 64, False),
    "feature_channels": (1, 1024, False),
    "background_resolution": (4, 2048, True),
    "background_channel_base": (1, 1 << 20, False),
    "background_channel_max": (1, 4096, False),
    "rendering_resolution": (0, 4096, False),
    "smpl_vertices": (0, 100_000, False),
    "smpl_faces": (0, 200_000, False),
    "smpl_joints": (16, 64, False),  # the pose rotates joints 12 and 15
    "smpl_betas": (0, 300, False),
}
# Samples per ray: the official stages use 48 + 48 (96 + 96 for videos); past 512 a render only costs
# memory (a 4096-sample config took gigabytes per chunk of rays).
RENDER_INT_BOUNDS = {"depth_resolution": (1, 512), "depth_resolution_importance": (0, 512)}
SR_CHANNEL_BOUNDS = (1, 4096)  # each of superresolution_channels (model_512: 256, 128)
RENDER_FLOATS = ("ray_start", "ray_end", "box_warp", "triplane_crop", "crop_density")
MAX_GENERATOR_ELEMENTS = 2_000_000_000  # parameters + buffers (8 GB in fp32); model_512 has ≈ 0.036 G


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_setting(
    name: str,
    value,
    low: float,
    high: Optional[float] = None,
    whole: bool = False,
    default=None,
    above: bool = False,
) -> None:
    """A config setting within ``[low, high]`` (``above``: strictly greater than ``low``; ``high``
    None: no upper bound; ``whole``: an integer), else one ValueError line naming it and its default."""
    fits = _is_int(value) if whole else _is_number(value)
    if fits and (value > low if above else value >= low) and (high is None or value <= high):
        return
    what = "a whole number" if whole else "a number"
    span = f"{'>' if above else '≥'} {low:g}" + (f" and ≤ {high:g}" if high is not None else "")
    raise ValueError(
        f"{name}: {value!r:.40} must be {what} {span}"
        + (f"; the default is {default}" if default is not None else "")
    )


def check_generator_config(config, source: str = "config") -> None:
    """Refuse a generator config (the ``config`` mapping of ``config.json``, or one inferred from a
    checkpoint) before anything is built: it must be a mapping of known options with values of the
    right type within :data:`GENERATOR_INT_BOUNDS` (resolutions powers of two), a valid ``render``
    mapping, and a model of at most :data:`MAX_GENERATOR_ELEMENTS` values (counted on the meta
    device, which allocates nothing)."""
    if not isinstance(config, Mapping):
        raise ValueError(
            f"{source}: the generator config is a {type(config).__name__}, expected a mapping of options"
        )
    for name, (low, high, power) in GENERATOR_INT_BOUNDS.items():
        if name not in config:
            continue
        value = config[name]
        if not _is_int(value):
            raise ValueError(f"{source}: {name} is {value!r:.40}, expected an integer")
        if not low <= value <= high or (power and value & (value - 1)):
            kind = "a power of two " if power else "an integer "
            raise ValueError(
                f"{source}: {name} = {value} is out of range; expected {kind}between {low} and {high}"
            )
    for name in ("background", "pose_branch", "explicitly_symmetry", "superresolution"):
        if name in config and not isinstance(config[name], bool):
            raise ValueError(f"{source}: {name} is {config[name]!r:.40}, expected true or false")
    if "thickness" in config and (not _is_number(config["thickness"]) or not 0 <= config["thickness"] <= 10):
        raise ValueError(f"{source}: thickness is {config['thickness']!r:.40}, expected a number in [0, 10]")
    base, res = config.get("background_channel_base", 32768), config.get("background_resolution", 128)
    if _is_int(base) and _is_int(res) and base < res:  # the last block would have base // res = 0 channels
        raise ValueError(
            f"{source}: background_channel_base = {base} is below background_resolution = {res}; every "
            "background block needs channel_base // resolution ≥ 1 channels"
        )
    if "superresolution_channels" in config:
        channels, (low, high) = config["superresolution_channels"], SR_CHANNEL_BOUNDS
        if (
            not isinstance(channels, (list, tuple))
            or len(channels) != 2
            or not all(_is_int(c) and low <= c <= high for c in channels)
        ):
            raise ValueError(
                f"{source}: superresolution_channels = {channels!r:.40}; expected two integers between "
                f"{low} and {high} (model_512: [256, 128])"
            )
    clamp = config.get("superresolution_conv_clamp")
    if clamp is not None and not (_is_number(clamp) and clamp > 0):
        raise ValueError(
            f"{source}: superresolution_conv_clamp = {clamp!r:.40}; expected a positive finite number or null"
        )
    render = config.get("render")
    if render is not None and not isinstance(render, Mapping) and type(render).__name__ != "RenderConfig":
        raise ValueError(f"{source}: render is {render!r:.40}, expected a mapping of renderer options")
    if isinstance(render, Mapping):
        check_render_options(render, f"{source}: render.")


def check_render_options(render: Mapping, prefix: str = "render.") -> None:
    """Refuse renderer options (:class:`gan_prior.renderer.RenderConfig` fields) of the wrong type or
    beyond :data:`RENDER_INT_BOUNDS`; messages name each option as ``<prefix><name>``."""
    for name, value in render.items():
        if name in RENDER_INT_BOUNDS:
            low, high = RENDER_INT_BOUNDS[name]
            if not _is_int(value) or not low <= value <= high:
                raise ValueError(
                    f"{prefix}{name} = {value!r:.40}; expected an integer between {low} and {high}"
                )
        elif name in RENDER_FLOATS:
            if not _is_number(value):
                raise ValueError(f"{prefix}{name} = {value!r:.40}; expected a finite number")
    start, end = render.get("ray_start", 2.35), render.get("ray_end", 3.12)
    if _is_number(start) and _is_number(end) and not 0 < start < end:
        raise ValueError(f"{prefix}ray_start / ray_end: need 0 < ray_start < ray_end, got {start} and {end}")
    if _is_number(render.get("box_warp", 1.0)) and render.get("box_warp", 1.0) <= 0:
        raise ValueError(f"{prefix}box_warp must be positive")


def require_own_storage(tensor: Tensor, what: str) -> Tensor:
    """Refuse a tensor whose view is larger than the data behind it: an expanded (stride-0) or
    overlapping tensor, which a file can use to turn a few MB into many GB once materialised."""
    storage = tensor.untyped_storage().nbytes()
    needed = tensor.numel() * tensor.element_size()
    if needed > storage or (
        tensor.numel() > 1 and any(s == 0 and n > 1 for s, n in zip(tensor.stride(), tensor.shape))
    ):
        raise ValueError(
            f"{what} is an expanded or overlapping tensor ({tuple(tensor.shape)} over "
            f"{storage} bytes of data); refused: such files are malformed or malicious"
        )
    return tensor

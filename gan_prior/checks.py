"""Checks of user inputs, each failing with one line that names the input and the fix.

Command-line option types (``argparse`` ``type=`` callables: finite floats, bounded integers) and
checks of loaded data against the generator (pyramid levels and ``ws`` shapes, finite values).
"""
from __future__ import annotations

import argparse
import math
from typing import Mapping, Optional

import torch
from torch import Tensor

MAX_RESOLUTION = 4096  # renders, aligned crops, inversion: larger is a typo (a 4096² render is 16 M rays)
MAX_FRAMES = 100_000
MAX_SEED = 2**63 - 1  # torch.Generator.manual_seed takes a 64-bit integer


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
            raise argparse.ArgumentTypeError(f"{value:g} is out of range: give a number between {low:g} and {high:g}")
        return value

    parse.__name__ = "number"
    return parse


def require_finite(tensor: Tensor, what: str) -> Tensor:
    """``tensor`` itself, or ``ValueError`` ("<what> holds N NaN/Inf values") when any is not finite."""
    if tensor.is_floating_point() or tensor.is_complex():
        bad = int((~torch.isfinite(tensor)).sum())
        if bad:
            raise ValueError(f"{what} holds {bad} NaN/Inf value(s) of {tensor.numel()}; the file is damaged or "
                             "was saved from a diverged run: use an earlier checkpoint")
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
            raise ValueError(f"{source}: level trigrids_{r} has shape {tuple(t.shape)}, expected [B, 3, C, {r}, {r}]")
        if t.shape[2] != cfg.plane_channels:
            raise ValueError(f"{source}: level trigrids_{r} has {t.shape[2]} channels, the checkpoint's generator "
                             f"reads {cfg.plane_channels}; was it made with another generator?")
        if t.shape[0] < 1:
            raise ValueError(f"{source}: level trigrids_{r} holds no pyramid (batch 0)")
        batches.add(t.shape[0])
        require_finite(t, f"{source}: level trigrids_{r}")
    if len(batches) > 1:
        raise ValueError(f"{source}: the levels hold different numbers of pyramids {sorted(batches)}")
    if ws is not None:
        want = (G.num_ws, cfg.w_dim)
        if ws.ndim != 3 or tuple(ws.shape[1:]) != want or ws.shape[0] not in (1, *batches):
            raise ValueError(f"{source}: ws has shape {tuple(ws.shape)}, the checkpoint's generator needs "
                             f"[{max(batches)}, {want[0]}, {want[1]}]; was it made with another generator?")
        require_finite(ws, f"{source}: ws")

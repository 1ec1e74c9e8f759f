"""Pyramid tri-grid files: ours (safetensors + JSON metadata) and every official layout.

levels, ws = load_pyramid("inversion_trigrid.pkl")   # {R: [B, 3, 36, R, R]}, [B, 14, 512] or None
save_pyramid("pyramid.safetensors", levels, ws)
"""

from __future__ import annotations

import json
from typing import Mapping, Optional

import torch
from safetensors.torch import save_file

from .checkpoint import (
    FORMAT_VERSION,
    CheckpointError,
    looks_like_safetensors,
    read_checkpoint,
    read_safetensors,
)
from .checks import SAVE_FIX, check_pyramid, require_finite, require_own_storage
from .files import atomic_path
from .pyramid_trigrid import level_key


def _find_levels(d: Mapping) -> tuple[dict[int, torch.Tensor], Optional[torch.Tensor]]:
    levels, ws = {}, None
    for k, v in d.items():
        if not isinstance(v, torch.Tensor):
            continue
        leaf = k.split(".")[-1]
        if leaf.startswith("trigrids_") and leaf[9:].isdigit():
            levels[int(leaf[9:])] = v
        elif leaf == "ws":
            ws = v
    return levels, ws


def load_pyramid(path: str) -> tuple[dict[int, torch.Tensor], Optional[torch.Tensor]]:
    """Read any pyramid tri-grid file → ``({R: [B, 3, C·D, R, R]}, ws [B, num_ws, w_dim] or None)``.

    Supported: ours (``.safetensors``), the official ``inversion_trigrid.pkl`` (a plain pickle of
    a dict), ``df.pth`` / ``df_ep*.pth`` (``{'model': state}``), ``log/ckpt/epoch_*.pth`` and the
    gallery's ``NNN_pyramid_trigrid.pth`` (``{'model': {'trigrids_*', 'ws'}}``).
    """
    if path.endswith(".safetensors") or looks_like_safetensors(path):
        state = read_safetensors(path)
    else:
        obj = read_checkpoint(path)
        if not isinstance(obj, dict):
            raise CheckpointError.at(path, "expected a dict of tri-grid levels (trigrids_8 … trigrids_512)")
        state = obj.get("model", obj)
        if not isinstance(state, dict):
            raise CheckpointError.at(path, "'model' entry is not a state dict")
    levels, ws = _find_levels(state)
    if not levels:
        raise CheckpointError.at(
            path,
            "no 'trigrids_<R>' tensors found; expected a pyramid tri-grid file "
            "(ours, inversion_trigrid.pkl, df.pth, epoch_*.pth or NNN_pyramid_trigrid.pth)",
        )
    out = {}
    try:
        for name, t in [(f"level trigrids_{r}", t) for r, t in levels.items()] + (
            [("ws", ws)] if ws is not None else []
        ):
            require_own_storage(t, name)
            if not t.is_floating_point():  # a cast would make up values: refused
                raise ValueError(
                    f"{name} holds {str(t.dtype).replace('torch.', '')} values; a pyramid holds floats"
                )
        for r, t in sorted(levels.items()):
            # a copy: safetensors maps the file, which a later writer may replace or cut
            t = t.detach().float().cpu().clone()
            if t.ndim == 4:  # [B·3, C·D, R, R]
                if t.shape[0] % 3:
                    raise ValueError(
                        f"level trigrids_{r} has shape {tuple(t.shape)}: {t.shape[0]} planes is not a "
                        "multiple of 3 (expected [B·3, C, R, R] or [B, 3, C, R, R])"
                    )
                t = t.reshape(-1, 3, *t.shape[1:])
            if r < 1 or t.ndim != 5 or t.shape[1] != 3 or t.shape[-1] != r or t.shape[-2] != r:
                raise ValueError(
                    f"level trigrids_{r} has shape {tuple(t.shape)}, expected [B, 3, C, {r}, {r}]"
                )
            out[r] = require_finite(t, f"level trigrids_{r}")
        ws = require_finite(ws.detach().float().cpu().clone(), "ws") if ws is not None else None
    except ValueError as e:
        raise CheckpointError.at(path, str(e)) from None
    return out, ws


def load_pyramid_for(G, path: str) -> tuple[dict[int, torch.Tensor], torch.Tensor]:
    """:func:`load_pyramid` of a file ``G`` can render, with its ``ws``; one-line errors
    (:func:`gan_prior.checks.check_pyramid`)."""
    levels, ws = load_pyramid(path)
    if ws is None:
        raise CheckpointError(
            f"{path} holds no 'ws'; the ToRGB and background need the latent it was made from (files "
            "from `sample`, inversion_trigrid.pkl, df.pth, epoch_*.pth and the gallery have it)"
        )
    check_pyramid(levels, ws, G, path)
    return levels, ws


def save_pyramid(
    path: str,
    levels: Mapping[int, torch.Tensor],
    ws: Optional[torch.Tensor] = None,
    fmt: str = "ours",
    metadata: Optional[dict] = None,
) -> None:
    """Write a pyramid atomically. ``fmt='ours'``: safetensors (+ JSON metadata);
    ``fmt='official'``: the gallery/``epoch_*.pth`` layout ``torch.save({'model': {...}})``."""
    state = {level_key(r): t.detach().float().contiguous().cpu() for r, t in sorted(levels.items())}
    if ws is not None:
        state["ws"] = ws.detach().float().contiguous().cpu()
    for name, t in state.items():  # a diverged run must not leave a NaN pyramid behind
        require_finite(t, f"{path}: {name}", SAVE_FIX)
    if fmt == "ours":
        meta = {"kind": "pyramid-trigrid", "format_version": str(FORMAT_VERSION)}
        if metadata:
            meta["info"] = json.dumps(metadata)
        with atomic_path(path, ".safetensors") as tmp:
            save_file(state, tmp, metadata=meta)
    elif fmt == "official":
        with atomic_path(path, ".pth") as tmp:
            torch.save({"model": state}, tmp)
    else:
        raise ValueError(f"unknown pyramid format {fmt!r}; use 'ours' or 'official'")

"""Deterministic, order-independent weight fill shared by the parity harness and our tests.

``fill_state_dict(shapes, seed)`` returns one float32 tensor per key. Every key gets its own
``torch.Generator`` seeded with ``seed * 1_000_003 + zlib.crc32(key.encode())``, so the value of a
key depends only on (key, shape, seed) and never on the order or on which other keys are present.

Rules, tested in this order on the key name:

* ``...resample_filter``: not random. The normalised separable [1, 3, 3, 1] low-pass filter,
  ``outer(a, a) / sum(outer(a, a))`` with ``a = [1, 3, 3, 1]``; the shape must be [4, 4].
* ``...affine.bias``: ``1 + 0.1 * randn`` (style affines are initialised around 1).
* any other ``...bias``: ``0.1 * randn``.
* ``...noise_strength``: ``0.1 * randn`` (shape ``[]``).
* ``...w_avg``: ``0.5 * randn``.
* everything else (weights, ``const``, ``noise_const``, ...): ``randn``.

``shapes`` maps a key to a tuple of ints, or to a tensor (only its shape and dtype are used). A
tensor with a non-floating dtype (integer / bool buffers) raises ``ValueError``: such buffers are
not weights and must be left out of the dict by the caller.
"""
from __future__ import annotations

import zlib
from typing import Mapping, Union

import torch

__all__ = ["fill_state_dict", "key_seed", "resample_filter_4x4"]

ShapeLike = Union[tuple, list, torch.Size, torch.Tensor]


def key_seed(key: str, seed: int = 0) -> int:
    """Seed of the per-key generator."""
    return seed * 1_000_003 + zlib.crc32(key.encode())


def resample_filter_4x4() -> torch.Tensor:
    a = torch.tensor([1.0, 3.0, 3.0, 1.0], dtype=torch.float64)
    f = torch.outer(a, a)
    return (f / f.sum()).to(torch.float32)


def _value(key: str, shape: tuple, seed: int) -> torch.Tensor:
    if key.endswith("resample_filter"):
        if tuple(shape) != (4, 4):
            raise ValueError(f"{key}: resample_filter expected shape (4, 4), got {tuple(shape)}")
        return resample_filter_4x4()
    gen = torch.Generator().manual_seed(key_seed(key, seed))
    r = torch.randn(tuple(shape), generator=gen, dtype=torch.float32)
    if key.endswith("affine.bias"):
        return 1.0 + 0.1 * r
    if key.endswith("bias"):
        return 0.1 * r
    if key.endswith("noise_strength"):
        return 0.1 * r
    if key.endswith("w_avg"):
        return 0.5 * r
    return r


def fill_state_dict(shapes: Mapping[str, ShapeLike], seed: int = 0) -> dict[str, torch.Tensor]:
    """Deterministic float32 values for every key of ``shapes`` (see module docstring).

    Raises ``ValueError`` for a tensor entry whose dtype is not floating point.
    """
    out: dict[str, torch.Tensor] = {}
    for key, s in shapes.items():
        if isinstance(s, torch.Tensor):
            if not s.is_floating_point():
                raise ValueError(f"{key}: non-float buffer ({s.dtype}) cannot be filled")
            shape = tuple(s.shape)
        else:
            shape = tuple(int(d) for d in s)
        out[key] = _value(key, shape, seed)
    return out

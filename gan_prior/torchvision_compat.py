"""Make PyPI's CUDA-built torchvision importable under a CPU-only torch.

The torchvision wheels PyPI serves for Linux (0.28) are ``+cu130`` builds: their ``_C.so`` links
CUDA libraries and cannot load under the CPU torch, and ``torchvision/_meta_registrations.py`` then
fails with ``RuntimeError: operator torchvision::nms does not exist``. transformers, diffusers,
pytorch-fid, torchmetrics (so Lightning) and threestudio import torchvision.

:func:`install_hook` puts a one-shot import hook in front of ``sys.meta_path``: just before the first
``import torchvision`` it defines the two op *schemas* torchvision expects, and only when CUDA is
unavailable and torchvision's own ``_C`` does not load. The C++ ops (nms, roi_align, ...) stay
unavailable; nothing this project runs needs them. Importing this module is cheap (no torch).
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys

_SCHEMA = "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor"


def _real_ops_load(torch) -> bool:
    """True if torchvision's compiled ``_C`` library loads (then no schema is needed)."""
    spec = importlib.machinery.PathFinder.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        return False
    finder = importlib.machinery.FileFinder(
        spec.submodule_search_locations[0],
        (importlib.machinery.ExtensionFileLoader, importlib.machinery.EXTENSION_SUFFIXES),
    )
    ext = finder.find_spec("torchvision._C")
    if ext is None or not ext.origin:
        return False
    try:
        torch.ops.load_library(ext.origin)  # what torchvision.extension does itself
        return True
    except (ImportError, OSError):
        return False


def define_missing_op_schemas() -> None:
    """Define ``torchvision::nms``/``qnms`` when torchvision's ops cannot load (idempotent)."""
    import torch

    if torch.cuda.is_available() or _real_ops_load(torch):
        return
    for name in ("nms", "qnms"):
        try:
            torch.library.define(f"torchvision::{name}", _SCHEMA)
        except RuntimeError:  # already defined
            pass


class _Hook(importlib.abc.MetaPathFinder):
    """Runs :func:`define_missing_op_schemas` once, just before the first ``import torchvision``."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname == "torchvision":
            uninstall_hook()
            try:
                define_missing_op_schemas()
            except Exception:  # never break an import: torchvision then reports its own error
                pass
        return None  # the normal finders import the real module


def install_hook() -> None:
    """Arm the hook unless torchvision is already imported or the hook is armed."""
    if "torchvision" in sys.modules or any(isinstance(f, _Hook) for f in sys.meta_path):
        return
    sys.meta_path.insert(0, _Hook())


def uninstall_hook() -> None:
    sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, _Hook)]

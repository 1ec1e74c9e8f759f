"""Make PyPI's CUDA-built torchvision importable under a CPU-only torch.

Why: the only torchvision wheels we can install (0.28.0 from PyPI) are ``+cu130``
builds. Their ``_C.so`` links ``libc10_cuda.so``/``libtorch_cuda.so`` and cannot
load under CPU torch, and ``torchvision/_meta_registrations.py`` calls
``torch.library.register_fake("torchvision::nms" / "qnms")`` without checking
that the ops exist, so ``import torchvision`` raises
``RuntimeError: operator torchvision::nms does not exist``. pytorch_lightning
(via torchmetrics) and threestudio import torchvision, so everything breaks.

Fix: define the two op *schemas* before torchvision is imported. Then
``import torchvision``, ``torchvision.transforms`` and ``torchvision.models``
work; the C++ ops themselves (nms, roi_align, ...) stay unavailable.

This file runs at interpreter start when its folder is on ``PYTHONPATH``
(also in ``multiprocessing`` spawn children, which inherit the environment).
It does not import torch eagerly: it installs a one-shot ``sys.meta_path``
hook that fires on the first ``import torchvision``. The shim does nothing when
``torch.cuda.is_available()`` or when torchvision's real ``_C`` library loads.
Note: it shadows any system ``sitecustomize`` (on Debian/Ubuntu that is only
the apport crash hook).
"""

import importlib.abc
import importlib.machinery
import sys

_SCHEMA = "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor"


def _real_torchvision_ops_load(torch) -> bool:
    """True if torchvision's compiled ``_C`` library loads (then no shim is needed)."""
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


def _apply_shim() -> None:
    try:
        import torch

        if torch.cuda.is_available() or _real_torchvision_ops_load(torch):
            return
        for name in ("nms", "qnms"):
            try:
                torch.library.define(f"torchvision::{name}", _SCHEMA)
            except Exception:  # already defined
                pass
    except Exception:  # never break interpreter start-up
        pass


class _TorchvisionShimHook(importlib.abc.MetaPathFinder):
    """Runs the shim once, just before the first ``import torchvision``."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname == "torchvision":
            try:
                sys.meta_path.remove(self)
            except ValueError:
                pass
            _apply_shim()
        return None  # let the normal finders import the real module


if "torchvision" not in sys.modules:
    sys.meta_path.insert(0, _TorchvisionShimHook())

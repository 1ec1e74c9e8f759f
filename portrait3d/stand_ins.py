"""Let ``import threestudio`` work where its CUDA-only or git-only imports are missing.

threestudio imports ``tinycudann`` and ``nvdiffrast`` (git-only CUDA builds) and ``controlnet_aux``
(heavy) at import time, before any extension can run, and torchvision (whose PyPI build needs a CUDA
torch). :func:`install` puts a finder at the **end** of ``sys.meta_path`` that serves the import-only
stand-ins in ``portrait3d/cpu_stubs`` for those three names, so a real package, where one is
installed, is always found first; and it arms :mod:`gan_prior.torchvision_compat`. Nothing here makes
CUDA-only code work: the stand-ins raise with the install hint when their functions are used (the
Portrait3D components never use them).

It runs at interpreter start (:mod:`portrait3d.startup`, from the ``.pth`` file the setup writes
into the environment's site-packages): users need no ``PYTHONPATH``. Importing this module is cheap
(no torch).
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import logging
import os
import sys
import warnings

STUBS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "cpu_stubs")
STUBBED = ("tinycudann", "nvdiffrast", "controlnet_aux")
# threestudio 0.2.3 on torch >= 2.4 / diffusers >= 0.30: deprecation notices at every launch that a
# user can do nothing about (each printed once per call site, ~110 lines)
QUIET_WARNINGS = (
    (FutureWarning, r"`torch\.cuda\.amp\.(autocast|custom_fwd|custom_bwd)\(args\.\.\.\)` is deprecated"),
    (FutureWarning, r"You are using `torch\.load` with `weights_only=False`"),
    (FutureWarning, r".*is deprecated and will be removed in version 0\.\d+\.\d+ of diffusers"),
    (UserWarning, r"TypedStorage is deprecated"),
    (UserWarning, r"Using torch\.cross without specifying the dim arg is deprecated"),
    # Lightning 2.6 on torch 2.13 (pytorch_lightning/utilities/_pytree.py), at every training step
    (FutureWarning, r"`isinstance\(treespec, LeafSpec\)` is deprecated"),
    # the frozen GAN decoder, ToRGB and background are in eval mode on purpose
    (UserWarning, r"Found \d+ module\(s\) in eval mode at the start of training"),
    # launch.py --export resume=...: Lightning's notes on what export does not need
    (UserWarning, r"Be aware that when using `ckpt_path`, callbacks used to create the checkpoint"),
    (UserWarning, r"predict returned None if it was on purpose"),
)
# log lines of no use to a user of this extension: (logger, start of the message)
QUIET_LOGS = (
    # torch.utils.cpp_extension at import (nerfacc, envlight) on a CPU-only torch with a CUDA toolkit
    # installed: only matters for building CUDA extensions, which these runs never do
    ("torch.utils.cpp_extension", "No CUDA runtime is found"),
    # Lightning's advertisements for its cloud services, at every launch
    ("pytorch_lightning.utilities.rank_zero", "💡 Tip:"),
    ("lightning_fabric.utilities.rank_zero", "💡 Tip:"),
)


class _StandInFinder(importlib.abc.MetaPathFinder):
    """Finds the stand-in for a missing ``tinycudann`` / ``nvdiffrast`` / ``controlnet_aux``."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname not in STUBBED:
            return None
        return importlib.machinery.PathFinder.find_spec(fullname, [STUBS_DIR])


class _DropLines(logging.Filter):
    def __init__(self, starts: tuple):
        super().__init__()
        self.starts = starts

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.starts)


def quiet_known_warnings() -> None:
    """Warnings and log lines a user can do nothing about (idempotent)."""
    for category, message in QUIET_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)
    for name in {name for name, _ in QUIET_LOGS}:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropLines) for f in logger.filters):
            logger.addFilter(_DropLines(tuple(start for n, start in QUIET_LOGS if n == name)))


class _TorchvisionFinder(importlib.abc.MetaPathFinder):
    """On the first ``import torchvision``, applies :mod:`gan_prior.torchvision_compat` (imported only
    then, so that start-up imports no ``gan_prior`` and the one on the path at that time is used)."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname == "torchvision":
            sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, _TorchvisionFinder)]
            from gan_prior import torchvision_compat

            torchvision_compat.uninstall_hook()  # (armed by gan_prior's import) done here, now
            try:
                torchvision_compat.define_missing_op_schemas()
            except Exception:  # never break an import: torchvision then reports its own error
                pass
        return None


def install() -> None:
    """Arm the stand-in finder, the torchvision hook and the warning filters (idempotent)."""
    if not any(isinstance(f, _StandInFinder) for f in sys.meta_path):
        sys.meta_path.append(_StandInFinder())
    if "torchvision" not in sys.modules and not any(isinstance(f, _TorchvisionFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _TorchvisionFinder())
    quiet_known_warnings()

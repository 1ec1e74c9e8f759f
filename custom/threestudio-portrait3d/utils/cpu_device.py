"""Let threestudio's stock code run on a CPU-only machine (tests, smoke runs).

threestudio assumes CUDA in two places that configs cannot change:

* ``threestudio.utils.misc.get_device()`` always returns ``cuda:<rank>``; it is
  imported *by name* into many modules (``utils/base.py``, ``systems/base.py``,
  ``data/uncond.py``, ...), so every module's global must be rebound, not just
  ``misc.get_device``.
* ``launch.py`` builds ``Trainer(..., accelerator="gpu", devices=-1, **cfg.trainer)``;
  ``trainer.accelerator=cpu`` in a config gives a duplicate-keyword TypeError.

:func:`use_cpu_without_cuda` fixes both when ``torch.cuda.is_available()`` is False
and does nothing otherwise. The extension's ``__init__`` calls it; launch.py loads
custom modules after ``import threestudio`` and before any object or Trainer is
built, which is early enough. It is idempotent. Modules imported *after* the
call that import ``get_device`` by name are patched on the next call.
"""

import functools
import sys

import torch

__all__ = ["use_cpu_without_cuda", "cpu_get_device"]

_WRAPPED_FLAG = "_portrait3d_cpu_device"


def cpu_get_device() -> torch.device:
    """Replacement for ``threestudio.utils.misc.get_device`` on CPU-only machines."""
    return torch.device("cpu")


def _patch_get_device() -> int:
    """Rebind ``get_device`` in every loaded ``threestudio*`` module; returns the count."""
    n = 0
    for name, module in list(sys.modules.items()):
        if module is None or not name.startswith("threestudio"):
            continue
        current = getattr(module, "get_device", None)
        if callable(current) and current is not cpu_get_device:
            module.get_device = cpu_get_device
            n += 1
    return n


def _patch_trainer() -> bool:
    """Wrap ``pytorch_lightning.Trainer.__init__`` to force CPU; False if already wrapped."""
    import pytorch_lightning as pl

    original = pl.Trainer.__init__
    if getattr(original, _WRAPPED_FLAG, False):
        return False

    @functools.wraps(original)
    def __init__(self, *args, **kwargs):
        kwargs["accelerator"] = "cpu"
        kwargs["devices"] = 1
        return original(self, *args, **kwargs)

    setattr(__init__, _WRAPPED_FLAG, True)
    # Patch the class itself: launch.py's ``from pytorch_lightning import Trainer``
    # refers to the same class object.
    pl.Trainer.__init__ = __init__
    return True


def use_cpu_without_cuda() -> bool:
    """Apply the CPU patches if CUDA is unavailable.

    Returns:
        True if the machine has no CUDA (patches are in place), False if CUDA is
        available (nothing was changed).
    """
    if torch.cuda.is_available():
        return False
    _patch_get_device()
    _patch_trainer()
    return True

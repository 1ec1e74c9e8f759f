"""Shared test setup: the repo root and tests/parity on sys.path, the CPU torchvision shim, a
threestudio finder."""
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
for p in (ROOT, os.path.join(ROOT, "tests", "parity")):
    if p not in sys.path:
        sys.path.insert(0, p)

# PyPI's torchvision is a CUDA build; transformers, diffusers and pytorch-fid import it, so on a
# CPU-only torch it needs the op-schema shim first (a no-op where the real torchvision ops load).
_SHIM = os.path.join(ROOT, "tests", "cpu_stubs", "sitecustomize.py")
if "torchvision" not in sys.modules and os.path.isfile(_SHIM):
    import importlib.util

    _spec = importlib.util.spec_from_file_location("_portrait3d_torchvision_shim", _SHIM)
    _spec.loader.exec_module(importlib.util.module_from_spec(_spec))

THREESTUDIO_ROOT = os.environ.get("THREESTUDIO_ROOT", os.path.expanduser("~/threestudio"))


# what `import threestudio` needs beyond requirements.txt (see requirements-threestudio.txt)
THREESTUDIO_DEPS = ("pytorch_lightning", "torchvision", "nerfacc", "envlight", "igl", "wandb", "IPython")


def threestudio_missing() -> str:
    """Why the threestudio tests cannot run here ('' when they can)."""
    import importlib.util

    if not os.path.isfile(os.path.join(THREESTUDIO_ROOT, "launch.py")):
        return f"threestudio not found at THREESTUDIO_ROOT={THREESTUDIO_ROOT} (set THREESTUDIO_ROOT to a checkout)"
    missing = [m for m in THREESTUDIO_DEPS if importlib.util.find_spec(m) is None]
    if missing:
        return f"threestudio's requirements are not installed ({', '.join(missing)}): pip install -r requirements-threestudio.txt"
    return ""


requires_threestudio = pytest.mark.skipif(bool(threestudio_missing()), reason=threestudio_missing() or "-")

"""What several test modules share: the repository root and where threestudio is.

threestudio is found as the project's commands find it (``portrait3d.threestudio_env``):
``THREESTUDIO_ROOT`` if set, else the pinned checkout ``make`` sets up in ``.deps/threestudio``.
Tests marked with :data:`requires_threestudio` are skipped, with the reason, where it is absent —
except under ``CI=true``, where such a skip is a failure (conftest.py).
"""

import importlib.util
import os

import pytest

from portrait3d.threestudio_env import ThreestudioError, find_threestudio

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

try:
    THREESTUDIO_ROOT = find_threestudio()
except ThreestudioError as _e:
    THREESTUDIO_ROOT, _NOT_FOUND = "", str(_e)
else:
    _NOT_FOUND = ""

# the one skip reason a threestudio test may have under CI=true: CI machines have no GPU
NEEDS_CUDA = "needs a CUDA GPU (bench/gpu_check.sh)"

# what `import threestudio` needs beyond requirements.txt (see requirements-threestudio.txt)
THREESTUDIO_DEPS = ("pytorch_lightning", "torchvision", "nerfacc", "envlight", "igl", "wandb", "IPython")


def threestudio_missing() -> str:
    """Why the threestudio tests cannot run here ('' when they can)."""
    if _NOT_FOUND:
        return _NOT_FOUND
    missing = [m for m in THREESTUDIO_DEPS if importlib.util.find_spec(m) is None]
    if missing:
        return (
            f"threestudio's requirements are not installed ({', '.join(missing)}): "
            "pip install -r requirements-threestudio.txt"
        )
    return ""


requires_threestudio = [
    pytest.mark.threestudio,
    pytest.mark.skipif(bool(threestudio_missing()), reason=threestudio_missing() or "-"),
]


def random_inception_weights(path: str) -> str:
    """The FID Inception architecture with random weights, saved to ``path`` as a weights file (the
    real loading path of gan_prior.evaluation.InceptionFeatures); returns ``path``."""
    import pytorch_fid.inception as fi
    import torch

    original = torch.nn.Module.load_state_dict
    torch.nn.Module.load_state_dict = lambda self, *a, **k: None  # build the structure without weights
    fi_url = fi.load_state_dict_from_url
    fi.load_state_dict_from_url = lambda *a, **k: {}
    try:
        torch.manual_seed(0)
        net = fi.fid_inception_v3()
    finally:
        torch.nn.Module.load_state_dict, fi.load_state_dict_from_url = original, fi_url
    torch.save(net.state_dict(), path)
    return path

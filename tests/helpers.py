"""What several test modules share: the repository root and where threestudio is.

threestudio is found as the project's commands find it (``portrait3d.threestudio_env``):
``THREESTUDIO_ROOT`` if set, else the pinned checkout ``make`` sets up in ``.deps/threestudio``.
Tests marked with :data:`requires_threestudio` are skipped, with the reason, where it is absent —
except under ``CI=true``, where such a skip is a failure (conftest.py).
"""

import importlib.util
import json
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

# the skip reasons a threestudio test may have under CI=true: CI machines have no GPU, and the
# official code is a checkout beside the repository (never committed), not something CI can install
NEEDS_CUDA = "needs a CUDA GPU (bench/gpu_check.sh)"
NEEDS_OFFICIAL = (
    "needs the official 3DPortraitGAN_pyramid code ($PORTRAIT3D_OFFICIAL_ROOT, bench/official.py)"
)

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


def fake_trial(folder, prompt="a portrait", clip=None, mesh=True):
    """A finished trial folder: a parsed config, a checkpoint (a stand-in file), its status (done at
    step 8), two images and (optionally) a coloured mesh."""
    import imageio.v2 as imageio
    import numpy as np
    import trimesh

    from portrait3d.trial import write_status

    os.makedirs(os.path.join(folder, "configs"))
    with open(os.path.join(folder, "configs", "parsed.yaml"), "w") as f:
        json.dump({"seed": 0, "system": {"prompt_processor": {"prompt": prompt}}}, f)  # JSON is YAML
    os.makedirs(os.path.join(folder, "ckpts"))
    open(os.path.join(folder, "ckpts", "last.ckpt"), "wb").close()
    write_status(folder, "done", stage="test", step=8)
    save = os.path.join(folder, "save")
    os.makedirs(os.path.join(save, "refine"))
    imageio.imwrite(os.path.join(save, "it4-0.png"), np.full((8, 16, 3), 90, np.uint8))
    imageio.imwrite(os.path.join(save, "refine", "view_00.png"), np.full((8, 8, 3), 30, np.uint8))
    imageio.imwrite(os.path.join(save, "refine", "refined_00.png"), np.full((8, 8, 3), 60, np.uint8))
    if clip is not None:
        os.makedirs(os.path.join(save, "it8-eval"))
        with open(os.path.join(save, "it8-eval", "metrics.json"), "w") as f:
            json.dump({"clip_score": clip, "num_renders": 8}, f)
    if mesh:
        box = trimesh.creation.box(extents=(0.3, 0.4, 0.2))
        colours = np.tile(np.array([[200, 40, 40, 255]], np.uint8), (len(box.vertices), 1))
        os.makedirs(os.path.join(save, "it8-export"))
        trimesh.Trimesh(box.vertices, box.faces, vertex_colors=colours).export(
            os.path.join(save, "it8-export", "portrait.glb")
        )
    return folder


# How a child forked by a warm interpreter (test_bad_inputs' for `python -m gan_prior`, threestudio_env's
# for `python launch.py`) ends, as the interpreter ends the program it runs as __main__: SystemExit's
# code (one that is not an int printed to stderr, status 1), an uncaught exception through
# sys.excepthook (status 1); then the atexit handlers, flushed output and os._exit with that status.
# Source text, put before each warm interpreter's own (they are `python -c` programs).
CHILD_EXIT = r"""
import atexit as _atexit, os as _os, sys as _sys

def run_as_main(run):
    code = 1
    try:
        run()
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        if not isinstance(e.code, (int, type(None))):
            _sys.stderr.write(str(e.code) + "\n")
    except BaseException:
        _sys.excepthook(*_sys.exc_info())  # as the interpreter reports an uncaught exception
    finally:
        try:
            _atexit._run_exitfuncs()
        finally:
            _sys.stdout.flush(); _sys.stderr.flush()
            _os._exit(code)
"""

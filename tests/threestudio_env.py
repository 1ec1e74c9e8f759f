"""Helpers for tests that run threestudio: an isolated work tree with this extension installed, the
launch environment, and the extension imported in the test process as launch.py imports it."""

import os
import subprocess
import sys

from helpers import ROOT, THREESTUDIO_ROOT

from portrait3d import cpu_compat
from portrait3d.threestudio_env import install_extension, load_extension


def make_worktree(dest: str) -> str:
    """A threestudio tree at ``dest``: links to THREESTUDIO_ROOT's entries, its own custom/ and
    configs/ (so the checkout is never modified), then our installer run on it."""
    os.makedirs(dest, exist_ok=True)
    for name in os.listdir(THREESTUDIO_ROOT):
        if name in ("custom", "configs", "outputs", ".threestudio_cache"):
            continue
        os.symlink(os.path.join(THREESTUDIO_ROOT, name), os.path.join(dest, name))
    os.makedirs(os.path.join(dest, "custom"))
    os.makedirs(os.path.join(dest, "configs"))
    install_extension(dest)
    return dest


def launch_env(cache: str) -> dict:
    """The environment of a user's launch: this checkout first on the path (no stand-ins on it: the
    installer's start-up file supplies them where CUDA-only packages are missing)."""
    env = dict(os.environ)
    paths = [ROOT] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
    env.update(
        PYTHONPATH=os.pathsep.join(paths),
        PORTRAIT3D_CACHE=cache,
        WANDB_MODE="disabled",
        PYTHONWARNINGS="ignore",
    )
    return env


def launch(worktree: str, cache: str, *args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, "launch.py", *args],
        cwd=worktree,
        env=launch_env(cache),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return proc


def import_extension():
    """Import threestudio and this extension in the test process, as launch.py does (once)."""
    cpu_compat.install()
    if THREESTUDIO_ROOT not in sys.path:
        sys.path.insert(0, THREESTUDIO_ROOT)
    import threestudio

    load_extension()
    return threestudio

"""Helpers for tests that run threestudio: an isolated work tree with this extension installed, the
launch environment, and the extension imported in the test process as launch.py imports it."""

import os
import subprocess
import sys

from helpers import ROOT, THREESTUDIO_ROOT

from portrait3d.threestudio_env import import_threestudio, make_worktree  # noqa: F401  (the tests' import)


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
    return import_threestudio(THREESTUDIO_ROOT)

"""Helpers for tests that run threestudio: an isolated work tree with this extension installed,
and the environment a CPU-only machine needs (tests/cpu_stubs on PYTHONPATH)."""
import os
import subprocess
import sys

from conftest import ROOT, THREESTUDIO_ROOT

STUBS = os.path.join(ROOT, "tests", "cpu_stubs")


def make_worktree(dest: str) -> str:
    """A threestudio tree at ``dest``: links to THREESTUDIO_ROOT's entries, its own custom/ and
    configs/ (so the user's checkout is never modified), then our installer run on it."""
    sys.path.insert(0, ROOT)
    from install_extension import install

    os.makedirs(dest, exist_ok=True)
    for name in os.listdir(THREESTUDIO_ROOT):
        if name in ("custom", "configs", "outputs", ".threestudio_cache"):
            continue
        os.symlink(os.path.join(THREESTUDIO_ROOT, name), os.path.join(dest, name))
    os.makedirs(os.path.join(dest, "custom"))
    os.makedirs(os.path.join(dest, "configs"))
    install(dest)
    return dest


def launch_env(cache: str) -> dict:
    env = dict(os.environ)
    cuda = False
    try:
        import torch
        cuda = torch.cuda.is_available()
    except ImportError:
        pass
    paths = ([] if cuda else [STUBS]) + [ROOT] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
    env.update(PYTHONPATH=os.pathsep.join(paths), PORTRAIT3D_CACHE=cache, WANDB_MODE="disabled",
               PYTHONWARNINGS="ignore")
    return env


def launch(worktree: str, cache: str, *args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "launch.py", *args], cwd=worktree, env=launch_env(cache),
                          capture_output=True, text=True, timeout=timeout)
    return proc


def import_extension():
    """Import threestudio and this extension in the test process, as launch.py does (once)."""
    import importlib.util

    import torch

    if not torch.cuda.is_available() and STUBS not in sys.path:
        sys.path.insert(0, STUBS)
        spec = importlib.util.spec_from_file_location("_p3d_cpu_shim", os.path.join(STUBS, "sitecustomize.py"))
        spec.loader.exec_module(importlib.util.module_from_spec(spec))
    if THREESTUDIO_ROOT not in sys.path:
        sys.path.insert(0, THREESTUDIO_ROOT)
    import threestudio

    name = "threestudio-portrait3d"
    if name not in sys.modules:
        folder = os.path.join(ROOT, "custom", name)
        spec = importlib.util.spec_from_file_location(name, os.path.join(folder, "__init__.py"),
                                                      submodule_search_locations=[folder])
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return threestudio

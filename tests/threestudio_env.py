"""Helpers for tests that run threestudio: an isolated work tree with this extension installed, the
launch environment, and the extension imported in the test process as launch.py imports it."""

import atexit
import json
import os
import subprocess
import sys
import tempfile

from helpers import CHILD_EXIT, ROOT, THREESTUDIO_ROOT

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


# A warm interpreter for runs that end at start-up: it imports launch.py's third-party packages once
# (torch, Lightning with torchmetrics and torchvision, diffusers, transformers, wandb: ~6 s of the
# ~7.5 s every `python launch.py` spends before it reads its config), then, per request (a JSON line
# on stdin), forks a child that is `python launch.py ...` from there on: the request's folder, whole
# environment and argv; sys.path[0] the folder of launch.py with links resolved (as the interpreter
# sets it for a script); stdin from /dev/null, stdout/stderr to files; threestudio's own launch.py run
# as __main__, which imports threestudio and loads custom/ itself; it ends as the interpreter would
# (helpers.CHILD_EXIT).
# The parent answers with the child's exit status. The same pattern as
# test_bad_inputs' interpreter for `python -m gan_prior`.
_LAUNCH_ZYGOTE = (
    CHILD_EXIT
    + r"""
import json, os, runpy, signal, sys
import torch, pytorch_lightning, diffusers, transformers, wandb  # the expensive imports, done once
assert not torch.cuda.is_initialized()  # (a child forked after CUDA's start-up could not use CUDA)
sys.stdout.write("ready\n"); sys.stdout.flush()
for line in sys.stdin:
    cwd, env, argv, out, err, timeout = json.loads(line)
    pid = os.fork()
    if pid == 0:
        def run():
            signal.alarm(timeout)  # SIGALRM ends a child that runs too long (exit status -14)
            os.chdir(cwd)
            os.environ.clear(); os.environ.update(env)
            script = os.path.join(cwd, "launch.py")
            sys.path[0] = os.path.dirname(os.path.realpath(script))
            null = os.open(os.devnull, os.O_RDONLY); os.dup2(null, 0); os.close(null)
            for fd, path in ((1, out), (2, err)):
                f = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                os.dup2(f, fd); os.close(f)
            sys.stdout = open(1, "w", closefd=False); sys.stderr = open(2, "w", closefd=False)
            sys.argv = ["launch.py"] + argv
            runpy.run_path(script, run_name="__main__")
        run_as_main(run)  # (helpers.CHILD_EXIT)
    _, status = os.waitpid(pid, 0)
    sys.stdout.write(json.dumps(os.waitstatus_to_exitcode(status)) + "\n"); sys.stdout.flush()
"""
)
_zygote, _zygote_startup = None, None


def _launch_zygote(env: dict) -> subprocess.Popen:
    """This test process's warm interpreter (started on first use, and again if it ended or if the
    settings an interpreter reads at its start-up differ: PYTHON*, OMP_*, MKL_*)."""
    global _zygote, _zygote_startup
    startup = {k: v for k, v in env.items() if k.startswith(("PYTHON", "OMP_", "MKL_"))}
    if _zygote is not None and (_zygote.poll() is not None or startup != _zygote_startup):
        _zygote.kill()
        _zygote.wait()
        _zygote = None
    if _zygote is None:
        _zygote_startup = startup
        _zygote = subprocess.Popen(
            [sys.executable, "-c", _LAUNCH_ZYGOTE],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        assert _zygote.stdout.readline().strip() == "ready", "the warm launch.py interpreter did not start"
        atexit.register(_zygote.kill)
    return _zygote


def launch_to_error(worktree: str, cache: str, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """:func:`launch` for a run that ends at start-up (a config, option or file check), in a child of
    the warm interpreter: the same launch.py, argv, folder and environment, without the ~6 s of
    imports. ``test_a_forked_launch_ends_as_a_real_one`` checks that both end alike."""
    env = launch_env(cache)
    zygote = _launch_zygote(env)
    with tempfile.TemporaryDirectory() as logs:
        out, err = os.path.join(logs, "out"), os.path.join(logs, "err")
        request = [os.path.abspath(worktree), env, list(args), out, err, timeout]
        zygote.stdin.write(json.dumps(request) + "\n")
        zygote.stdin.flush()
        code = json.loads(zygote.stdout.readline())
        stdout, stderr = (open(p, encoding="utf-8", errors="replace").read() for p in (out, err))
    return subprocess.CompletedProcess(["launch.py", *args], code, stdout, stderr)


def import_extension():
    """Import threestudio and this extension in the test process, as launch.py does (once)."""
    return import_threestudio(THREESTUDIO_ROOT)

"""``portrait3d run``: one portrait through threestudio's own ``launch.py`` — ``--train`` (prompt →
initialisation → SDS → refinement → videos), then ``--export`` (meshes, pyramid) — and print where
the results are and how to resume or export again.

    portrait3d run --config configs/portrait3d-tiny.yaml
    portrait3d run --config configs/portrait3d.yaml system.prompt_processor.prompt="a portrait of ..."
"""

from __future__ import annotations

import glob
import os
import re
import shlex
import subprocess
import sys
import time
from typing import List, Optional, Sequence

from gan_prior.files import read_json, require_output_folder, write_json

from .errors import LaunchKilled, UsageError
from .threestudio_env import ThreestudioError, extension_installed, find_threestudio, launch_command
from .trial import Trial, checkpoint_step, find_trial


def resolve_config(path: str) -> str:
    """``path`` (from the current folder) as an absolute path; a missing file is one UsageError line."""
    if os.path.isfile(path):
        return os.path.abspath(path)
    raise UsageError(f"--config {path}: no such file (e.g. configs/portrait3d-tiny.yaml in this repository)")


# ``python -c DIE_WITH_PARENT PID CMD...``: SIGKILL this process when its parent dies (Linux
# PR_SET_PDEATHSIG, kept across exec), then exec CMD: a killed worker never leaves a launch.py
# writing into the trial its retry resumes. (An exec shim, not preexec_fn: Ray workers have threads.)
DIE_WITH_PARENT = (
    "import ctypes, os, sys\n"
    "ctypes.CDLL(None).prctl(1, 9)\n"
    "if os.getppid() != int(sys.argv[1]):\n    sys.exit(137)\n"
    "os.execv(sys.argv[2], sys.argv[2:])\n"
)


def _command(args: Sequence[str]) -> List[str]:
    cmd = launch_command(*args)
    if sys.platform.startswith("linux"):
        return [sys.executable, "-c", DIE_WITH_PARENT, str(os.getpid()), *cmd]
    return cmd


def launch(root: str, args: Sequence[str], log: Optional[str] = None, stats: Optional[dict] = None) -> int:
    """Run ``launch.py ARGS`` in ``root``; output to the terminal, or appended to ``log``. Returns its
    exit code (negative: killed by that signal); ``stats["peak_memory_mb"]`` gets the larger of its
    value and the run's peak resident memory."""
    out = open(log, "a", encoding="utf-8") if log else None
    try:
        proc = subprocess.Popen(
            _command(args), cwd=root, stdout=out, stderr=subprocess.STDOUT if out else None
        )
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        proc.returncode = os.waitstatus_to_exitcode(status)
    finally:
        if out:
            out.close()
    if stats is not None:  # ru_maxrss: KiB on Linux, bytes on macOS
        mb = usage.ru_maxrss / (2**20 if sys.platform == "darwin" else 2**10)
        stats["peak_memory_mb"] = round(max(stats.get("peak_memory_mb") or 0.0, mb), 1)
    return proc.returncode


def last_error(log: Optional[str]) -> str:
    """The one-line reason a ``launch.py`` run gave in ``log``: its ``[ERROR]`` line, else the last
    line of its traceback; '' when there is none."""
    if not log or not os.path.isfile(log):
        return ""
    with open(log, encoding="utf-8", errors="replace") as f:
        lines = [line.strip() for line in f.readlines()[-400:] if line.strip()]
    for line in reversed(lines):
        if "[ERROR]" in line:
            return line.split("[ERROR]", 1)[1].strip()
    for line in reversed(lines):
        if re.match(r"^[A-Za-z_.]*(Error|Exception)\b.*:", line):
            return line
    return ""


def yaml_quote(value: str) -> str:
    """``value`` as a YAML single-quoted string, for a ``key=value`` override (threestudio's CLI
    parses values as YAML: ``a: b`` would become a mapping, ``007`` a number)."""
    return "'" + str(value).replace("'", "''") + "'"


def _failed(step: str, code: int, log: Optional[str], trial: Optional[Trial] = None) -> UsageError:
    if code < 0:
        return LaunchKilled(
            f"{step}: launch.py was killed by signal {-code}"
            + (f"; its trial {trial.folder} resumes from its last checkpoint" if trial else "")
        )
    status = trial.status() if trial else None
    reason = last_error(log) or (status.error if status else "")
    where = f"see {log}" if log else "see the messages above"
    if trial is not None:
        where += f"; its trial {trial.folder} is {status.label}"
    return UsageError(
        f"{step} failed (launch.py exit code {code}): {reason}; {where}"
        if reason
        else f"{step} failed (launch.py exit code {code}); {where}"
    )


def require_threestudio(root: Optional[str] = None, node: Optional[str] = None) -> str:
    """threestudio's root (``root``, else :func:`find_threestudio`) with the extension installed,
    or a one-line :class:`UsageError` saying what to run (on worker ``node``, when given)."""
    try:
        root = root or find_threestudio()
    except ThreestudioError as e:
        raise UsageError(str(e)) from None
    if not extension_installed(root):
        where, fix = (f" on {node}", "there") if node else ("", "(or `make demo`)")
        raise UsageError(
            f"the Portrait3D extension is not installed in {root}{where}: run "
            f"`python install_extension.py {root}` {fix}"
        )
    return root


def train_and_export(
    config: str,
    overrides: Sequence[str],
    outputs: str,
    root: Optional[str] = None,
    log: Optional[str] = None,
    tag: Optional[str] = None,
    stats: Optional[dict] = None,
) -> Trial:
    """Train then export one portrait; returns its trial. Raises UsageError when a step fails
    (:class:`LaunchKilled` when launch.py was killed).

    Without ``tag`` every call is a new trial (a unique timestamp). With ``tag`` the trial folder is
    fixed (``<outputs>/<config name>/<tag>``) and a call continues what an earlier one left: training
    resumes from ``ckpts/last.ckpt`` (threestudio ``resume=``), a finished training is not repeated
    (``stages.json``), and the initialisation is reused from ``save/init/<key>``. ``stats`` receives
    ``times`` (seconds per stage of this call), ``peak_memory_mb`` and ``resumed_from_step``.
    """
    root = require_threestudio(root)
    stats = {} if stats is None else stats
    stats.setdefault("times", {})
    stats.setdefault("resumed_from_step", None)
    trial = find_trial(outputs, tag) if tag else None
    stages = (read_json(trial.stages) or {}) if trial else {}
    if "train" not in stages:
        start = time.time()
        if trial is not None and os.path.isfile(trial.last_ckpt):
            stats["resumed_from_step"] = checkpoint_step(trial.last_ckpt)
            code = launch(root, trial.resume_args(), log, stats)
        else:
            # a fixed tag: a trial killed before its first checkpoint starts again in the same folder
            # (its initialisation, if finished, is reused)
            stamp = time.strftime("@%Y%m%d-%H%M%S")
            # quoted: YAML would read '@...' as reserved and a tag such as 007 as a number
            fixed = (
                ["use_timestamp=false", f"tag={yaml_quote(tag)}"]
                if tag
                else [f"timestamp={yaml_quote(stamp)}"]
            )
            args = [
                "--config",
                config,
                "--train",
                f"exp_root_dir={os.path.abspath(outputs)}",
                *fixed,
                *overrides,
            ]
            code = launch(root, args, log, stats)
            if tag:
                trial = find_trial(outputs, tag)
            else:
                found = glob.glob(os.path.join(os.path.abspath(outputs), "*", f"*{stamp}"))
                trial = Trial(found[0]) if len(found) == 1 else None
        if code == 0 and trial is None:  # (our configs name one folder: custom/.../utils/trial_tag.py)
            raise UsageError(
                f"training: launch.py finished, but its trial folder ({tag or '*' + stamp}) is not "
                f"directly in {os.path.abspath(outputs)}/<name>/: a config whose tag holds a '/' nests "
                "it deeper; set tag=... to one folder name"
            )
        if code != 0:
            raise _failed("training", code, log, trial)
        stages["train"] = stats["times"]["train"] = round(time.time() - start, 2)
        write_json(trial.stages, stages)
    start = time.time()
    code = launch(root, trial.resume_args("--export"), log, stats)
    if code != 0:
        err = _failed("export", code, log, trial)
        raise type(err)(f"{err}; the trained run is in {trial.folder}")
    stages["export"] = stats["times"]["export"] = round(time.time() - start, 2)
    write_json(trial.stages, stages)
    return trial


def describe(trial: Trial, root: str) -> str:
    """What a user needs next: where the results are, and the resume / export commands."""
    lines = [f"trial folder: {trial.folder} ({trial.status().label})"]
    page = os.path.join(trial.folder, "save", "index.html")  # portrait3d.report, written by the run
    if os.path.isfile(page):
        lines.append(f"  {'report':<8} {os.path.relpath(page, trial.folder)}  (open it in a browser)")
    for kind, paths in trial.files().items():
        for path in paths:
            lines.append(f"  {kind:<8} {os.path.relpath(path, trial.folder)}")
    lines += ["resume:", f"  {pasteable(root, trial.resume_args())}"]
    lines += ["export again:", f"  {pasteable(root, trial.resume_args('--export'))}"]
    return "\n".join(lines)


def pasteable(root: str, args: Sequence[str]) -> str:
    """``launch.py ARGS`` as one shell line that works pasted into a fresh shell: from threestudio's
    root, with this environment's interpreter (a fresh shell has no ``python``, or one without the
    packages)."""
    command = " ".join(shlex.quote(a) for a in launch_command(*args))
    return f"cd {shlex.quote(root)} && {command}"


def cmd_run(args) -> int:
    config = resolve_config(args.config)
    try:  # before threestudio starts: its message would name exp_root_dir, which --outputs sets
        require_output_folder(args.outputs, "--outputs")
    except ValueError as e:
        raise UsageError(str(e)) from None
    trial = train_and_export(config, args.overrides, args.outputs)
    print(describe(trial, find_threestudio()))
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser(
        "run",
        help="one portrait: launch.py --train, then --export; prints the results",
        description=__doc__.split("\n\n")[0],
    )
    p.add_argument("--config", required=True, help="a threestudio config, e.g. configs/portrait3d-tiny.yaml")
    p.add_argument("--outputs", default="outputs", help="folder for the trial folders")
    p.add_argument("overrides", nargs="*", help="config overrides, key=value (threestudio's syntax)")
    p.set_defaults(func=cmd_run)

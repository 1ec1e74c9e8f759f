"""``portrait3d run``: one portrait through threestudio's own ``launch.py`` — ``--train`` (prompt →
initialisation → SDS → refinement → videos), then ``--export`` (meshes, pyramid) — and print where
the results are and how to resume or export again.

    portrait3d run --config configs/portrait3d-tiny.yaml
    portrait3d run --config configs/portrait3d.yaml system.prompt_processor.prompt="a portrait of ..."
"""
from __future__ import annotations

import glob
import os
import shlex
import subprocess
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

from .cli import UsageError
from .threestudio_env import ThreestudioError, extension_installed, find_threestudio, launch_command


@dataclass
class Trial:
    """A threestudio trial folder and what a finished Portrait3D run leaves in it."""

    folder: str
    config: str = field(init=False)
    last_ckpt: str = field(init=False)

    def __post_init__(self):
        self.folder = os.path.abspath(self.folder)
        self.config = os.path.join(self.folder, "configs", "parsed.yaml")
        self.last_ckpt = os.path.join(self.folder, "ckpts", "last.ckpt")

    def files(self) -> Dict[str, List[str]]:
        """Products by kind (newest step last): videos, meshes, views sheets, metrics."""
        save = os.path.join(self.folder, "save")

        def find(pattern: str) -> List[str]:
            return sorted(glob.glob(os.path.join(save, pattern)), key=os.path.getmtime)

        return {
            "videos": find("it*-large_pose.mp4") + find("it*-small_pose.mp4") + find("it*-test.mp4"),
            "meshes": find("it*-export/portrait.glb") + find("it*-export/portrait.obj"),
            "views": find("it*-views.png"),
            "metrics": find("it*-eval/metrics.json"),
        }

    def resume_args(self, mode: str = "--train") -> List[str]:
        return ["--config", self.config, mode, f"resume={self.last_ckpt}"]


def resolve_config(path: str) -> str:
    """``path`` as given (from the current folder), else inside the threestudio root; absolute."""
    if os.path.isfile(path):
        return os.path.abspath(path)
    raise UsageError(f"--config {path}: no such file (e.g. configs/portrait3d-tiny.yaml in this repository)")


def launch(root: str, args: Sequence[str], log: Optional[str] = None) -> int:
    """Run ``launch.py ARGS`` in ``root``; output to the terminal, or appended to ``log``."""
    if log is None:
        return subprocess.run(launch_command(*args), cwd=root).returncode
    with open(log, "a", encoding="utf-8") as f:
        return subprocess.run(launch_command(*args), cwd=root, stdout=f, stderr=subprocess.STDOUT).returncode


def train_and_export(config: str, overrides: Sequence[str], outputs: str, root: Optional[str] = None,
                     log: Optional[str] = None) -> Trial:
    """Train then export one portrait; returns its trial. Raises UsageError when a step fails."""
    try:
        root = root or find_threestudio()
    except ThreestudioError as e:
        raise UsageError(str(e)) from e
    if not extension_installed(root):
        raise UsageError(f"the Portrait3D extension is not installed in {root}: run "
                         f"`python install_extension.py {root}` (or `make demo`)")
    stamp = time.strftime("@%Y%m%d-%H%M%S")
    args = ["--config", config, "--train", f"exp_root_dir={os.path.abspath(outputs)}", f"timestamp='{stamp}'",
            *overrides]
    code = launch(root, args, log)
    found = glob.glob(os.path.join(os.path.abspath(outputs), "*", f"*{stamp}"))
    if code != 0 or len(found) != 1:
        raise UsageError(f"training failed (launch.py exit code {code}); see the messages above"
                         + (f" and {log}" if log else ""))
    trial = Trial(found[0])
    code = launch(root, trial.resume_args("--export"), log)
    if code != 0:
        raise UsageError(f"export failed (launch.py exit code {code}); the trained run is in {trial.folder}")
    return trial


def describe(trial: Trial, root: str) -> str:
    """What a user needs next: where the results are, and the resume / export commands."""
    lines = [f"trial folder: {trial.folder}"]
    for kind, paths in trial.files().items():
        for path in paths:
            lines.append(f"  {kind:<8} {os.path.relpath(path, trial.folder)}")
    resume = " ".join(shlex.quote(a) for a in ["python", "launch.py", *trial.resume_args()])
    export = " ".join(shlex.quote(a) for a in ["python", "launch.py", *trial.resume_args("--export")])
    lines += [f"resume (from {root}):", f"  {resume}", "export again:", f"  {export}"]
    return "\n".join(lines)


def cmd_run(args) -> int:
    config = resolve_config(args.config)
    trial = train_and_export(config, args.overrides, args.outputs)
    print(describe(trial, find_threestudio()))
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("run", help="one portrait: launch.py --train, then --export; prints the results",
                       description=__doc__.split("\n\n")[0])
    p.add_argument("--config", required=True, help="a threestudio config, e.g. configs/portrait3d-tiny.yaml")
    p.add_argument("--outputs", default="outputs", help="folder for the trial folders")
    p.add_argument("overrides", nargs="*", help="config overrides, key=value (threestudio's syntax)")
    p.set_defaults(func=cmd_run)

"""One threestudio trial folder: its paths, its config, its files by step, its status, and what its
report page shows.

A trial is ``<outputs>/<config name>/<tag>``, made by threestudio's ``launch.py``:
``configs/parsed.yaml`` (the whole config), ``ckpts/`` (``last.ckpt``, ``epoch=0-step=N.ckpt``) and
``save/`` (``it<N>-…`` files: what the run wrote at step ``N``). Ours beside them: ``status.json``
(what the last ``launch.py`` on the trial did — running, done, failed with its error line — written
by the extension's system and by :mod:`portrait3d.launch_errors`) and ``stages.json`` (seconds per
stage, written by ``portrait3d run``).

One rule for "the latest file": the highest step ``N`` of its ``it<N>-`` name (:func:`latest`), never
a modification time. Imports nothing of this package but :mod:`.errors`; cheap (torch only when a
checkpoint's step is read).
"""

from __future__ import annotations

import glob
import os
import re
import shlex
import socket
import time
from dataclasses import dataclass
from functools import cached_property
from typing import Callable, Dict, List, Optional, Tuple

from gan_prior.files import read_json, write_json

from .errors import UsageError

CONFIG = os.path.join("configs", "parsed.yaml")
STATUS = "status.json"
STAGES = "stages.json"
REPORT_PAGE = "index.html"  # save/index.html: the report (portrait3d.report)
REPORT_ASSETS = "_report"  # save/_report/: the report's viewer bundle and the mesh as a script
MESH_REPORT = "mesh_fidelity.json"  # beside an export's mesh: its clean-up, fidelity and source
STATES = ("running", "done", "stopped", "failed")


# ------------------------------------------------------------------------------------- config files
MAX_CONFIG_BYTES = 16 << 20  # a parsed.yaml is a few KB; a trial folder is something users zip and send
MAX_CONFIG_NODES = 200_000  # values after expanding YAML aliases (threestudio's parsed.yaml has none)


def _expanded_nodes(node, memo: dict, limit: int) -> int:
    """How many nodes ``node`` stands for once every alias is expanded (shared nodes counted at each
    use), stopping early past ``limit``: a few KB of nested aliases stand for billions."""
    import yaml

    if id(node) in memo:
        return memo[id(node)]
    total = 1
    if isinstance(node, yaml.MappingNode):
        children = [n for pair in node.value for n in pair]
    elif isinstance(node, yaml.SequenceNode):
        children = node.value
    else:
        children = []
    for child in children:
        total += _expanded_nodes(child, memo, limit)
        if total > limit:
            break
    memo[id(node)] = total
    return total


def read_yaml(path: str) -> dict:
    """A YAML mapping (a trial's configs/parsed.yaml), or {} when it cannot be read or is not a
    mapping. A file that would take unbounded memory — over :data:`MAX_CONFIG_BYTES`, or aliases
    expanding past :data:`MAX_CONFIG_NODES` values (a "billion laughs" file) — is a one-line
    :class:`UsageError` naming it, never loaded."""
    import yaml

    try:
        with open(path, encoding="utf-8") as f:
            text = f.read(MAX_CONFIG_BYTES + 1)
        if len(text) > MAX_CONFIG_BYTES:
            raise UsageError(f"{path}: larger than {MAX_CONFIG_BYTES >> 20} MiB; not a threestudio config")
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        if node is not None and _expanded_nodes(node, {}, MAX_CONFIG_NODES) > MAX_CONFIG_NODES:
            raise UsageError(
                f"{path}: its YAML aliases expand to more than {MAX_CONFIG_NODES} values (an alias bomb); "
                "not a threestudio config: replace it with the run's own configs/parsed.yaml"
            )
        data = yaml.safe_load(text)
    except (OSError, ValueError, RecursionError, yaml.YAMLError) as e:
        if isinstance(e, UsageError):
            raise
        return {}
    return data if isinstance(data, dict) else {}


def config_value(cfg: dict, dotted: str):
    """``cfg["a"]["b"]`` for ``"a.b"``, or None."""
    for key in dotted.split("."):
        if not isinstance(cfg, dict) or key not in cfg:
            return None
        cfg = cfg[key]
    return cfg


# ----------------------------------------------------------------------------------- files by step
def by_step(folder: str, pattern: str) -> List[Tuple[int, str]]:
    """``(step, name)`` of the entries of ``folder`` whose whole name matches ``pattern`` (group 1:
    the step), by step, then name; [] when ``folder`` cannot be listed."""
    try:
        names = os.listdir(folder)
    except OSError:
        return []
    found = []
    for name in names:
        m = re.fullmatch(pattern, name)
        if m:
            found.append((int(m.group(1)), name))
    return sorted(found)


def latest(folder: str, pattern: str, check: Optional[Callable[[str], bool]] = None) -> Optional[str]:
    """The name in ``folder`` matching ``pattern`` with the highest step (and passing ``check``, given
    its path), or None: the one rule for "the latest file"."""
    for _, name in reversed(by_step(folder, pattern)):
        if check is None or check(os.path.join(folder, name)):
            return name
    return None


def checkpoint_step(path: str) -> Optional[int]:
    """The ``global_step`` a Lightning checkpoint holds (read without executing code), or None."""
    try:
        import torch

        return int(torch.load(path, map_location="cpu", weights_only=True, mmap=True)["global_step"])
    except Exception:
        return None


# ------------------------------------------------------------------------------------------ status
def _process_token(pid) -> Optional[str]:
    """Something that identifies the live process ``pid`` (its start time on Linux, so that a reused
    pid is another process), or None when there is no such live process (a zombie is dead)."""
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return None
    if os.path.isdir("/proc/self"):
        try:
            with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            return None if fields[0] in ("Z", "X") else fields[19]
        except (OSError, IndexError):
            return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except OSError:
        pass
    return ""


def _one_line(text) -> str:
    lines = [line.strip() for line in str(text or "").strip().splitlines() if line.strip()]
    return lines[0][:500] if lines else ""


def write_status(folder: str, state: str, stage: Optional[str] = None, step=None, error=None) -> None:
    """Record in ``<folder>/status.json`` (atomically) what this process does with the trial:
    ``running`` (with its pid and host, so a killed run reads as stopped), ``done`` or ``failed``
    (with its one-line ``error``), in ``stage`` (train, test, export) at ``step``."""
    assert state in STATES, state
    pid = os.getpid()
    write_json(
        os.path.join(folder, STATUS),
        {
            "state": state,
            "stage": stage,
            "step": step,
            "error": _one_line(error) or None,
            "host": socket.gethostname(),
            "pid": pid,
            "process": _process_token(pid),
            "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
        },
    )


@dataclass
class Status:
    """Where a trial stands, read from what it holds (:meth:`Trial.status`)."""

    state: str  # running | done | stopped | failed
    step: Optional[int] = None  # done/failed: the step it reached; stopped: its last checkpoint's
    stage: Optional[str] = None  # train | test | export: what the last launch.py was doing
    error: str = ""  # failed: the last error line
    checkpoint: Optional[str] = None  # ckpts/last.ckpt when there is one (resume and export need it)
    host: Optional[str] = None  # running on another machine: its name (not checked from here)

    @property
    def detail(self) -> str:
        """What follows the state in a few words: ``at step 4``, ``in export at step 8``, ``(train)``."""
        at = f"at step {self.step}" if self.step is not None else ""
        if self.state == "running":
            return " ".join(
                p
                for p in (f"({self.stage})" if self.stage else "", f"on {self.host}" if self.host else "")
                if p
            )
        if self.state == "stopped":
            return at or "before its first checkpoint"
        if self.state == "failed":
            return " ".join(p for p in ("in export" if self.stage == "export" else "", at) if p)
        return at

    @property
    def label(self) -> str:
        """``done at step 8``, ``running (train)``, ``stopped at step 4``, ``failed at step 8``."""
        return f"{self.state} {self.detail}".strip()


# ------------------------------------------------------------------------------------------- trials
def is_trial(folder: str) -> bool:
    """A threestudio trial folder (``configs/parsed.yaml``; a run that failed early has no ``save/``)."""
    return os.path.isfile(os.path.join(folder, CONFIG))


def find_trials(folder: str, max_depth: int = 4) -> List[str]:
    """Trial folders at or below ``folder`` (not looking inside a trial), sorted."""
    found = []
    for root, dirs, _ in os.walk(folder):
        if is_trial(root):
            found.append(root)
            dirs[:] = []
            continue
        depth = os.path.relpath(root, folder).count(os.sep) + (root != folder)
        dirs[:] = (
            []
            if depth >= max_depth
            else sorted(d for d in dirs if not d.startswith(".") and d != "node_modules")
        )
    return sorted(found)


def find_trial(outputs: str, tag: str) -> Optional["Trial"]:
    """The trial folder ``<outputs>/<config name>/<tag>`` a fixed-tag run made, if any."""
    found = [d for d in glob.glob(os.path.join(os.path.abspath(outputs), "*", tag)) if is_trial(d)]
    return Trial(found[0]) if len(found) == 1 else None


def open_trial(folder: str) -> "Trial":
    """The trial in ``folder``, or a one-line :class:`UsageError` saying what to pass."""
    folder = os.path.abspath(folder)
    if not is_trial(folder):
        raise UsageError(
            f"{folder} is not a threestudio trial folder (no {CONFIG}); pass outputs/<experiment>/<trial>"
        )
    return Trial(folder)


# settings a report shows (the whole parsed.yaml is one click away)
SETTINGS = (
    ("prompt", "system.prompt_processor.prompt"),
    ("negative prompt", "system.prompt_processor.negative_prompt"),
    ("seed", "seed"),
    ("initialisation", "system.initializer.source"),
    ("diffusion model", "system.prompt_processor.pretrained_model_name_or_path"),
    ("guidance", "system.guidance_type"),
    ("CFG scale", "system.guidance.guidance_scale"),
    ("t range", ("system.guidance.min_step_percent", "system.guidance.max_step_percent")),
    ("SDS steps", "system.sds_steps"),
    ("refinement steps", "system.refine.steps"),
    ("render size", ("data.width", "data.height")),
    ("GAN checkpoint", "system.prior_checkpoint"),
)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
VIDEOS = (("large pose", "large_pose"), ("small pose", "small_pose"), ("test", "test"))


class Trial:
    """A threestudio trial folder: its paths, its config, its files by step, its status, and what its
    report shows (paths relative to ``save/``). Nothing is read until it is asked for."""

    def __init__(self, folder: str):
        self.folder = os.path.abspath(folder)
        self.config_file = os.path.join(self.folder, CONFIG)
        self.ckpts = os.path.join(self.folder, "ckpts")
        self.last_ckpt = os.path.join(self.ckpts, "last.ckpt")
        self.save = os.path.join(self.folder, "save")
        self.stages = os.path.join(self.folder, STAGES)  # seconds of each finished stage (portrait3d run)
        self.status_file = os.path.join(self.folder, STATUS)

    def __repr__(self) -> str:
        return f"Trial({self.folder!r})"

    def inside(self, path: str) -> str:
        """``path`` (in this trial) itself, when it and every link on the way resolve inside the trial
        folder; else a one-line :class:`UsageError`: a report never reads or writes through a symbolic
        link out of the trial (a ``save/_report`` link to another folder, ``parsed.yaml`` linked to a
        secret), and names a broken link as such."""
        if not self.holds(path):
            raise UsageError(
                f"{path} is a symbolic link out of the trial folder (to {os.path.realpath(path)}); a report "
                "reads and writes "
                "only inside the trial: replace the link with the file itself"
            )
        if os.path.islink(path) and not os.path.exists(path):
            raise UsageError(f"{path} is a broken symbolic link; remove it or restore what it points to")
        return path

    def holds(self, path: str) -> bool:
        """Whether ``path`` resolves inside the trial folder (through any link on the way)."""
        root = os.path.realpath(self.folder)
        return os.path.commonpath([os.path.realpath(path), root]) == root

    def read_json(self, path: str) -> Optional[dict]:
        """The JSON object in ``path`` (:func:`gan_prior.files.read_json`), or None when it is missing,
        unreadable, not an object, or a symbolic link out of the trial (not followed: what a report
        shows comes from the trial itself)."""
        return read_json(path) if self.holds(path) else None

    @cached_property
    def config(self) -> dict:
        """``configs/parsed.yaml`` as a mapping ({} when it cannot be read)."""
        return read_yaml(self.config_file)

    @property
    def prompt(self) -> str:
        value = config_value(self.config, "system.prompt_processor.prompt")
        return str(value) if value not in (None, "") else os.path.basename(self.folder)

    @property
    def name(self) -> str:
        return os.path.basename(self.folder)

    def latest(self, pattern: str, check: Optional[Callable[[str], bool]] = None) -> Optional[str]:
        """The name in ``save/`` matching ``pattern`` with the highest step (:func:`latest`)."""
        return latest(self.save, pattern, check)

    def files(self) -> Dict[str, List[str]]:
        """Products by kind (absolute paths, by step, newest last): videos, meshes, views, metrics."""

        def find(pattern: str, inside: str = "") -> List[str]:
            return [
                os.path.join(self.save, name, inside) if inside else os.path.join(self.save, name)
                for _, name in by_step(self.save, pattern)
                if not inside or os.path.isfile(os.path.join(self.save, name, inside))
            ]

        return {
            "videos": [p for _, suffix in VIDEOS for p in find(rf"it(\d+)-{suffix}\.mp4")],
            "meshes": find(r"it(\d+)-export", "portrait.glb") + find(r"it(\d+)-export", "portrait.obj"),
            "views": find(r"it(\d+)-views\.png"),
            "metrics": find(r"it(\d+)-eval", "metrics.json"),
        }

    def resume_args(self, mode: str = "--train") -> List[str]:
        """``launch.py`` arguments that continue (``--train``) or export (``--export``) this trial."""
        return ["--config", self.config_file, mode, f"resume={self.last_ckpt}"]

    def launch_line(self, mode: str = "--train") -> str:
        """The ``launch.py`` command (run in the threestudio folder) of :meth:`resume_args`."""
        return " ".join(shlex.quote(a) for a in ["python", "launch.py", *self.resume_args(mode)])

    def fid_reference(self, configured: Optional[str] = None) -> Optional[str]:
        """The images a FID/KID compares this portrait's views with — the one rule for a run's own
        ``metrics.json`` and for ``portrait3d evaluate``: ``configured`` (``system.evaluation.reference``,
        read from the trial's config when not given), else its initialisation's candidate images
        (``save/init/<key>/candidates``; the newest non-empty folder where there are several)."""
        configured = configured or config_value(self.config, "system.evaluation.reference")
        if configured:
            return str(configured)
        found = [
            d
            for d in glob.glob(os.path.join(self.save, "init", "*", "candidates"))
            if os.path.isdir(d) and os.listdir(d)
        ]
        return max(found, key=lambda d: (os.path.getmtime(d), d)) if found else None

    # ---------------------------------------------------------------------------------- status
    def status_record(self) -> dict:
        """``status.json`` as the last run wrote it ({} when there is none)."""
        return self.read_json(self.status_file) or {}

    def status(self) -> Status:
        """Where the trial stands, from what it holds: ``status.json`` (written by the run), checked
        against the process it names (a run killed without a word reads as stopped at its last
        checkpoint); without one (a trial from before it, or made by hand), done when its test video
        is there, else stopped."""
        record = self.status_record()
        state = record.get("state")
        stage = record.get("stage") if isinstance(record.get("stage"), str) else None
        step = record.get("step") if isinstance(record.get("step"), int) else None
        checkpoint = self.last_ckpt if os.path.isfile(self.last_ckpt) else None
        host = None
        if state == "running":
            if record.get("host") != socket.gethostname():
                host = str(record.get("host") or "?")  # cannot be checked from here: as recorded
            else:
                token = _process_token(record.get("pid"))
                if token is None or record.get("process") not in (None, token):
                    state, step = "stopped", None  # killed: it stopped at its last checkpoint
        elif state not in ("done", "failed", "stopped"):
            test = self.latest(r"it(\d+)-test\.mp4")
            state = "done" if test else "stopped"
            step = int(re.match(r"it(\d+)", test).group(1)) if test else None
        if state in ("stopped", "failed") and step is None and checkpoint:
            step = checkpoint_step(checkpoint)
        return Status(
            state=state,
            step=step,
            stage=stage,
            error=_one_line(record.get("error")) if state == "failed" else "",
            checkpoint=checkpoint,
            host=host,
        )

    def seconds(self) -> Optional[float]:
        """The run's wall time without a batch's record of it: from its oldest file to the newest one
        in save/ (a resumed or re-exported run rewrites its config, so the config's time is no start)."""
        start = end = None
        for root, dirs, files in os.walk(self.folder):
            dirs[:] = [d for d in dirs if d != REPORT_ASSETS]
            in_save = os.path.relpath(root, self.folder).split(os.sep)[0] == "save"
            for name in files:
                if name in (REPORT_PAGE, STATUS) or name.startswith("."):
                    continue
                mtime = os.path.getmtime(os.path.join(root, name))
                start = mtime if start is None else min(start, mtime)
                if in_save:
                    end = mtime if end is None else max(end, mtime)
        return None if start is None or end is None else end - start

    # ------------------------------------------------------------------------ what a report shows
    @cached_property
    def settings(self) -> List[Tuple[str, object]]:
        """``(label, value)`` of the main settings that are set (values as the config holds them)."""
        found = []
        for label, key in SETTINGS:
            if isinstance(key, tuple):
                value = (" × " if label == "render size" else " … ").join(
                    str(config_value(self.config, k)) for k in key
                )
            else:
                value = config_value(self.config, key)
            if value not in (None, ""):
                found.append((label, value))
        return found

    @cached_property
    def inits(self) -> List[dict]:
        """One record per ``save/init/<key>/``: candidates (src, name, state, reason), camera, inversion,
        timings, and the aligned crop and target | inversion images when there."""
        root = os.path.join(self.save, "init")
        try:
            keys = sorted(k for k in os.listdir(root) if os.path.isdir(os.path.join(root, k)))
        except OSError:
            return []
        return [_init_record(self, key) for key in keys]

    @cached_property
    def sds(self) -> List[str]:
        """The SDS progress images ``it<N>-<view>.png``, by step and view."""
        found = []
        try:
            names = os.listdir(self.save)
        except OSError:
            return []
        for name in names:
            m = re.fullmatch(r"it(\d+)-(\d+)\.png", name)
            if m:
                found.append((int(m.group(1)), int(m.group(2)), name))
        return [name for *_, name in sorted(found)]

    @cached_property
    def refine(self) -> List[Tuple[str, Optional[str]]]:
        """``(view, refined view or None)`` of the refinement stage."""
        folder = os.path.join(self.save, "refine")
        try:
            views = sorted(n for n in os.listdir(folder) if re.fullmatch(r"view_\d+\.png", n))
        except OSError:
            return []
        return [
            (
                f"refine/{v}",
                f"refine/refined_{v[5:]}"
                if os.path.isfile(os.path.join(folder, "refined_" + v[5:]))
                else None,
            )
            for v in views
        ]

    @property
    def refine_comparison(self) -> Optional[str]:
        found = os.path.isfile(os.path.join(self.save, "refine", "comparison.png"))
        return "refine/comparison.png" if found else None

    @cached_property
    def videos(self) -> List[Tuple[str, str]]:
        """``(kind, name)`` of the latest video of each kind."""
        found = []
        for kind, suffix in VIDEOS:
            name = self.latest(rf"it(\d+)-{suffix}\.mp4")
            if name:
                found.append((kind, name))
        return found

    @cached_property
    def views(self) -> Optional[str]:
        """The latest turntable contact sheet."""
        return self.latest(r"it(\d+)-views\.png")

    @cached_property
    def mesh(self) -> Optional[str]:
        """The latest exported ``.glb`` (``it<N>-export/portrait.glb``, else its first .glb)."""

        def glbs(path: str) -> List[str]:
            try:
                return sorted(n for n in os.listdir(path) if n.endswith(".glb"))
            except OSError:
                return []

        export = self.latest(r"it(\d+)-export", lambda p: bool(glbs(p)))
        if not export:
            return None
        names = glbs(os.path.join(self.save, export))
        return f"{export}/" + ("portrait.glb" if "portrait.glb" in names else names[0])

    @property
    def mesh_fidelity_file(self) -> Optional[str]:
        """``mesh_fidelity.json`` beside the latest mesh, when the export wrote one."""
        if not self.mesh:
            return None
        path = f"{os.path.dirname(self.mesh)}/{MESH_REPORT}"
        return path if os.path.isfile(os.path.join(self.save, path)) else None

    @cached_property
    def mesh_fidelity(self) -> Optional[dict]:
        """The export's clean-up and fidelity (values as written: a page must cope with any JSON value)."""
        path = self.mesh_fidelity_file
        return read_json(os.path.join(self.save, path)) if path else None

    @property
    def mesh_textured(self) -> bool:
        """Whether the latest mesh carries a baked texture (else vertex colours)."""
        mesh = (self.mesh_fidelity or {}).get("mesh")
        return bool(isinstance(mesh, dict) and mesh.get("textured"))

    @cached_property
    def evaluation(self) -> Optional[str]:
        """The latest ``it<N>-eval`` folder with a metrics.json."""
        return self.latest(r"it(\d+)-eval", lambda p: os.path.isfile(os.path.join(p, "metrics.json")))

    @property
    def metrics_file(self) -> Optional[str]:
        return f"{self.evaluation}/metrics.json" if self.evaluation else None

    @cached_property
    def metrics(self) -> Optional[dict]:
        """The latest metrics.json (values as written: a page must cope with any JSON value)."""
        return self.read_json(os.path.join(self.save, self.metrics_file)) if self.metrics_file else None

    @property
    def contact_sheet(self) -> Optional[str]:
        if self.evaluation and os.path.isfile(os.path.join(self.save, self.evaluation, "contact_sheet.png")):
            return f"{self.evaluation}/contact_sheet.png"
        return None

    @property
    def poster(self) -> Optional[str]:
        """An image that stands for the portrait (the turntable's contact sheet, else the aligned crop,
        else the last SDS image)."""
        if self.views:
            return self.views
        for init in self.inits:
            if init.get("aligned"):
                return init["aligned"]
        return self.sds[-1] if self.sds else None

    @property
    def turntable(self) -> Optional[str]:
        for kind, path in self.videos:
            if kind == "large pose":
                return path
        return self.videos[0][1] if self.videos else None

    def all_files(self) -> List[Tuple[str, int]]:
        """``(path relative to save/, size)`` of every file of the trial but the report's own."""
        found = []
        for root, dirs, files in os.walk(self.folder):
            rel_root = os.path.relpath(root, self.folder)
            dirs[:] = sorted(
                d for d in dirs if not d.startswith(".") and not (rel_root == "save" and d == REPORT_ASSETS)
            )
            for name in sorted(files):
                if name.startswith(".") or (rel_root == "save" and name == REPORT_PAGE):
                    continue
                path = os.path.join(root, name)
                if not self.holds(path):  # a link out of the trial: not ours to list
                    continue
                try:
                    size = os.path.getsize(path)
                except OSError:  # a dangling link
                    continue
                found.append((os.path.relpath(path, self.save).replace(os.sep, "/"), size))
        return found


def _init_record(trial: "Trial", key: str) -> dict:
    """What ``save/init/<key>/`` holds (its JSON files read as they are: anything may be in them)."""
    read_json = trial.read_json
    folder = os.path.join(trial.save, "init", key)
    rel = f"init/{key}"
    cands = read_json(os.path.join(folder, "candidates.json")) or {}
    align = read_json(os.path.join(folder, "alignment.json")) or {}
    report = align.get("report") if isinstance(align.get("report"), list) else []
    rows = {str(r.get("name")): r for r in report if isinstance(r, dict)}
    listed = cands.get("files") if isinstance(cands.get("files"), list) else []
    files = [str(f) for f in listed]
    if not files and os.path.isdir(os.path.join(folder, "candidates")):
        files = [
            f"candidates/{n}"
            for n in sorted(os.listdir(os.path.join(folder, "candidates")))
            if n.lower().endswith(IMAGE_SUFFIXES)
        ]
    for name in rows:  # a photo (source=image) is named by its own path
        if name not in files and os.path.isfile(os.path.join(folder, name)):
            files.append(name)
    chosen = align.get("chosen")
    candidates = []
    for name in files:
        row = rows.get(name)
        if row is None:
            state, reason = "unexamined", "not examined (the first usable image is taken)"
        else:
            state = "kept" if row.get("kept") else "dropped"
            reason = row.get("reason") or ""
            if chosen is not None and list(rows).index(name) == chosen:
                state = "chosen"
        candidates.append(
            {"src": f"{rel}/{name}", "name": os.path.basename(name), "state": state, "reason": reason}
        )
    camera = align.get("camera") if isinstance(align.get("camera"), dict) else {}
    timings = read_json(os.path.join(folder, "timings.json")) or {}
    record = {
        "key": key,
        "candidates": candidates,
        "timings": {k: v.get("seconds") for k, v in timings.items() if isinstance(v, dict)},
        "inversion": read_json(os.path.join(folder, "inversion.json")) or {},
        "camera": {k: camera[k] for k in ("yaw", "elevation") if k in camera},
        "prompt": cands.get("prompt"),
        "seeds": cands.get("seeds"),
    }
    for name in ("aligned", "comparison"):
        if os.path.isfile(os.path.join(folder, f"{name}.png")):
            record[name] = f"{rel}/{name}.png"
    return record

"""``portrait3d batch``: many portraits, one Ray task each — on this machine or on a Ray cluster.

    portrait3d batch prompts.txt --config configs/portrait3d.yaml --out runs/
    portrait3d batch prompts.jsonl --config configs/portrait3d.yaml --out runs/ --address auto --evaluate

Each prompt runs the whole pipeline (``launch.py --train``, then ``--export``; :mod:`portrait3d.run`)
in its own trial folder ``<out>/<config name>/<name>``, with one GPU where the cluster has GPUs,
else one CPU. A task whose worker dies (or whose ``launch.py`` is killed) is retried by Ray and
resumes its trial from ``ckpts/last.ckpt``; a prompt that fails for its own reasons is recorded with
its one-line error and the others go on. ``<out>/manifest.jsonl`` (rewritten atomically as tasks
finish) holds one entry per prompt; running the same command again skips finished prompts.
"""

from __future__ import annotations

import json
import os
import re
import socket
import sys
import time
import uuid
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

from gan_prior.checks import bounded_int
from gan_prior.files import atomic_path, read_json

from .cli import UsageError
from .launch_errors import PROMPT
from .run import (
    LaunchKilled,
    Trial,
    find_trial,
    require_threestudio,
    resolve_config,
    train_and_export,
    yaml_quote,
)
from .threestudio_env import REPO_ROOT, ThreestudioError

MANIFEST = "manifest.jsonl"
LOGS = "logs"  # <out>/logs/<name>.log: launch.py's output, every attempt appended
JSONL_KEYS = ("prompt", "name", "seed", "overrides")
# the manifest's fields, in the order a line shows them (portrait3d report reads them)
FIELDS = (
    "name",
    "status",
    "prompt",
    "seed",
    "trial",
    "error",
    "times",
    "peak_memory_mb",
    "node",
    "attempts",
    "resumed_from_step",
    "files",
    "log",
    "started",
    "inputs",
)
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
# environment a worker needs on another node (a local cluster inherits the driver's anyway)
FORWARDED_ENV = (
    "THREESTUDIO_ROOT",
    "PORTRAIT3D_",
    "HF_",
    "HUGGINGFACE_",
    "TRANSFORMERS_",
    "WANDB_MODE",
)


@dataclass
class Job:
    """One line of the prompt file."""

    prompt: str
    name: str
    seed: int
    overrides: List[str] = field(default_factory=list)
    line: int = 0

    def launch_overrides(self, common: Sequence[str]) -> List[str]:
        """threestudio overrides: the batch's, then this prompt's (which win)."""
        return [
            f"{PROMPT}={yaml_quote(self.prompt)}",
            f"seed={self.seed}",
            *common,
            *self.overrides,
        ]

    def inputs(self, config: str, common: Sequence[str]) -> dict:
        """What makes a trial: a finished or failed entry with other inputs is run again."""
        return {"config": config, "overrides": self.launch_overrides(common)}


def slug(prompt: str) -> str:
    """A folder name from a prompt: letters, digits and ``_`` (at most 80 characters)."""
    return re.sub(r"[^A-Za-z0-9]+", "_", prompt).strip("_")[:80].strip("_") or "prompt"


def _overrides(value, where: str) -> List[str]:
    if value is None:
        return []
    if isinstance(value, dict):
        return [
            f"{k}={json.dumps(v) if isinstance(v, (list, dict, bool)) or v is None else v}"
            for k, v in value.items()
        ]
    if isinstance(value, list) and all(isinstance(v, str) and "=" in v for v in value):
        return list(value)
    raise UsageError(f'{where}: "overrides" must be an object {{"key": value}} or a list of "key=value"')


def read_prompts(path: str, default_seed: int = 0) -> List[Job]:
    """Jobs from a text file (one prompt a line) or JSONL (``prompt``, optional ``seed``, ``name``,
    ``overrides``); empty lines and ``#`` comments are skipped. Raises UsageError naming the line."""
    if not os.path.isfile(path):
        raise UsageError(f'{path}: no such prompt file (one prompt a line, or JSONL with "prompt")')
    jobs: List[Job] = []
    with open(path, encoding="utf-8") as f:
        for i, raw in enumerate(f, 1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            where = f"{path}:{i}"
            if line.startswith("{"):
                try:
                    entry = json.loads(line)
                except ValueError as e:
                    raise UsageError(f"{where}: not valid JSON ({e.msg}); one JSON object a line") from None
                unknown = sorted(set(entry) - set(JSONL_KEYS))
                if unknown:
                    raise UsageError(
                        f"{where}: unknown key {unknown[0]!r}; a line may have {', '.join(JSONL_KEYS)}"
                    )
                prompt = entry.get("prompt")
                if not isinstance(prompt, str) or not prompt.strip():
                    raise UsageError(f'{where}: no "prompt" (a non-empty string)')
                seed = entry.get("seed", default_seed)
                if not isinstance(seed, int) or isinstance(seed, bool):
                    raise UsageError(f'{where}: "seed" must be an integer, not {seed!r}')
                name = entry.get("name") or slug(prompt)
                job = Job(prompt.strip(), str(name), seed, _overrides(entry.get("overrides"), where), i)
            else:
                job = Job(line, slug(line), default_seed, [], i)
            if not NAME_RE.match(job.name):
                raise UsageError(
                    f"{where}: name {job.name!r} is not a folder name; use letters, digits, . _ -"
                )
            jobs.append(job)
    if not jobs:
        raise UsageError(f"{path}: no prompts (empty lines and # comments are skipped)")
    seen: Dict[str, int] = {}
    for job in jobs:
        if job.name in seen:
            raise UsageError(
                f"{path}:{job.line}: name {job.name!r} is also line {seen[job.name]}'s; give each "
                'prompt its own "name" (JSONL) or remove the duplicate'
            )
        seen[job.name] = job.line
    return jobs


# ---------------------------------------------------------------------------------------- manifest
def read_manifest(out: str) -> Dict[str, dict]:
    """``<out>/manifest.jsonl`` by name ({} when there is none); a later line for the same name
    replaces an earlier one. Raises :class:`UsageError` naming a line that is not a JSON object."""
    path = os.path.join(out, MANIFEST)
    entries: Dict[str, dict] = {}
    if not os.path.isfile(path):
        return entries
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
            except ValueError:
                entry = None
            if not isinstance(entry, dict):
                raise UsageError(
                    f"{path}:{i} is not a JSON object; fix or delete that line (or the file, to start "
                    "the bookkeeping again: finished trials are found again)"
                )
            entries[str(entry.get("name") or entry.get("trial") or entry.get("prompt") or i)] = entry
    return entries


def write_manifest(out: str, entries: Sequence[dict]) -> None:
    """All entries, one JSON object a line, replacing the file atomically."""
    path = os.path.join(out, MANIFEST)
    with atomic_path(path, ".jsonl") as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            for e in entries:
                ordered = {
                    **{k: e[k] for k in FIELDS if k in e},
                    **{k: v for k, v in sorted(e.items())},
                }
                f.write(json.dumps(ordered) + "\n")


def _relative(out: str, path: str) -> str:
    return os.path.relpath(path, out)


def _files(out: str, trial: Trial) -> Dict[str, List[str]]:
    return {k: [_relative(out, p) for p in v] for k, v in trial.files().items()}


def finished(out: str, entry: Optional[dict]) -> bool:
    """A ``done`` entry whose trial finished its export and whose listed files are still on disk."""
    if not entry or entry.get("status") != "done" or not entry.get("trial"):
        return False
    stages = read_json(Trial(os.path.join(out, entry["trial"])).stages) or {}
    listed = [p for kind in (entry.get("files") or {}).values() for p in kind]
    return "export" in stages and all(os.path.isfile(os.path.join(out, p)) for p in listed)


# ---------------------------------------------------------------------------------------- the task
def run_prompt(job: dict, config: str, common: Sequence[str], out: str, batch_id: str) -> dict:
    """One prompt on a Ray worker: the pipeline in its fixed trial folder; returns its manifest
    fields. Raises :class:`LaunchKilled` (Ray retries it) when launch.py is killed."""
    node = socket.gethostname()
    log = os.path.join(out, LOGS, f"{job['name']}.log")
    os.makedirs(os.path.dirname(log), exist_ok=True)
    header = f"[portrait3d batch {batch_id}]"
    with open(log, "a", encoding="utf-8") as f:
        # on a line of its own (a killed run's last line may be an unfinished progress bar)
        f.write(f"\n{header} attempt on {node} at {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
    with open(log, encoding="utf-8", errors="replace") as f:
        attempts = sum(line.startswith(header) for line in f)
    stats: dict = {}
    record = {"node": node, "attempts": attempts, "log": _relative(out, log)}
    try:
        root = require_threestudio(node=node)
        trial = train_and_export(
            config,
            Job(**job).launch_overrides(common),
            out,
            root,
            log,
            tag=job["name"],
            stats=stats,
        )
    except LaunchKilled:
        raise
    except (UsageError, ThreestudioError) as e:
        trial = find_trial(out, job["name"])
        return {
            **record,
            "status": "failed",
            "error": str(e),
            "times": stats.get("times", {}),
            "peak_memory_mb": stats.get("peak_memory_mb"),
            "trial": _relative(out, trial.folder) if trial else None,
        }
    return {
        **record,
        "status": "done",
        "error": None,
        "trial": _relative(out, trial.folder),
        "times": stats["times"],
        "peak_memory_mb": stats.get("peak_memory_mb"),
        "resumed_from_step": stats.get("resumed_from_step"),
        "files": _files(out, trial),
    }


def worker_runtime_env() -> dict:
    """Ray runtime_env for the workers: this checkout first on their path, and the project's
    environment variables (a cluster's workers do not inherit the driver's)."""
    env = {k: v for k, v in os.environ.items() if k.startswith(FORWARDED_ENV)}
    env["PYTHONPATH"] = os.pathsep.join(
        [REPO_ROOT] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else [])
    )
    return {"env_vars": env}


def _start_ray(address: Optional[str], workers: Optional[int]) -> bool:
    """Connect to (``address``) or start an embedded Ray; True when this call started it."""
    try:
        import ray
    except ImportError:
        raise UsageError(
            "ray is not installed: pip install -r requirements.txt (it pins ray[default])"
        ) from None
    if ray.is_initialized():
        return False
    try:
        if address:
            ray.init(address=address, runtime_env=worker_runtime_env(), log_to_driver=False)
        else:
            ray.init(
                num_cpus=workers,
                include_dashboard=False,
                runtime_env=worker_runtime_env(),
                log_to_driver=False,
            )
    except (ConnectionError, RuntimeError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UsageError(
            f"--address {address}: cannot connect to a Ray cluster ({first}); start one with "
            "`ray start --head`, or omit --address to run on this machine"
        ) from None
    return True


# ---------------------------------------------------------------------------------------- the driver
class Progress:
    """The terminal's view of the job: a bar over the prompts with done / running / failed and an ETA."""

    def __init__(self, total: int, done: int, enabled: bool = True):
        from tqdm import tqdm

        self.bar = tqdm(
            total=total,
            initial=done,
            unit="portrait",
            desc="batch",
            disable=not enabled,
            dynamic_ncols=True,
            smoothing=0,
        )
        self.failed = 0
        self.running = 0
        self.tty = sys.stderr.isatty()

    def update(self, advanced: int = 0) -> None:
        """Show the counts (and move the clock and ETA: every call on a terminal, else on a change)."""
        postfix = f"running {self.running}, failed {self.failed}"
        if advanced or postfix != getattr(self.bar, "postfix", None) or self.tty:
            self.bar.set_postfix_str(postfix, refresh=False)
            self.bar.update(advanced)
            self.bar.refresh()

    def write(self, line: str) -> None:
        self.bar.write(line, file=sys.stderr)

    def close(self) -> None:
        self.bar.close()


def run_batch(
    jobs: Sequence[Job],
    config: str,
    common: Sequence[str],
    out: str,
    address: Optional[str] = None,
    workers: Optional[int] = None,
    retries: int = 3,
    retry_failed: bool = False,
    progress: bool = True,
) -> List[dict]:
    """Run every unfinished prompt; returns the manifest entries (input order)."""
    out = os.path.abspath(out)
    os.makedirs(out, exist_ok=True)
    previous = read_manifest(out)
    entries: Dict[str, dict] = {}
    todo: List[Job] = []
    skipped_failed = 0
    for job in jobs:
        inputs = job.inputs(config, common)
        old = previous.get(job.name)
        same = bool(old) and old.get("inputs") == inputs
        if old and not same and old.get("trial") and os.path.isdir(os.path.join(out, old["trial"])):
            raise UsageError(
                f"name {job.name!r} (line {job.line}): its trial {os.path.join(out, old['trial'])} "
                "was made from other inputs (prompt, seed, config or overrides); give this prompt "
                'another "name" or remove that folder'
            )
        base = {"prompt": job.prompt, "name": job.name, "seed": job.seed, "inputs": inputs}
        if same and finished(out, old):
            entries[job.name] = {**old, **base}
        elif same and old.get("status") == "failed" and not retry_failed:
            entries[job.name] = {**old, **base}
            skipped_failed += 1
        else:
            entries[job.name] = {
                **base,
                "status": "pending",
                "error": None,
                "trial": (old or {}).get("trial"),
            }
            todo.append(job)
    done_before = sum(e["status"] == "done" for e in entries.values())
    note = (
        f" ({skipped_failed} failed earlier with the same inputs: --retry-failed runs them again)"
        if skipped_failed
        else ""
    )
    if not todo:
        print(
            f"nothing to do: {done_before} of {len(jobs)} prompts done in {out}{note}",
            file=sys.stderr,
        )
        if list(previous) != list(entries) or any(previous.get(k) != v for k, v in entries.items()):
            write_manifest(out, list(entries.values()))
        return list(entries.values())
    if address is None:  # on this machine: check the set-up before starting anything
        require_threestudio()
    write_manifest(out, list(entries.values()))

    import ray

    started = _start_ray(address, workers)
    try:
        gpus = ray.cluster_resources().get("GPU", 0)
        capacity = int(gpus or ray.cluster_resources().get("CPU", 1))
        slots = max(1, min(workers or capacity, len(todo)))
        task = ray.remote(run_prompt).options(
            num_gpus=1 if gpus else 0,
            num_cpus=1,
            max_retries=retries,
            retry_exceptions=[LaunchKilled],
            name="portrait3d-batch",
        )
        batch_id = uuid.uuid4().hex[:8]
        print(
            f"{len(todo)} of {len(jobs)} prompts to run on {'GPU' if gpus else 'CPU'} workers "
            f"({slots} at a time; {done_before} done{note}); manifest: {os.path.join(out, MANIFEST)}",
            file=sys.stderr,
        )
        bar = Progress(len(jobs), done_before, progress)
        bar.failed = sum(e["status"] == "failed" for e in entries.values())
        queue, running = list(todo), {}
        try:
            while queue or running:
                if queue and len(running) < slots:
                    while queue and len(running) < slots:
                        job = queue.pop(0)
                        ref = task.remote(job.__dict__, config, list(common), out, batch_id)
                        running[ref] = job
                        entries[job.name].update(status="running", started=time.strftime("%Y-%m-%dT%H:%M:%S"))
                    write_manifest(out, list(entries.values()))
                bar.running = len(running)
                bar.update()
                ready, _ = ray.wait(list(running), num_returns=1, timeout=2.0)
                for ref in ready:
                    job = running.pop(ref)
                    try:
                        result = ray.get(ref)
                    except Exception as e:  # retries used up: the worker died, or launch.py was killed
                        result = {"status": "failed", "error": _task_error(e, retries)}
                    entries[job.name].update(result)
                    entry = entries[job.name]
                    if entry["status"] == "done":
                        took = sum(entry.get("times", {}).values())
                        again = (
                            f", resumed from step {entry['resumed_from_step']}"
                            if entry.get("resumed_from_step") is not None
                            else ""
                        )
                        bar.write(f"done    {job.name} ({took:.0f} s on {entry.get('node')}{again})")
                    else:
                        bar.failed += 1
                        bar.write(f"failed  {job.name}: {entry['error']}")
                    bar.running = len(running)
                    bar.update(1 if entry["status"] == "done" else 0)
                    write_manifest(out, list(entries.values()))
        except KeyboardInterrupt:
            for ref, job in running.items():
                ray.cancel(ref, force=True)
                entries[job.name].update(status="pending")
            write_manifest(out, list(entries.values()))
            raise
        finally:
            bar.close()
    finally:
        if started:
            ray.shutdown()
    return list(entries.values())


def _task_error(e: Exception, retries: int) -> str:
    """One line for a task Ray gave up on: launch.py killed every time, the worker dead every time,
    or an unexpected exception in the task (its last line)."""
    import ray.exceptions as rx

    if isinstance(e, rx.RayTaskError):
        cause = getattr(e, "cause", None)
        if isinstance(cause, LaunchKilled):
            return f"{cause} (tried {retries + 1} times)"
        text = str(cause) if cause is not None else str(e)
        last = [line for line in text.strip().splitlines() if line.strip()]
        return f"{type(cause or e).__name__}: {last[-1] if last else ''}"
    first = (str(e).strip().splitlines() or [""])[0]
    return f"its worker died {retries + 1} times ({type(e).__name__}: {first[:200]})"


def cmd_batch(args) -> int:
    config = resolve_config(args.config)
    for o in args.overrides:
        if "=" not in o:
            raise UsageError(
                f"{o!r}: overrides are key=value (threestudio's syntax), e.g. system.refine.steps=100"
            )
    jobs = read_prompts(args.prompts, args.seed)
    if args.evaluate:  # its options are checked before the portraits are made
        from .evaluate import check_options

        check_options(args.clip, args.inception)
    entries = run_batch(
        jobs,
        config,
        args.overrides,
        args.out,
        args.address,
        args.workers,
        args.retries,
        args.retry_failed,
        progress=not args.no_progress,
    )
    failed = [e for e in entries if e["status"] != "done"]
    if args.evaluate:
        from .evaluate import evaluate_runs, print_summary

        print_summary(evaluate_runs(args.out, args.clip, args.inception))
    if failed:
        print(
            f"{len(failed)} of {len(entries)} prompts failed ({', '.join(e['name'] for e in failed[:5])}"
            f"{', ...' if len(failed) > 5 else ''}); their errors are in {os.path.join(args.out, MANIFEST)}",
            file=sys.stderr,
        )
        return 1
    print(f"{len(entries)} portraits in {os.path.abspath(args.out)} ({MANIFEST})")
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser(
        "batch",
        help="many portraits on Ray (this machine or a cluster), with a manifest",
        description=__doc__.split("\n\n")[0],
    )
    p.add_argument("prompts", help="a text file (one prompt a line) or JSONL (prompt, seed, name, overrides)")
    p.add_argument("--config", required=True, help="a threestudio config, e.g. configs/portrait3d.yaml")
    p.add_argument("--out", default="runs", help="folder for the trial folders, logs/ and manifest.jsonl")
    p.add_argument(
        "--workers",
        type=bounded_int(1),
        default=None,
        help="prompts at a time (default: the cluster's GPUs, or CPUs without GPUs)",
    )
    p.add_argument(
        "--address",
        default=None,
        help="a running Ray cluster: auto, or ray://host:10001 (default: start Ray on this machine)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the prompts that give none")
    p.add_argument("--retries", type=bounded_int(0), default=3, help="retries of a prompt whose worker dies")
    p.add_argument(
        "--retry-failed",
        action="store_true",
        help="run again the prompts that failed earlier with the same inputs",
    )
    p.add_argument(
        "--evaluate",
        action="store_true",
        help="then the paper's §5.2 metrics over the set (as `portrait3d evaluate OUT`)",
    )
    p.add_argument(
        "--clip",
        default=None,
        help="--evaluate: CLIP model (default: the config's system.evaluation.clip_model)",
    )
    p.add_argument(
        "--inception",
        default=None,
        help="--evaluate: FID Inception weights (pt_inception-2015-12-05-6726825d.pth) for FID/KID",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar (logs)")
    p.add_argument("overrides", nargs="*", help="config overrides for every prompt, key=value")
    p.set_defaults(func=cmd_batch)

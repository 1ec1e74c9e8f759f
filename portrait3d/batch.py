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

import os
import shlex
import socket
import sys
import time
import uuid
from typing import Dict, List, Optional, Sequence

from gan_prior.checks import bounded_int
from gan_prior.files import require_output_folder

from .batch_metrics import check_options, evaluate_runs, print_summary
from .errors import LaunchKilled, UsageError
from .manifest import MANIFEST, finished, read_manifest, write_manifest
from .prompt_configs import check_prompt_configs
from .prompt_file import MAX_SEED, Job, check_batch_overrides, read_prompts
from .run import require_threestudio, resolve_config, train_and_export
from .threestudio_env import REPO_ROOT, ThreestudioError
from .trial import Trial, find_trial

LOGS = "logs"  # <out>/logs/<name>.log: launch.py's output, every attempt appended
# environment a worker needs on another node (a local cluster inherits the driver's anyway)
FORWARDED_ENV = (
    "THREESTUDIO_ROOT",
    "PORTRAIT3D_",
    "HF_",
    "HUGGINGFACE_",
    "TRANSFORMERS_",
    "WANDB_MODE",
)


def _relative(out: str, path: str) -> str:
    return os.path.relpath(path, out)


def _files(out: str, trial: Trial) -> Dict[str, List[str]]:
    return {k: [_relative(out, p) for p in v] for k, v in trial.files().items()}


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
    prompts: str = "the prompt file",
) -> List[dict]:
    """Run every unfinished prompt; returns this prompt file's manifest entries (input order). The
    manifest keeps the entries of other prompt files run into the same ``out`` (merged by name).
    Their configs are checked first (:mod:`.prompt_configs`; an error names ``prompts``' line)."""
    out = os.path.abspath(out)
    previous = read_manifest(out)
    entries: Dict[str, dict] = dict(previous)  # earlier batches' prompts stay in the bookkeeping
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
    mine = [entries[job.name] for job in jobs]  # this prompt file's entries (the dicts are shared)
    done_before = sum(e["status"] == "done" for e in mine)
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
        return mine
    if address is None:  # on this machine: check the set-up before starting anything
        require_threestudio()
    check_prompt_configs(prompts, config, todo, common, progress=progress)  # before anything starts
    os.makedirs(out, exist_ok=True)
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
        bar.failed = sum(e["status"] == "failed" for e in mine)
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
    return [entries[job.name] for job in jobs]


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
    check_batch_overrides(args.overrides)
    try:
        require_output_folder(args.out)
    except ValueError as e:
        raise UsageError(str(e)) from None
    jobs = read_prompts(args.prompts, args.seed)
    if args.evaluate:  # its options are checked before the portraits are made
        check_options(args.clip, args.inception, args.out, args.overwrite, out_option="--out")
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
        prompts=args.prompts,
    )
    failed = [e for e in entries if e["status"] != "done"]
    if args.evaluate:
        print_summary(evaluate_runs(args.out, args.clip, args.inception, args.overwrite))
    # the page that shows them all (README: Look at the results)
    print(
        f"all of them on one page: portrait3d gallery {shlex.quote(args.out)}  (then open {args.out}/index.html)"
    )
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
    p.add_argument(
        "--seed", type=bounded_int(0, MAX_SEED), default=0, help="seed of the prompts that give none"
    )
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
    p.add_argument("--overwrite", action="store_true", help="--evaluate: replace OUT's metrics.json/.md/.csv")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (logs)")
    p.add_argument("overrides", nargs="*", help="config overrides for every prompt, key=value")
    p.set_defaults(func=cmd_batch)

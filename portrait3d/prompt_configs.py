"""``portrait3d batch``'s look at every prompt's config before anything starts.

Each prompt's config is composed as threestudio's ``launch.py`` composes it (``utils/config.py``
``load_config``: the config file, the batch's overrides, then the line's) and checked for what needs
no file: the system's ``check_settings`` (the extension's ``system/config_check.py``: misspelt keys
and component names, text where a number belongs, non-finite numbers, loss weights, sizes) and
``check_launch_settings`` (the cameras against the renderer's depth window, Lightning's loop
settings), the top-level keys and the data module's settings. What reads files (checkpoints, models, photos) is
checked by each run's own start-up on its worker, whose files may differ from this machine's.

The checks run in a child process (``python -m portrait3d.prompt_configs``), so that the batch's
driver never imports threestudio (whose imports may open a CUDA context that would stay for the
whole batch) and builds nothing: ``${p3d_tiny:NAME}`` resolves to the tiny model's folder, unbuilt.
Without threestudio on this machine, each run checks its own config when it starts.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import tempfile
from typing import Dict, List, Optional, Sequence, Tuple

from .errors import UsageError
from .launch_errors import did_you_mean, one_line
from .prompt_file import Job
from .threestudio_env import ThreestudioError, find_threestudio, load_extension

MIN_SETS_FOR_PROGRESS = 20  # distinct override sets; fewer are checked in a few seconds


# ----------------------------------------------------------------------------- in the child
def compose(base, overrides: Sequence[str]):
    """``base`` (the loaded config file) with ``overrides``, resolved: the config ``launch.py``
    would run, without ``load_config``'s last step (``ExperimentConfig``, which makes the trial folder)."""
    from omegaconf import OmegaConf

    parsed = []
    for o in overrides:
        try:
            parsed.append(OmegaConf.from_cli([o]))
        except Exception as e:  # noqa: BLE001 - YAML or grammar errors of one override
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise ValueError(f"override {o[:80]!r} cannot be read ({first})") from None
    cfg = OmegaConf.merge(base, *parsed)
    OmegaConf.resolve(cfg)
    return cfg


def check_config(cfg, threestudio) -> None:
    """``cfg`` (composed) as far as it can be checked without a file; raises on the first problem."""
    from threestudio.utils.config import ExperimentConfig, parse_structured

    names = [f.name for f in dataclasses.fields(ExperimentConfig)]
    for key in cfg:
        if key not in names:
            raise ValueError(f"{key} is not a setting of threestudio's config{did_you_mean(str(key), names)}")
    for option in ("data_type", "system_type"):  # (the extension's check, loaded with threestudio)
        load_extension().system.config_check.require_registered(option, cfg[option], threestudio.__modules__)
    data = threestudio.find(cfg.data_type)(cfg.data)  # a data module's constructor parses its settings only
    system = threestudio.find(cfg.system_type)
    settings = parse_structured(system.Config, cfg.system)
    if hasattr(system, "check_settings"):
        system.check_settings(settings)
    if hasattr(system, "check_launch_settings"):  # the cameras and Lightning's loop, as setup checks them
        system.check_launch_settings(settings, data.cfg, cfg.get("trainer") or {})


def error_line(e: Exception) -> str:
    """One line for a failed check, naming the key where the error knows it."""
    line = one_line(e)
    if line is None:
        line = (str(e).strip().splitlines() or [type(e).__name__])[0]
        key = getattr(e, "full_key", None)  # OmegaConf's errors
        if key and str(key) not in line:
            line = f"{key}: {line}"
    return line


def check_sets(config: str, sets: Sequence[Sequence[str]], progress: bool) -> List[Optional[str]]:
    """For each set of ``launch.py`` overrides, None or the line saying what is wrong."""
    from omegaconf import OmegaConf
    from tqdm import tqdm

    from gan_prior.tiny_models import tiny_model_folder

    from .threestudio_env import import_threestudio

    threestudio = import_threestudio()
    OmegaConf.register_new_resolver("p3d_tiny", tiny_model_folder, replace=True)  # nothing built
    base = OmegaConf.load(config)
    results: List[Optional[str]] = []
    quiet = not progress or len(sets) < MIN_SETS_FOR_PROGRESS
    for overrides in tqdm(sets, desc="checking the prompts' configs", disable=quiet, file=sys.stderr):
        try:
            check_config(compose(base, overrides), threestudio)
            results.append(None)
        except Exception as e:  # noqa: BLE001 - any failure here is the config's; its run would fail so
            results.append(error_line(e))
    return results


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Child: the request (JSON: config, sets, progress) on stdin, the answer written to ``argv[0]``."""
    answer_path = (argv if argv is not None else sys.argv[1:])[0]
    request = json.load(sys.stdin)
    try:
        answer = {"results": check_sets(request["config"], request["sets"], request["progress"])}
    except (ThreestudioError, ImportError) as e:  # e.g. a machine that only submits to a cluster
        answer = {"unavailable": str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__}
    with open(answer_path, "w", encoding="utf-8") as f:
        json.dump(answer, f)
    return 0


# ----------------------------------------------------------------------------- in the driver
def check_prompt_configs(
    prompts: str,
    config: str,
    jobs: Sequence[Job],
    common: Sequence[str],
    root: Optional[str] = None,
    progress: bool = True,
) -> bool:
    """Every prompt's config checked before the batch starts, each distinct set of a line's
    overrides once, in a child process. Raises one :class:`UsageError` naming the first bad line
    (the config itself when that line adds no override) and the other bad lines; False when the
    configs could not be checked here (no threestudio: the runs check their own)."""
    try:
        root = root or find_threestudio()
    except ThreestudioError:
        print(
            "threestudio is not on this machine: each prompt's config is checked when its run starts",
            file=sys.stderr,
        )
        return False
    sets: Dict[Tuple[str, ...], int] = {}
    requests: List[List[str]] = []
    for job in jobs:
        key = tuple(job.overrides)
        if key not in sets:
            sets[key] = len(requests)
            requests.append(job.launch_overrides(common))
    with tempfile.TemporaryDirectory(prefix="portrait3d-configs-") as tmp:
        answer_path = os.path.join(tmp, "answer.json")
        proc = subprocess.run(
            [sys.executable, "-m", "portrait3d.prompt_configs", answer_path],
            input=json.dumps({"config": config, "sets": requests, "progress": progress}),
            text=True,
            stdout=subprocess.DEVNULL,
            env={**os.environ, "THREESTUDIO_ROOT": root},
        )
        try:
            with open(answer_path, encoding="utf-8") as f:
                answer = json.load(f)
        except (OSError, ValueError):
            answer = {"unavailable": f"the check ended with exit code {proc.returncode}"}
    if "unavailable" in answer:
        print(
            f"the prompts' configs could not be checked here ({answer['unavailable']}); each run checks "
            "its own when it starts",
            file=sys.stderr,
        )
        return False
    bad = [(job, answer["results"][sets[tuple(job.overrides)]]) for job in jobs]
    bad = [(job, message) for job, message in bad if message is not None]
    if bad:  # a line without overrides of its own first: the config itself fails
        job, message = next(((j, m) for j, m in bad if not j.overrides), bad[0])
        if not job.overrides:
            where = f"{config} with the batch's overrides" if common else config
        else:
            where = f"{prompts}:{job.line}"
        others = [str(j.line) for j, _ in bad if j is not job]
        more = (
            f" (lines {', '.join(others[:10])}{', ...' if len(others) > 10 else ''} also fail)"
            if others
            else ""
        )
        raise UsageError(f"{where}: {message}{more}; nothing was started")
    return True


if __name__ == "__main__":
    sys.exit(main())

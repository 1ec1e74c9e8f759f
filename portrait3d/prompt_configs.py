"""``portrait3d batch``'s look at every prompt's config before anything starts.

Each prompt's config is composed as threestudio's ``launch.py`` composes it (``utils/config.py``
``load_config``: the config file, the batch's overrides, then the line's) and checked for what needs
no file: the system's ``check_settings`` (the extension's ``system/config_check.py``: misspelt keys
and component names, text where a number belongs, non-finite numbers, loss weights, sizes), the
top-level keys and the data module's settings. What reads files (checkpoints, models, photos) is
checked by each run's own start-up on its worker, whose files may differ from this machine's.
Needs threestudio here; without it each run checks its own config when it starts.
"""

from __future__ import annotations

import dataclasses
from typing import Dict, List, Optional, Sequence, Tuple

from .errors import UsageError
from .launch_errors import did_you_mean, one_line
from .prompt_file import Job
from .threestudio_env import ThreestudioError, find_threestudio, import_threestudio


def compose(config: str, overrides: Sequence[str]):
    """The config ``launch.py`` would run: ``load_config`` without its last step (building
    ``ExperimentConfig``, which makes the trial folder)."""
    from omegaconf import OmegaConf

    cfg = OmegaConf.merge(OmegaConf.load(config), OmegaConf.from_cli(list(overrides)))
    OmegaConf.resolve(cfg)
    return cfg


def check_config(cfg, threestudio) -> None:
    """``cfg`` (composed) as far as it can be checked without a file; raises on the first problem."""
    from threestudio.utils.config import ExperimentConfig, parse_structured

    names = [f.name for f in dataclasses.fields(ExperimentConfig)]
    for key in cfg:
        if key not in names:
            raise ValueError(f"{key} is not a setting of threestudio's config{did_you_mean(str(key), names)}")
    threestudio.find(cfg.data_type)(cfg.data)  # a data module's constructor parses its settings only
    system = threestudio.find(cfg.system_type)
    settings = parse_structured(system.Config, cfg.system)
    if hasattr(system, "check_settings"):
        system.check_settings(settings)


def _error_line(e: Exception) -> str:
    if isinstance(e, KeyError) and e.args and isinstance(e.args[0], str):  # threestudio.find
        return f"{e.args[0]!r} is not a registered threestudio component"
    line = one_line(e)
    return line if line is not None else (str(e).strip().splitlines() or [type(e).__name__])[0]


def check_prompt_configs(
    prompts: str, config: str, jobs: Sequence[Job], common: Sequence[str], root: Optional[str] = None
) -> bool:
    """Every prompt's config checked (:func:`check_config`) before the batch starts: the config with
    the batch's overrides once, then each distinct set of a line's overrides. Raises one
    :class:`UsageError` naming the first bad line (and how many others there are); False when
    threestudio is not on this machine (nothing checked)."""
    try:
        threestudio = import_threestudio(root or find_threestudio())
    except (ThreestudioError, ImportError):  # e.g. a machine that only submits to a cluster
        return False
    first = jobs[0]
    try:
        check_config(
            compose(config, Job(first.prompt, first.name, first.seed).launch_overrides(common)), threestudio
        )
    except Exception as e:  # noqa: BLE001 - any failure here is the config's; the run would fail the same
        where = "with the batch's overrides" if common else ""
        raise UsageError(f"{config}{' ' + where if where else ''}: {_error_line(e)}") from None
    bad: List[Tuple[int, str]] = []
    checked: Dict[Tuple[str, ...], Optional[str]] = {(): None}
    for job in jobs:
        key = tuple(job.overrides)
        if key not in checked:
            try:
                check_config(compose(config, job.launch_overrides(common)), threestudio)
                checked[key] = None
            except Exception as e:  # noqa: BLE001
                checked[key] = _error_line(e)
        if checked[key] is not None:
            bad.append((job.line, checked[key]))
    if bad:
        line, message = bad[0]
        others = [str(n) for n, _ in bad[1:]]
        more = f" (lines {', '.join(others[:10])}{', ...' if len(others) > 10 else ''} too)" if others else ""
        raise UsageError(f"{prompts}:{line}: {message}{more}; nothing was started")
    return True

"""What a ``portrait3d-system`` config is checked for without building a component or reading a file:
every component registered, every key a setting of the component it configures, every number
finite, every loss weight one that threestudio's ``C()`` reads.

The system's ``configure`` runs these first (``Portrait3DSystem.check_settings``), before the checks
that read files and before the initialisation; ``portrait3d batch`` runs the same on each prompt's
config before anything starts (on a cluster the workers' files may differ from the driver's, so
what reads files waits for each run's own start-up).
"""

import dataclasses
import difflib
import math
import re
from typing import Any, Callable, Mapping

from omegaconf import OmegaConf
from omegaconf.errors import ValidationError

from portrait3d.launch_errors import did_you_mean

# the components whose section is checked by their own Config alone (the prompt processor, the
# guidance, the exporter and the initializer have checks of their own in the system's configure)
COMPONENTS = ("geometry", "material", "background", "renderer")
# every ``<name>_type`` option of the system, and its section ``<name>``
COMPONENT_OPTIONS = (
    "geometry",
    "material",
    "background",
    "renderer",
    "guidance",
    "prompt_processor",
    "exporter",
    "initializer",
)


def require_registered(option: str, value: str, registered: Mapping) -> None:
    """One clear line for a misspelt or unavailable component name ``option=value`` (threestudio's
    ``find``: a KeyError)."""
    if value not in registered:
        close = difflib.get_close_matches(value, list(registered), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else "; is its extension in custom/?"
        raise ValueError(f"{option}: {value!r} is not a registered threestudio component{hint}")


def check_registered_names(cfg: Any, registered: Mapping) -> None:
    """Every ``system.<component>_type`` of the system config ``cfg`` registered."""
    for name in COMPONENT_OPTIONS:
        require_registered(f"system.{name}_type", getattr(cfg, f"{name}_type"), registered)


def parse_section(kind: Any, cfg: Any, option: str, component: str = "") -> Any:
    """threestudio's ``parse_structured(kind, cfg)`` for the section ``option`` (of ``component``, a
    registered name): an unknown key or a value of the wrong type is one line naming
    ``option.<key>``; a non-finite number too."""
    from threestudio.utils.config import parse_structured

    if cfg is not None and not isinstance(cfg, Mapping) and not OmegaConf.is_dict(cfg):
        raise ValueError(f"{option}={cfg!r}: give a section of settings (key: value), not a value")
    try:
        parsed = parse_structured(kind, cfg or {})
    except TypeError as e:  # Config(**cfg): an unknown key
        m = re.search(r"unexpected keyword argument '(\w+)'", str(e))
        if not m:
            raise
        names = [f.name for f in dataclasses.fields(kind)]
        raise ValueError(
            f"{option}.{m.group(1)} is not a setting of {component or kind.__qualname__}"
            f"{did_you_mean(m.group(1), names)}"
        ) from None
    except ValidationError as e:  # e.g. text where a number belongs
        first = str(e).strip().splitlines()[0]
        raise ValueError(f"{option}.{e.full_key}: {first}") from None
    check_finite(OmegaConf.to_container(parsed, resolve=True), option)
    return parsed


def check_finite(tree: Any, where: str) -> None:
    """Every float in ``tree`` (plain dicts and lists) finite: a NaN or infinite setting is one line
    naming its key (``where`` the key of ``tree``)."""
    if isinstance(tree, Mapping):
        for key, value in tree.items():
            check_finite(value, f"{where}.{key}")
    elif isinstance(tree, (list, tuple)):
        for i, value in enumerate(tree):
            check_finite(value, f"{where}[{i}]")
    elif isinstance(tree, float) and not math.isfinite(tree):
        raise ValueError(f"{where}={tree}: give a finite number")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_loss_weights(loss: Mapping) -> None:
    """``system.loss.lambda_*``: a number, or a schedule threestudio's ``C()`` reads (utils/misc.py:
    ``[start_value, end_value, end_step]``, ``[start_step, start_value, end_value, end_step]``, or
    piecewise ``[start_step, v0, v1, step1, v2, step2, …]``); text such as ``nan`` or ``abc`` would
    fail only at the first training step, after the initialisation."""
    if OmegaConf.is_config(loss):
        loss = OmegaConf.to_container(loss, resolve=True)
    for key, value in (loss or {}).items():
        if not str(key).startswith("lambda_"):
            continue
        values = value if isinstance(value, (list, tuple)) else [value]
        length_ok = (
            not isinstance(value, (list, tuple))
            or len(value) in (3, 4)
            or (len(value) >= 6 and len(value) % 2 == 0)
        )
        if not length_ok or not all(_is_number(v) for v in values):
            raise ValueError(
                f"system.loss.{key}={value!r}: give a number, or a schedule [start_step, start_value, "
                "end_value, end_step] (threestudio's C())"
            )
        check_finite(list(values), f"system.loss.{key}")


def check_component_keys(cfg: Any, find: Callable[[str], Any]) -> None:
    """The sections of :data:`COMPONENTS` and ``system.initializer`` against their components'
    configs (``find``: threestudio.find); an initializer with ``check_keys`` checks its nested ones."""
    for name in COMPONENTS:
        kind = getattr(cfg, f"{name}_type")
        parse_section(find(kind).Config, getattr(cfg, name), f"system.{name}", kind)
    initializer = find(cfg.initializer_type)
    parsed = parse_section(initializer.Config, cfg.initializer, "system.initializer", cfg.initializer_type)
    if hasattr(initializer, "check_keys"):
        initializer.check_keys(parsed)


def check_optimizer_settings(optimizer: Mapping) -> None:
    """``system.optimizer``: learning rates (``args.lr``, ``params.<group>.lr``) numbers ≥ 0, and no
    group both whole and by part (``params.geometry.trigrids_8.lr=…`` on the command line nests a
    new ``geometry`` group beside the config's ``geometry.trigrids_8``: threestudio would then put
    those parameters in two groups)."""
    if OmegaConf.is_config(optimizer):
        optimizer = OmegaConf.to_container(optimizer, resolve=True)
    optimizer = optimizer or {}
    rates = [("system.optimizer.args.lr", (optimizer.get("args") or {}).get("lr", 0.0))]
    params = optimizer.get("params") or {}
    rates += [(f"system.optimizer.params.{k}.lr", (v or {}).get("lr", 0.0)) for k, v in params.items()]
    for key, lr in rates:
        if not _is_number(lr) or lr < 0:
            raise ValueError(f"{key}={lr!r}: give a learning rate ≥ 0")
    for group in params:
        parts = [k for k in params if str(k).startswith(f"{group}.")]
        if parts:
            raise ValueError(
                f"system.optimizer.params has {group!r} and {parts[0]!r}: an override such as "
                f"system.optimizer.params.{parts[0]}.lr=… makes a new {group!r} group (its dots nest); "
                "change that group's lr in the config file, or give all of system.optimizer.params"
            )


def check_timestep_range(guidance: Any, guidance_type: str) -> None:
    """``min_step_percent`` ≤ ``max_step_percent`` within [0, 1] where a guidance has them as numbers
    (threestudio samples ``t`` in ``[min, max] × 1000``: outside it fails at the first step, or
    indexes the noise schedule from its end)."""
    lo, hi = getattr(guidance, "min_step_percent", None), getattr(guidance, "max_step_percent", None)
    if _is_number(lo) and _is_number(hi) and not 0 <= lo <= hi <= 1:
        raise ValueError(
            f"system.guidance.min_step_percent={lo} and max_step_percent={hi} ({guidance_type}): give "
            "0 ≤ min ≤ max ≤ 1, fractions of the diffusion timesteps (the official 0.02 and 0.4)"
        )

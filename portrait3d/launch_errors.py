"""One line instead of a traceback for the mistakes people make with ``launch.py`` and our configs.

threestudio's ``launch.py`` lets every exception end in a traceback. :func:`install` wraps
``sys.excepthook`` so that, in ``launch.py`` only, these end in one ``[ERROR]`` line (exit code 1):

- a user-facing error raised by this project's own code (``ValueError``/``KeyError``/``FileNotFoundError``
  or ``gan_prior``'s errors whose innermost frame is in ``gan_prior`` or the extension): its message;
- the prompt not given or empty (OmegaConf: ``Missing mandatory value: tag`` / ``NoneType ... replace``);
- a misspelt config key: the key, with the closest valid names;
- our configs used where the extension is not installed (``p3d_tiny`` / ``p3d_tag`` resolvers, component names missing);
- a value of the wrong type for a typed key (OmegaConf's ``ValidationError``), an override that is not YAML;
- what launch.py's own set-up refuses (``trainer.*``, ``checkpoint.*``, ``seed``, the trial folder,
  ``resume=``) and what ``configure_optimizers`` refuses (``system.optimizer`` / ``system.scheduler``).
Anything else keeps its full traceback (a bug to report). A trial folder the failed run left empty
is removed; one with files records the failure (its line, step and stage) in its ``status.json``
(:mod:`portrait3d.trial`), so that the report, the gallery and ``portrait3d run`` say what failed.
Installed at interpreter start by the setup's ``.pth`` (see :mod:`portrait3d.stand_ins`) and by the
extension itself.
"""

from __future__ import annotations

import difflib
import os
import re
import shutil
import sys
import traceback
from typing import Optional

from .errors import TrialInUse

OUR_DIRS = ("gan_prior", os.path.join("custom", "threestudio-portrait3d"), "portrait3d")
OUR_COMPONENTS = ("portrait3d-", "pyramid-trigrid", "gan-prior-initializer")
PROMPT = "system.prompt_processor.prompt"
EMPTY_PROMPT = f'{PROMPT} is empty: give the text of the portrait, {PROMPT}="upper body photo, ..."'
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOT_INSTALLED = (
    "the Portrait3D extension is not installed in this threestudio checkout: run "
    f"`python {os.path.join(REPO_ROOT, 'install_extension.py')} .` here"
)


def _raised_by_us(exc: BaseException) -> bool:
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return False
    path = os.path.abspath(frames[-1].filename)
    return any(f"{os.sep}{d}{os.sep}" in path for d in OUR_DIRS)


def did_you_mean(key: str, names: list) -> str:
    """'; did you mean a, b?' (the close names), else '; valid keys: …'."""
    close = difflib.get_close_matches(key, names, n=3, cutoff=0.6)
    return f"; did you mean {', '.join(close)}?" if close else f"; valid keys: {', '.join(names)}"


def _closest_keys(exc) -> str:
    """', did you mean a, b?' for an OmegaConf unknown-key error, from the structured config's fields."""
    import dataclasses

    key = str(getattr(exc, "key", "") or "")
    obj = getattr(exc, "object_type", None)
    if not key or obj is None or not dataclasses.is_dataclass(obj):
        return ""
    return did_you_mean(key, [f.name for f in dataclasses.fields(obj)])


def _unexpected_keyword(exc: TypeError) -> Optional[str]:
    """threestudio's ``parse_structured`` builds ``Config(**cfg)``: an unknown key is a TypeError."""
    import dataclasses

    m = re.search(r"([\w.<>]+)\.__init__\(\) got an unexpected keyword argument '(\w+)'", str(exc))
    if not m:
        return None
    qualname, key = m.groups()
    tb, config = exc.__traceback__, None
    while tb is not None:
        for value in tb.tb_frame.f_locals.values():
            if isinstance(value, type) and dataclasses.is_dataclass(value) and value.__qualname__ == qualname:
                config = value
        tb = tb.tb_next
    if config is None:
        return None
    hint = did_you_mean(key, [f.name for f in dataclasses.fields(config)])
    return f"unknown config key {key!r} in {qualname}{hint}"


def _unreadable_yaml(exc: BaseException, first: str) -> str:
    """The override of ``launch.py``'s command line YAML cannot read, else the config file."""
    from omegaconf import OmegaConf

    for arg in sys.argv[1:]:
        if "=" in arg and not arg.startswith("-"):
            try:
                OmegaConf.from_cli([arg])
            except Exception:  # noqa: BLE001 - the one that fails
                return (
                    f"override {arg[:80]!r} is not valid YAML ({first}); close its brackets or quote its text"
                )
    return f"the config file is not valid YAML: {first}"


def one_line(exc: BaseException) -> Optional[str]:
    """The one-line message for ``exc``, or None to keep the traceback."""
    name, text = type(exc).__name__, str(exc)
    first = text.strip().splitlines()[0] if text.strip() else name
    if isinstance(exc, (MemoryError, RuntimeError)):
        from gan_prior.checks import is_out_of_memory  # torch is loaded in launch.py already

        if is_out_of_memory(exc):  # CPU too: torch's "DefaultCPUAllocator: can't allocate memory"
            return (
                f"out of memory ({name}); lower the render sizes (data.width/height, system.videos.resolution, "
                "samples per ray: system.videos.samples, system.refine.*_samples) or use a larger machine"
            )
    missing = name in ("MissingMandatoryValue", "InterpolationToMissingValueError")
    if missing and (getattr(exc, "full_key", None) in ("tag", PROMPT) or PROMPT in text):
        return f'{PROMPT} is not set: add {PROMPT}="upper body photo, portrait of ..." to the command'
    if name == "InterpolationResolutionError" and "'NoneType' object has no attribute 'replace'" in text:
        return EMPTY_PROMPT
    inner = exc.__cause__ or exc.__context__
    if name == "InterpolationResolutionError" and isinstance(inner, ValueError) and _raised_by_us(inner):
        return str(inner)  # one of our resolvers (${p3d_tag:...}, ${p3d_tiny:...}) refused its input
    if name == "InterpolationResolutionError" and isinstance(inner, TypeError):  # e.g. ${add:a,b}
        return (
            f"a config value computed from others failed ({inner}): an override gave text where a number "
            "belongs (e.g. system.refine.steps=nan, which trainer.max_steps adds up); give a number"
        )
    if name == "UnsupportedInterpolationType" and ("p3d_tiny" in text or "p3d_tag" in text):
        return NOT_INSTALLED
    if isinstance(exc, KeyError) and str(exc.args[0] if exc.args else "").startswith(OUR_COMPONENTS):
        if not _raised_by_us(exc):
            return f"{exc.args[0]!r} is not a registered component: {NOT_INSTALLED}"
    if isinstance(exc, TypeError) and "unexpected keyword argument" in text and _unexpected_keyword(exc):
        return _unexpected_keyword(exc)
    if name == "ConfigKeyError" and "not in" in first:
        where = getattr(exc, "full_key", None) or getattr(exc, "key", "?")
        return f"unknown config key {where!r}{_closest_keys(exc)}"
    if name == "ValidationError" and getattr(exc, "full_key", None):  # OmegaConf: a value of the wrong type
        return f"config key {exc.full_key!r}: {first}; give a value of that type"
    if type(exc).__module__.startswith("yaml"):  # an override (or the config file) that is not YAML
        return _unreadable_yaml(exc, first)
    from_us = _raised_by_us(exc) or type(exc).__module__.startswith(("gan_prior", "threestudio-portrait3d"))
    if from_us and isinstance(exc, (ValueError, KeyError, FileNotFoundError, OSError, RuntimeError)):
        return first.strip("'\"") if isinstance(exc, KeyError) else first  # str(KeyError) is quoted
    return _launch_step(exc, first)


# launch.py's own set-up (threestudio launch.py ``main``), by the call its frame was in: the settings
# a bad value there came from
LAUNCH_CALLS = (
    ("seed_everything(", "seed"),
    ("ModelCheckpoint(", "checkpoint"),
    ("Trainer(", "trainer"),
)


def _launch_step(exc: BaseException, first: str) -> Optional[str]:
    """One line for what launch.py's own set-up refused (Lightning's Trainer, the checkpoint
    callback, the seed, the trial folder, ``resume=``) or ``configure_optimizers`` did, naming the
    settings; None for anything else."""
    if not isinstance(exc, Exception):
        return None
    frames = traceback.extract_tb(exc.__traceback__)
    if any(f.name == "configure_optimizers" for f in frames):
        return f"system.optimizer / system.scheduler: {first}; check their name, args and params"
    cfg = _launch_locals(exc, "cfg")
    resume = getattr(cfg, "resume", None)
    if isinstance(exc, OSError) and resume and (exc.filename == resume or str(resume) in first):
        reason = exc.strerror or first
        return (
            f"resume={resume}: {reason}; give a trial's checkpoint, e.g. outputs/<name>/<tag>/ckpts/last.ckpt"
        )
    launch = [f for f in frames if os.path.basename(f.filename) == "launch.py" and f.name == "main"]
    if not launch:
        return None
    call = launch[-1].line or ""
    if "load_config(" in call and isinstance(exc, OSError):
        return (
            f"cannot make the trial folder {exc.filename}: {exc.strerror}; set exp_root_dir (and name, tag) "
            "to a folder you can write"
        )
    for pattern, section in LAUNCH_CALLS:
        if pattern in call:
            taken = re.search(r"multiple values for keyword argument '(\w+)'", first)
            if taken:
                key = taken.group(1)
                hint = " (--gpu picks the GPU)" if key in ("accelerator", "devices", "strategy") else ""
                return f"{section}.{key} is set by launch.py itself{hint}; remove it"
            if section == "seed":
                return f"seed={getattr(cfg, 'seed', '?')}: {first}; give a whole number from 0 to 4294967295"
            return (
                f"{section}.* ({'Lightning' if section == 'trainer' else 'the checkpoint callback'}): {first}"
            )
    return None


def _launch_locals(exc: BaseException, name: str):
    """The last local ``name`` along the traceback (launch.py's main() holds ``cfg`` and ``trainer``)."""
    tb, found = exc.__traceback__, None
    while tb is not None:
        value = tb.tb_frame.f_locals.get(name)
        found = value if value is not None else found
        tb = tb.tb_next
    return found


def _trial_dir(exc: BaseException) -> Optional[str]:
    """launch.py's ``cfg.trial_dir``: the first ``cfg`` along the traceback that has one (deeper
    frames have their own ``cfg``, e.g. threestudio's ``parse_structured(fields, cfg)``)."""
    tb = exc.__traceback__
    while tb is not None:
        found = getattr(tb.tb_frame.f_locals.get("cfg"), "trial_dir", None)
        if isinstance(found, str) and found:
            return found
        tb = tb.tb_next
    return None


def remove_empty_trial(exc: BaseException) -> None:
    """Remove the trial folder launch.py made for this run if the error left no file in it."""
    trial = _trial_dir(exc)
    if isinstance(trial, str) and os.path.isdir(trial):
        if not any(files for _, _, files in os.walk(trial)):
            shutil.rmtree(trial, ignore_errors=True)


def record_failure(exc: BaseException, line: str) -> None:
    """Record in the trial's ``status.json`` that this run failed, with ``line`` (the error a user
    saw), the step and the stage (:mod:`portrait3d.trial`)."""
    from .trial import Trial, is_trial, write_status  # only now: start-up stays cheap

    folder = _trial_dir(exc)
    if not folder or not is_trial(folder) or isinstance(exc, TrialInUse):
        return  # (a refused run never ran in the folder: its status is the earlier run's)
    trainer = _launch_locals(exc, "trainer")
    module = getattr(trainer, "lightning_module", None)
    step = getattr(module, "true_global_step", getattr(trainer, "global_step", None))
    record = Trial(folder).status_record()
    ours = record.get("state") == "running" and record.get("pid") == os.getpid()
    stage = record.get("stage") if ours else None
    if stage is None:
        args = set(sys.argv[1:])
        stage = "export" if "--export" in args else "test" if "--test" in args else "train"
    write_status(folder, "failed", stage=stage, step=step if isinstance(step, int) else None, error=line)


def error_line(exc: BaseException) -> str:
    """The last line of ``exc``'s traceback: ``TypeName: first line of its message``."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


def install() -> None:
    """Wrap ``sys.excepthook`` (idempotent); it acts only when the program is ``launch.py``."""
    if getattr(sys.excepthook, "_portrait3d", False):
        return
    previous = sys.excepthook

    def hook(exc_type, exc, tb):
        line = None
        if os.path.basename(sys.argv[0] if sys.argv else "") == "launch.py" and exc is not None:
            try:
                line = one_line(exc)
            except Exception:  # never hide the original error
                line = None
        if line is None:
            previous(exc_type, exc, tb)
        else:
            print(f"\n[ERROR] {line}", file=sys.stderr)  # on a line of its own, after any progress bar
            remove_empty_trial(exc)
        if exc is not None and os.path.basename(sys.argv[0] if sys.argv else "") == "launch.py":
            try:
                record_failure(exc, line or error_line(exc))
            except Exception:  # never hide the original error
                pass

    hook._portrait3d = True
    sys.excepthook = hook

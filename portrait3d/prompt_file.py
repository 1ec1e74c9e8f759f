"""A batch's prompt file: one prompt a line (text) or one JSON object a line (JSONL), checked whole
before anything starts (no Ray, no trial folder): every bad line is one :class:`UsageError` naming
the file and the line.

A prompt file may come from someone else, so nothing in it decides where files go or what is
loaded from where (those keys are the batch's own: :data:`BATCH_KEYS`), and nothing in it reaches
threestudio's config as anything but literal text: OmegaConf evaluates ``${…}`` in any string it
is given (``${oc.env:SECRET}`` put a secret into ``parsed.yaml`` and the report page), and
threestudio resolves, re-wraps and re-reads its config several times (``load_config``, then each
component's ``parse_structured``), so no escape survives every reader; text holding ``${`` is
refused with one line instead.
"""

from __future__ import annotations

import json
import os
import re
import stat
import unicodedata
from dataclasses import dataclass, field
from typing import Dict, List, Sequence

from .errors import UsageError
from .launch_errors import PROMPT
from .run import yaml_quote

JSONL_KEYS = ("prompt", "name", "seed", "overrides")
JSONL_SUFFIXES = (".jsonl", ".ndjson")
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")  # matched whole (fullmatch: no "abc\n")
MAX_FILE_BYTES = 16 << 20  # 16 MiB: about 100 000 prompts
MAX_PROMPT_CHARS = 2000  # CLIP reads 77 tokens; a longer prompt is a mistake (or an attack)
MAX_SEED = 2**32 - 1  # Lightning's seed_everything takes a 32-bit seed (it picks another beyond)
INTERPOLATION = "${"
# Override keys a prompt line may set: the run's settings. Everything else — where the trial goes
# (name, tag, exp_root_dir, use_timestamp, timestamp, trial_dir …), what it resumes from (resume:
# Lightning loads that file with weights_only=False), options of launch.py itself — is the batch's.
OVERRIDE_PREFIXES = ("system.", "trainer.", "data.", "checkpoint.")
OVERRIDE_KEYS = ("seed", "description")
# … and, inside those, the keys that still say where files go or which checkpoint is loaded
BATCH_KEYS = (
    "system.initializer.cache_dir",
    "system.weights",
    "trainer.default_root_dir",
    "trainer.resume_from_checkpoint",
    "checkpoint.dirpath",
    "checkpoint.filename",  # joined to the trial's ckpts/: "../../x" leaves it
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
        return [f"{PROMPT}={yaml_quote(self.prompt)}", f"seed={self.seed}", *common, *self.overrides]

    def inputs(self, config: str, common: Sequence[str]) -> dict:
        """What makes a trial: a finished or failed entry with other inputs is run again."""
        return {"config": config, "overrides": self.launch_overrides(common)}


def slug(prompt: str) -> str:
    """A folder name from a prompt: letters, digits and ``_`` (at most 80 characters)."""
    return re.sub(r"[^A-Za-z0-9]+", "_", prompt).strip("_")[:80].strip("_") or "prompt"


def check_override_key(key: str, where: str) -> None:
    """Refuse an override key a prompt file (or a batch's own command line) may not set:
    ``where`` names the line or the option."""
    key = key.strip()
    allowed = (key in OVERRIDE_KEYS or key.startswith(OVERRIDE_PREFIXES)) and re.fullmatch(
        r"[A-Za-z_][A-Za-z0-9_.]*", key
    )
    if not allowed or any(key == k or key.startswith(k + ".") for k in BATCH_KEYS):
        raise UsageError(
            f"{where}: override {key[:80]!r} decides where files go or what is loaded, which is the "
            f"batch's own; a prompt may set {', '.join(OVERRIDE_KEYS)} and "
            f"{', '.join(p + '*' for p in OVERRIDE_PREFIXES)} (not {', '.join(BATCH_KEYS)})"
        )


def _text(value: str, what: str, where: str, limit: int = MAX_PROMPT_CHARS) -> str:
    """``value`` as literal text for threestudio: bounded, one line, no ``${``."""
    if len(value) > limit:
        raise UsageError(f"{where}: {what} has {len(value)} characters; at most {limit}")
    # control characters (C0, DEL, C1) and the line/paragraph separators, which YAML reads as line
    # breaks or spaces on their way to threestudio
    bad = next((c for c in value if unicodedata.category(c) in ("Cc", "Zl", "Zp")), None)
    if bad is not None:
        raise UsageError(f"{where}: {what} holds the control character {bad!r}; give one line of plain text")
    if INTERPOLATION in value:
        raise UsageError(
            f"{where}: {what} holds '${{', which threestudio's config (OmegaConf) would evaluate "
            "(e.g. ${oc.env:…} reads an environment variable) instead of passing it on; remove it"
        )
    return value


def _overrides(value, where: str) -> List[str]:
    if value is None:
        return []
    if isinstance(value, dict):
        pairs = list(value.items())
    elif isinstance(value, list) and all(isinstance(v, str) and "=" in v for v in value):
        pairs = [tuple(v.split("=", 1)) for v in value]
    else:
        raise UsageError(f'{where}: "overrides" must be an object {{"key": value}} or a list of "key=value"')
    out = []
    for key, v in pairs:
        if not isinstance(key, str):
            raise UsageError(f'{where}: "overrides" keys must be strings')
        check_override_key(key, where)
        if key.strip() == "seed":  # the line's own "seed" is what the manifest records and checks
            raise UsageError(f'{where}: give the seed as the line\'s "seed": N, not in "overrides"')
        text = json.dumps(v) if isinstance(v, (list, dict, bool)) or v is None else str(v)
        out.append(f"{key.strip()}={_text(text, f'override {key.strip()}', where)}")
    return out


def _seed(value, where: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise UsageError(f'{where}: "seed" must be an integer, not {str(value)[:40]!r}')
    if not 0 <= value <= MAX_SEED:
        raise UsageError(f'{where}: "seed" {value} is out of range; give an integer between 0 and {MAX_SEED}')
    return value


def _lines(path: str):
    """``(number, text)`` of the file's lines, the file checked first: a regular file (not a FIFO
    or a device, which would block or never end), at most :data:`MAX_FILE_BYTES`, UTF-8."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise UsageError(f'{path}: no such prompt file (one prompt a line, or JSONL with "prompt")') from None
    except OSError as e:
        raise UsageError(f"{path}: cannot be read ({e.strerror})") from None
    if stat.S_ISDIR(st.st_mode):
        raise UsageError(f"{path} is a folder; give a prompt file (one prompt a line, or JSONL)")
    if not stat.S_ISREG(st.st_mode):
        raise UsageError(f"{path} is not a regular file (a pipe or a device); give a prompt file")
    if st.st_size > MAX_FILE_BYTES:
        raise UsageError(
            f"{path} is {st.st_size >> 20} MiB; a prompt file holds at most {MAX_FILE_BYTES >> 20} MiB "
            "(split it into several batches)"
        )
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_FILE_BYTES + 1)
    except OSError as e:
        raise UsageError(f"{path}: cannot be read ({e.strerror})") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise UsageError(
            f"{path}:{line}: not UTF-8 text (byte {data[e.start]:#04x}); save the file as UTF-8"
        ) from None
    return list(enumerate(text.split("\n"), 1))


def _is_jsonl(path: str, lines) -> bool:
    """The file's format, decided once for the whole file: ``.jsonl``/``.ndjson``, or a first
    prompt line that is a JSON object; every other file is text (a line ``{best quality}, …`` is a
    prompt)."""
    if path.lower().endswith(JSONL_SUFFIXES):
        return True
    first = next((s for _, raw in lines if (s := raw.strip()) and not s.startswith("#")), "")
    try:
        return isinstance(json.loads(first), dict)
    except (ValueError, RecursionError):
        return False


def _json_job(line: str, number: int, where: str, default_seed: int) -> Job:
    try:
        entry = json.loads(line)
    except ValueError as e:
        reason = getattr(e, "msg", None) or str(e).split(";")[0]  # (int digits limit: a bare ValueError)
        raise UsageError(f"{where}: not valid JSON ({reason}); one JSON object a line") from None
    except RecursionError:
        raise UsageError(f"{where}: not valid JSON (nested too deeply); one JSON object a line") from None
    if not isinstance(entry, dict):
        raise UsageError(f"{where}: a {type(entry).__name__}, not a JSON object; one object a line")
    unknown = sorted(set(entry) - set(JSONL_KEYS))
    if unknown:
        raise UsageError(f"{where}: unknown key {unknown[0]!r}; a line may have {', '.join(JSONL_KEYS)}")
    prompt = entry.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise UsageError(f'{where}: no "prompt" (a non-empty string)')
    name = entry.get("name")
    if name is not None and not isinstance(name, str):
        raise UsageError(f'{where}: "name" must be a string, not {str(name)[:40]!r}')
    prompt = _text(prompt.strip(), "the prompt", where)
    return Job(
        prompt,
        name or slug(prompt),
        _seed(entry.get("seed", default_seed), where),
        _overrides(entry.get("overrides"), where),
        number,
    )


def read_prompts(path: str, default_seed: int = 0) -> List[Job]:
    """Jobs from a text file (one prompt a line) or JSONL (``prompt``, optional ``seed``, ``name``,
    ``overrides``); empty lines and ``#`` comments are skipped. Raises UsageError naming the line."""
    lines = _lines(path)
    jsonl = _is_jsonl(path, lines)
    jobs: List[Job] = []
    for number, raw in lines:
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        where = f"{path}:{number}"
        if jsonl:
            job = _json_job(line, number, where, default_seed)
        else:
            prompt = _text(line, "the prompt", where)
            job = Job(prompt, slug(prompt), _seed(default_seed, where), [], number)
        if not NAME_RE.fullmatch(job.name):
            raise UsageError(f"{where}: name {job.name!r} is not a folder name; use letters, digits, . _ -")
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


def check_batch_overrides(overrides: Sequence[str]) -> None:
    """The batch's own ``key=value`` overrides (its command line): ``key=value``, and none of the
    keys the batch sets itself (where trials go, what they resume from)."""
    for o in overrides:
        if "=" not in o:
            raise UsageError(
                f"{o!r}: overrides are key=value (threestudio's syntax), e.g. system.refine.steps=100"
            )
        key = o.split("=", 1)[0].strip()
        check_override_key(key, f"override {o[:80]!r}")
        if key == "seed":  # each prompt's seed is its line's (or --seed's), as the manifest records
            raise UsageError(
                f"override {o[:80]!r} would give every prompt the same seed: give --seed N (the seed of "
                'the prompts that give none), or a JSONL line its "seed": N'
            )

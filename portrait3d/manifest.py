"""A batch's ``manifest.jsonl``: one JSON object a line, one per prompt (``portrait3d batch`` writes it,
``portrait3d gallery`` and ``portrait3d evaluate`` read it). Its name, fields, reading, atomic
writing, "finished", and the trial folder an entry names."""

from __future__ import annotations

import json
import os
from typing import Dict, Optional, Sequence

from gan_prior.files import atomic_path, read_json

from .errors import UsageError
from .trial import Trial, find_trials, is_trial

MANIFEST = "manifest.jsonl"
# an entry's fields, in the order a line shows them
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
STATUSES = ("pending", "running", "done", "failed")


def manifest_path(out: str) -> str:
    return os.path.join(out, MANIFEST)


def has_manifest(out: str) -> bool:
    return os.path.isfile(manifest_path(out))


def read_manifest(out: str) -> Dict[str, dict]:
    """``<out>/manifest.jsonl`` by name ({} when there is none); a later line for the same name
    replaces an earlier one. Raises :class:`UsageError` naming a line that is not a JSON object."""
    path = manifest_path(out)
    entries: Dict[str, dict] = {}
    if not os.path.isfile(path):
        return entries
    with open(path, "rb") as f:
        for i, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise UsageError(
                    f"{path}:{i} is not UTF-8 text; a manifest is JSON lines written by portrait3d batch: "
                    "fix or delete that line"
                ) from None
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
            except RecursionError:
                raise UsageError(
                    f"{path}:{i} is nested too deeply to read; fix or delete that line"
                ) from None
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
    """All entries, one JSON object a line (:data:`FIELDS` first), replacing the file atomically."""
    with atomic_path(manifest_path(out), ".jsonl") as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            for e in entries:
                ordered = {
                    **{k: e[k] for k in FIELDS if k in e},
                    **{k: v for k, v in sorted(e.items())},
                }
                f.write(json.dumps(ordered) + "\n")


def entry_trial(out: str, entry: dict) -> Optional[Trial]:
    """The trial folder an entry names (``trial``, relative to ``out``): the trial itself, or the one
    trial found below it (threestudio nests ``<exp>/<tag>``); None when there is none. A ``trial``
    that leaves ``out`` (absolute, ``..``, ``/``, or a symbolic link out of it) is a one-line
    :class:`UsageError`: a manifest may come from someone else, and the gallery writes into each
    trial it names."""
    path = entry.get("trial")
    if not path or not isinstance(path, str):
        return None
    root = os.path.realpath(out)
    real = os.path.realpath(os.path.join(out, path))
    if os.path.isabs(path) or os.path.commonpath([real, root]) != root or real == root:
        raise UsageError(
            f"{manifest_path(out)}: entry {str(entry.get('name'))[:80]!r}: trial {path[:200]!r} is not a "
            f"folder inside {out}; a manifest names its trials by their path relative to its folder"
        )
    path = os.path.join(out, path)
    if is_trial(path):
        return Trial(path)
    found = find_trials(path) if os.path.isdir(path) else []
    return Trial(found[-1]) if found else None


def finished(out: str, entry: Optional[dict]) -> bool:
    """A ``done`` entry whose trial finished its export and whose listed files are still on disk."""
    if not entry or entry.get("status") != "done" or not entry.get("trial"):
        return False
    stages = read_json(Trial(os.path.join(out, entry["trial"])).stages) or {}
    listed = [p for kind in (entry.get("files") or {}).values() for p in kind]
    return "export" in stages and all(os.path.isfile(os.path.join(out, p)) for p in listed)

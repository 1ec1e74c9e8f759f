"""Atomic file output: nothing a user made is left half-written."""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Iterator, Optional


@contextlib.contextmanager
def atomic_path(path: str, suffix: str = "") -> Iterator[str]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` atomically.

    ``suffix`` keeps the extension for writers that pick a format from it (e.g. ``.mp4``).
    """
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=suffix or ".tmp", dir=folder)
    os.close(fd)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_json(path: str, data: dict) -> None:
    """Write ``data`` as JSON atomically (numpy / torch scalars become numbers)."""
    with atomic_path(path, ".json") as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=1, sort_keys=True,
                      default=lambda x: x.item() if hasattr(x, "item") else str(x))


def read_json(path: str) -> Optional[dict]:
    """The JSON object in ``path``, or None when it is missing, unreadable or not an object."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


#: Environment variable that overrides the cache root (default ``~/.cache/portrait3d``).
CACHE_ENV_VAR = "PORTRAIT3D_CACHE"


def cache_root() -> Path:
    """Folder for everything this project caches: ``$PORTRAIT3D_CACHE`` or ``~/.cache/portrait3d``."""
    return Path(os.environ.get(CACHE_ENV_VAR) or os.path.join("~", ".cache", "portrait3d")).expanduser().resolve()

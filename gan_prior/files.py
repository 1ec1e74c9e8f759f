"""Atomic file output: nothing a user made is left half-written, and no temporary file outlives
the process that wrote it."""

from __future__ import annotations

import contextlib
import json
import os
import re
import stat
import tempfile
import time
from pathlib import Path
from typing import Iterator, Optional

TMP_TAG = ".tmp-"  # temporary files are ".<name>.tmp-<pid>-<random><suffix>" beside their target
LEGACY_TMP_AGE_S = 3600.0  # older temps without a pid (".<name>.<random><suffix>") are removed after this


def _umask() -> int:
    """The process umask, read without changing it where Linux allows (``/proc/self/status``)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)  # elsewhere: read by setting it (not thread-safe, but restored at once)
    os.umask(mask)
    return mask


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return pid > 0
    return True


def remove_stale_temps(path: str) -> list[str]:
    """Delete the temporary files of ``path`` that writers killed mid-way left beside it.

    A temporary file is stale when the process named in it no longer runs; one written by an older
    version (no pid in its name) when it is older than :data:`LEGACY_TMP_AGE_S`. Returns the removed
    paths.
    """
    folder, base = os.path.split(os.path.abspath(path))
    ours = re.compile(re.escape(f".{base}{TMP_TAG}") + r"(\d+)-[A-Za-z0-9_]+(\.[A-Za-z0-9]+)?$")
    legacy = re.compile(re.escape(f".{base}.") + r"[a-z0-9_]{8}(\.[A-Za-z0-9]+)?$")
    removed = []
    try:
        names = os.listdir(folder)
    except OSError:
        return removed
    now = time.time()
    for name in names:
        m = ours.match(name)
        full = os.path.join(folder, name)
        try:
            if m:
                pid = int(m.group(1))
                if pid == os.getpid() or _pid_alive(pid):
                    continue
            elif legacy.match(name):
                if now - os.lstat(full).st_mtime < LEGACY_TMP_AGE_S:
                    continue
            else:
                continue
            if stat.S_ISREG(os.lstat(full).st_mode):
                os.remove(full)
                removed.append(full)
        except OSError:
            pass
    return removed


@contextlib.contextmanager
def atomic_path(path: str, suffix: str = "") -> Iterator[str]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` atomically.

    ``suffix`` keeps the extension for writers that pick a format from it (e.g. ``.mp4``). The new
    file gets the mode of the file it replaces, or the usual ``0666 & ~umask`` (0644 under umask
    022) for a new one, as ``open`` would give. Stale temporary files of ``path`` are removed first.
    """
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    remove_stale_temps(path)
    fd, tmp = tempfile.mkstemp(
        prefix=f".{os.path.basename(path)}{TMP_TAG}{os.getpid()}-", suffix=suffix or ".tmp", dir=folder
    )
    os.close(fd)
    try:
        yield tmp
        try:
            mode = stat.S_IMODE(os.stat(path).st_mode)
        except OSError:
            mode = 0o666 & ~_umask()
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_json(path: str, data: dict) -> None:
    """Write ``data`` as JSON atomically (numpy / torch scalars become numbers)."""
    with atomic_path(path, ".json") as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(
                data,
                f,
                indent=1,
                sort_keys=True,
                default=lambda x: x.item() if hasattr(x, "item") else str(x),
            )


def write_text(path: str, text: str) -> None:
    """Write ``text`` (UTF-8) atomically."""
    with atomic_path(path, os.path.splitext(path)[1]) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)


def read_json(path: str) -> Optional[dict]:
    """The JSON object in ``path``, or None when it is missing, unreadable or not an object."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError, RecursionError):
        return None
    return data if isinstance(data, dict) else None


#: Environment variable that overrides the cache root (default ``~/.cache/portrait3d``).
CACHE_ENV_VAR = "PORTRAIT3D_CACHE"


def fingerprint(path: str) -> dict:
    """Size and mtime (ns) of a checkpoint file, or the total size and newest mtime of a folder."""
    if os.path.isdir(path):
        size, mtime = 0, os.stat(path).st_mtime_ns
        for root, _, files in os.walk(path):
            for f in files:
                st = os.stat(os.path.join(root, f))
                size, mtime = size + st.st_size, max(mtime, st.st_mtime_ns)
        return {"size": size, "mtime_ns": mtime}
    st = os.stat(path)
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def cache_root() -> Path:
    """Folder for everything this project caches: ``$PORTRAIT3D_CACHE`` or ``~/.cache/portrait3d``."""
    return (
        Path(os.environ.get(CACHE_ENV_VAR) or os.path.join("~", ".cache", "portrait3d"))
        .expanduser()
        .resolve()
    )

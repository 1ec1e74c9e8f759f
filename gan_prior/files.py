"""Atomic file output: nothing a user made is left half-written, and no temporary file outlives
the process that wrote it."""

from __future__ import annotations

import contextlib
import json
import os
import re
import stat
import sys
import tempfile
from pathlib import Path
from typing import Iterator, Optional, Sequence

TMP_TAG = ".tmp-"  # temporary files are ".<name>.tmp-<pid>-<8 random><suffix>" beside their target
_TMP_RANDOM = r"[a-z0-9_]{8}"  # tempfile.mkstemp's random part: 8 of its lower-case letters, digits, "_"


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


def pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` runs (one we may not signal counts as running)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return pid > 0
    return True


def temp_name_pattern(base: str) -> re.Pattern:
    """The names :func:`atomic_path` gives its temporary files for a target named ``base``
    (group 1: the writer's pid)."""
    return re.compile(
        re.escape(f".{base}{TMP_TAG}") + r"([1-9][0-9]{0,9})-" + _TMP_RANDOM + r"\.[A-Za-z0-9]{1,12}$"
    )


def remove_stale_temps(path: str) -> list[str]:
    """Delete the temporary files of ``path`` that writers killed mid-way left beside it.

    Only files that are provably ours go: named exactly as :func:`atomic_path` names its temporary
    files for ``path`` (:func:`temp_name_pattern`), regular files owned by this user, written by a
    process that no longer runs. Anything else — a user's ``.front.png.original`` or
    ``.image.png.keepthis.png`` — is never touched. Returns the removed paths.
    """
    folder, base = os.path.split(os.path.abspath(path))
    ours = temp_name_pattern(base)
    removed = []
    try:
        names = os.listdir(folder)
    except OSError:
        return removed
    for name in names:
        m = ours.match(name)
        if not m:
            continue
        full = os.path.join(folder, name)
        try:
            pid = int(m.group(1))
            if pid == os.getpid() or pid_alive(pid):
                continue
            st = os.lstat(full)
            if stat.S_ISREG(st.st_mode) and st.st_uid == os.getuid():
                os.remove(full)
                removed.append(full)
        except OSError:
            pass
    return removed


def _temp_suffix(suffix: str) -> str:
    return suffix if re.fullmatch(r"\.[A-Za-z0-9]{1,12}", suffix or "") else ".tmp"


@contextlib.contextmanager
def atomic_path(path: str, suffix: str = "", mode_mask: int = 0o777) -> Iterator[str]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` atomically.

    ``suffix`` keeps the extension for writers that pick a format from it (e.g. ``.mp4``). The new
    file gets the permission bits of the file it replaces (never its setuid, setgid or sticky bit),
    or the usual ``0666`` (0644 under umask 022) for a new one, as ``open`` would give, masked by
    the umask either way, and by ``mode_mask`` (e.g. ``0o700`` for a file that holds something only
    its owner may read). Stale temporary files of ``path`` are removed first.
    """
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    remove_stale_temps(path)
    fd, tmp = tempfile.mkstemp(
        prefix=f".{os.path.basename(path)}{TMP_TAG}{os.getpid()}-", suffix=_temp_suffix(suffix), dir=folder
    )
    os.close(fd)
    try:
        yield tmp
        try:
            mode = os.stat(path).st_mode & 0o777  # permission bits only
        except OSError:
            mode = 0o666
        os.chmod(tmp, mode & mode_mask & ~_umask())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def require_output_folder(out: str, option: str = "--out") -> None:
    """Refuse, with one line naming ``option``, an output folder that cannot be one: an empty path,
    a file, a path below a file, or a folder (or its nearest existing parent) this user cannot write."""
    if not out or not out.strip():
        raise ValueError(f"{option}: empty path; give an output folder")
    if os.path.exists(out) and not os.path.isdir(out):
        raise ValueError(f"{option}: {out} is a file, not a folder; give a folder (it is created if missing)")
    probe = os.path.abspath(out)
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe):
        raise ValueError(f"{option}: {out} cannot be created: {probe} is a file")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ValueError(
            f"{option}: {out} is not writable ({probe}: permission denied); choose another folder"
        )


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


def write_text(path: str, text: str, mode_mask: int = 0o777) -> None:
    """Write ``text`` (UTF-8) atomically (permissions as :func:`atomic_path`'s)."""
    with atomic_path(path, os.path.splitext(path)[1], mode_mask) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)


def check_out(out: str, outputs: Sequence[str], overwrite: bool, option: str = "--out") -> None:
    """Refuse (``ValueError``, one line) an output folder that cannot be one (empty, a file, not
    writable) and, without ``overwrite``, one that already holds any of ``outputs`` (names in
    ``out``); with it, name what will be replaced. The one check of every command's outputs."""
    require_output_folder(out, option)
    existing = [name for name in dict.fromkeys(outputs) if os.path.lexists(os.path.join(out, name))]
    folders = [name for name in existing if os.path.isdir(os.path.join(out, name))]
    if folders:
        raise ValueError(
            f"{option}: {os.path.join(out, folders[0])} is a folder where a file is to be written; "
            "remove it or choose another folder"
        )
    if existing and not overwrite:
        raise ValueError(
            f"{option}: {out} already holds {', '.join(existing)}; pass --overwrite to replace "
            "them, or choose another folder"
        )
    if existing:
        print(f"replacing {', '.join(existing)} in {out} (--overwrite)", file=sys.stderr)


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

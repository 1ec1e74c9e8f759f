"""Where threestudio comes from, how our extension gets into it, and how ``launch.py`` is run.

threestudio is not on PyPI. The setup (``make``; ``python -m portrait3d.threestudio_env``) takes it, in
this order, from:

1. ``THREESTUDIO_ROOT``: a checkout of the user's (our extension is linked into its ``custom/``);
2. a local archive of the pinned commit (``THREESTUDIO_ARCHIVE``, e.g. a ``git archive`` tarball),
   extracted into ``.deps/threestudio`` of this checkout (ignored by git);
3. ``git clone`` of threestudio at the pinned commit into ``.deps/threestudio``.

The pinned copy is never modified in place: only links to our extension and configs are added to
its ``custom/`` and ``configs/``. Later commands (``portrait3d run``/``batch``, the tests) find it with
:func:`find_threestudio`.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
from typing import List, Optional

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PINNED_CHECKOUT = os.path.join(REPO_ROOT, ".deps", "threestudio")
PIN_FILE = ".portrait3d-pin"  # inside the pinned checkout: the commit it holds
GIT_URL = "https://github.com/threestudio-project/threestudio.git"
EXTENSION = "threestudio-portrait3d"
# (path in this repository, path in the threestudio checkout)
LINKS = (
    (f"custom/{EXTENSION}", f"custom/{EXTENSION}"),
    ("configs/portrait3d.yaml", "configs/portrait3d.yaml"),
    ("configs/portrait3d-tiny.yaml", "configs/portrait3d-tiny.yaml"),
)


# run at interpreter start (portrait3d.startup), silent if this package was uninstalled
STARTUP_PTH = "portrait3d-startup.pth"
STARTUP_LINE = 'import sys; exec("try:\\n import portrait3d.startup\\nexcept ImportError:\\n pass")\n'


class ThreestudioError(Exception):
    """threestudio cannot be found or set up; the message says what to do (one line)."""


def is_checkout(root: str) -> bool:
    return os.path.isfile(os.path.join(root, "launch.py")) and os.path.isdir(
        os.path.join(root, "threestudio")
    )


def find_threestudio() -> str:
    """The threestudio root to run: ``THREESTUDIO_ROOT`` if set, else the pinned checkout."""
    env = os.environ.get("THREESTUDIO_ROOT")
    if env:
        root = os.path.abspath(os.path.expanduser(env))
        if not is_checkout(root):
            raise ThreestudioError(
                f"THREESTUDIO_ROOT={env} is not a threestudio checkout (no launch.py and "
                "threestudio/); point it at one, or unset it to use the pinned copy `make` sets up"
            )
        return root
    if is_checkout(PINNED_CHECKOUT):
        return PINNED_CHECKOUT
    raise ThreestudioError(
        "threestudio is not set up: run `make demo` or `make test` in this repository (or set "
        "THREESTUDIO_ROOT to a threestudio checkout with this extension installed)"
    )


def extension_installed(root: str) -> bool:
    """True if ``root/custom`` holds this repository's extension (linked, copied or cloned)."""
    custom = os.path.join(root, "custom")
    if not os.path.isdir(custom):
        return False
    for name in os.listdir(custom):
        folder = os.path.join(custom, name)
        if name.endswith("_disabled") or not os.path.isdir(folder):
            continue
        if os.path.isfile(os.path.join(folder, "system", "portrait3d.py")) or os.path.isfile(
            os.path.join(folder, "custom", EXTENSION, "system", "portrait3d.py")
        ):
            return True
    return False


def _plain_members(tar: tarfile.TarFile, archive: str) -> List[tarfile.TarInfo]:
    """PEP 706's "data" filter where Python lacks it: files, folders and links inside the archive only."""
    members = []
    for m in tar.getmembers():
        parts = m.name.replace("\\", "/").split("/")
        target = m.linkname.replace("\\", "/").split("/") if (m.issym() or m.islnk()) else []
        if (
            m.name.startswith("/")
            or ".." in parts
            or (m.issym() and (m.linkname.startswith("/") or ".." in target))
        ):
            raise ThreestudioError(
                f"{archive}: unsafe path {m.name!r} in the archive; refusing to extract it"
            )
        if m.isfile() or m.isdir() or m.issym() or m.islnk():
            members.append(m)
    return members


def _extract_archive(archive: str, dest: str) -> None:
    """Extract a ``threestudio/``-rooted tarball into ``dest`` (atomically: a temp folder renamed)."""
    parent = os.path.dirname(dest)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".threestudio.", dir=parent)
    try:
        with tarfile.open(archive) as tar:
            if hasattr(tarfile, "data_filter"):  # Python >= 3.11.4 (PEP 706)
                tar.extractall(tmp, filter="data")
            else:
                tar.extractall(tmp, members=_plain_members(tar, archive))
        entries = os.listdir(tmp)
        src = os.path.join(tmp, entries[0]) if len(entries) == 1 else tmp
        if not is_checkout(src):
            raise ThreestudioError(f"{archive}: not a threestudio source archive (no launch.py)")
        os.replace(src, dest)
    except (OSError, tarfile.TarError) as e:
        raise ThreestudioError(f"{archive}: cannot extract ({e}); give a .tar.gz of threestudio") from e
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _clone(commit: str, dest: str) -> None:
    tmp = dest + ".clone"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        subprocess.run(["git", "clone", "--quiet", GIT_URL, tmp], check=True)
        subprocess.run(["git", "-C", tmp, "checkout", "--quiet", commit], check=True)
    except (OSError, subprocess.CalledProcessError) as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise ThreestudioError(
            f"git clone of {GIT_URL} at {commit} failed ({e}); without network, give a source "
            "archive with THREESTUDIO_ARCHIVE=... or a checkout with THREESTUDIO_ROOT=..."
        ) from e
    os.replace(tmp, dest)


def provision(commit: str, archive: Optional[str] = None) -> str:
    """The threestudio root, set up if needed (see the module docstring for the order)."""
    if os.environ.get("THREESTUDIO_ROOT"):
        return find_threestudio()
    dest = PINNED_CHECKOUT
    pin = os.path.join(dest, PIN_FILE)
    if is_checkout(dest) and os.path.isfile(pin) and open(pin).read().strip() == commit:
        return dest
    if os.path.exists(dest):
        shutil.rmtree(dest)  # a copy of another commit (or a half-made one): ours, replaced
    if archive:
        if not os.path.isfile(archive):
            raise ThreestudioError(f"THREESTUDIO_ARCHIVE={archive} does not exist")
        _extract_archive(archive, dest)
    else:
        _clone(commit, dest)
    with open(pin, "w") as f:
        f.write(commit + "\n")
    return dest


def install_extension(root: str, copy: bool = False) -> List[str]:
    """Link (or copy) the extension and configs into ``root`` and write the start-up ``.pth``
    (:func:`write_startup_file`).

    When this repository was itself cloned into ``root/custom`` (threestudio's usual way to add an
    extension), the extension is already there: only the configs are linked.
    """
    root = os.path.abspath(os.path.expanduser(root))
    if not os.path.isfile(os.path.join(root, "launch.py")):
        raise ThreestudioError(f"{root} is not a threestudio checkout (no launch.py); pass its root folder")
    inside = os.path.commonpath([REPO_ROOT, os.path.join(root, "custom")]) == os.path.join(root, "custom")
    done = []
    for src, dst in LINKS:
        if inside and src.startswith("custom/"):
            continue
        src, dst = os.path.join(REPO_ROOT, src), os.path.join(root, dst)
        if os.path.islink(dst) or os.path.isfile(dst):
            os.remove(dst)
        elif os.path.isdir(dst):
            raise ThreestudioError(
                f"{dst} exists and is a folder not made by this installer; move it away first"
            )
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        if copy:
            (shutil.copytree if os.path.isdir(src) else shutil.copy2)(src, dst)
        else:
            os.symlink(src, dst)
        done.append(dst)
    done.append(write_startup_file())
    return done


def make_worktree(dest: str, source: Optional[str] = None) -> str:
    """A threestudio tree at ``dest`` to run in without touching ``source`` (default: the one
    :func:`find_threestudio` finds): links to its entries, its own ``custom/``, ``configs/`` and
    ``outputs/``, and this extension installed into it. Used by the tests and the benchmarks."""
    source = source or find_threestudio()
    os.makedirs(dest, exist_ok=True)
    for name in os.listdir(source):
        if name in ("custom", "configs", "outputs", ".threestudio_cache"):
            continue
        os.symlink(os.path.join(source, name), os.path.join(dest, name))
    os.makedirs(os.path.join(dest, "custom"))
    os.makedirs(os.path.join(dest, "configs"))
    install_extension(dest)
    return dest


def load_extension(repo_root: str = REPO_ROOT):
    """Import ``custom/threestudio-portrait3d`` of ``repo_root`` as threestudio's ``launch.py`` does
    (module name ``threestudio-portrait3d``), once; threestudio must be importable."""
    import importlib.util

    if EXTENSION not in sys.modules:
        folder = os.path.join(repo_root, "custom", EXTENSION)
        spec = importlib.util.spec_from_file_location(
            EXTENSION, os.path.join(folder, "__init__.py"), submodule_search_locations=[folder]
        )
        module = importlib.util.module_from_spec(spec)
        sys.modules[EXTENSION] = module
        spec.loader.exec_module(module)
    return sys.modules[EXTENSION]


def import_threestudio(root: Optional[str] = None):
    """``threestudio`` imported from ``root`` (default: :func:`find_threestudio`) with this extension
    loaded, as ``launch.py`` has them (the CPU stand-ins armed first); returns the module."""
    from . import stand_ins

    stand_ins.install()
    root = root or find_threestudio()
    if root not in sys.path:
        sys.path.insert(0, root)
    import threestudio

    load_extension()
    return threestudio


def write_startup_file(site_packages: Optional[str] = None) -> str:
    """Write the ``.pth`` that runs :mod:`portrait3d.startup` at interpreter start (default: this
    Python's site-packages); returns its path."""
    folder = site_packages or sysconfig.get_paths()["purelib"]
    path = os.path.join(folder, STARTUP_PTH)
    with open(path, "w", encoding="utf-8") as f:
        f.write(STARTUP_LINE)
    return path


def launch_command(*args: str) -> List[str]:
    """``python launch.py ARGS`` with this interpreter (run it with ``cwd=find_threestudio()``)."""
    return [sys.executable, "launch.py", *args]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Set up threestudio for this repository and print its root.")
    p.add_argument("--commit", required=True, help="the pinned threestudio commit")
    p.add_argument(
        "--archive",
        default=os.environ.get("THREESTUDIO_ARCHIVE") or None,
        help="a local source archive of that commit (default: $THREESTUDIO_ARCHIVE)",
    )
    args = p.parse_args(argv)
    try:
        root = provision(args.commit, args.archive)
        install_extension(root)
    except ThreestudioError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(root)
    return 0


if __name__ == "__main__":
    sys.exit(main())

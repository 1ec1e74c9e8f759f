"""Link this extension and its configs into a threestudio checkout.

    python install_extension.py /path/to/threestudio      # or set THREESTUDIO_ROOT

Creates ``custom/threestudio-portrait3d`` and ``configs/portrait3d*.yaml`` in the checkout as
symbolic links to this repository (``--copy`` copies instead), so that, from the threestudio root,
``python launch.py --config configs/portrait3d.yaml --train system.prompt_processor.prompt="..."``
resolves. ``gan_prior`` itself must be importable there: ``pip install -e .`` in this repository.
"""
import argparse
import os
import shutil
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
LINKS = [("custom/threestudio-portrait3d", "custom/threestudio-portrait3d"),
         ("configs/portrait3d.yaml", "configs/portrait3d.yaml"),
         ("configs/portrait3d-tiny.yaml", "configs/portrait3d-tiny.yaml")]


def install(threestudio_root: str, copy: bool = False) -> list:
    root = os.path.abspath(os.path.expanduser(threestudio_root))
    if not os.path.isfile(os.path.join(root, "launch.py")):
        raise SystemExit(f"error: {root} is not a threestudio checkout (no launch.py); pass its root folder")
    done = []
    for src, dst in LINKS:
        src, dst = os.path.join(HERE, src), os.path.join(root, dst)
        if os.path.islink(dst) or os.path.isfile(dst):
            os.remove(dst)
        elif os.path.isdir(dst):
            raise SystemExit(f"error: {dst} exists and is a folder not made by this installer; move it away first")
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        if copy:
            (shutil.copytree if os.path.isdir(src) else shutil.copy2)(src, dst)
        else:
            os.symlink(src, dst)
        done.append(dst)
    return done


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("threestudio_root", nargs="?", default=os.environ.get("THREESTUDIO_ROOT"))
    p.add_argument("--copy", action="store_true", help="copy files instead of linking them")
    args = p.parse_args(argv)
    if not args.threestudio_root:
        p.error("give the threestudio checkout folder (or set THREESTUDIO_ROOT)")
    for path in install(args.threestudio_root, args.copy):
        print(f"installed {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

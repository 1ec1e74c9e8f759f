"""Link this extension and its configs into a threestudio checkout.

    python install_extension.py /path/to/threestudio      # or set THREESTUDIO_ROOT

Creates ``custom/threestudio-portrait3d`` and ``configs/portrait3d*.yaml`` in the checkout as
symbolic links to this repository (``--copy`` copies instead), so that, from the threestudio root,
``python launch.py --config configs/portrait3d.yaml --train system.prompt_processor.prompt="..."``
resolves; and writes ``portrait3d-startup.pth`` into this Python's site-packages (the import
stand-ins threestudio needs where CUDA-only packages are missing; a real package always wins).
``gan_prior`` itself must be importable there: ``pip install -e .`` in this repository.
"""

import argparse
import os
import sys

from portrait3d.threestudio_env import ThreestudioError, install_extension


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("threestudio_root", nargs="?", default=os.environ.get("THREESTUDIO_ROOT"))
    p.add_argument("--copy", action="store_true", help="copy files instead of linking them")
    args = p.parse_args(argv)
    if not args.threestudio_root:
        p.error("give the threestudio checkout folder (or set THREESTUDIO_ROOT)")
    try:
        paths = install_extension(args.threestudio_root, args.copy)
    except ThreestudioError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for path in paths:
        print(f"installed {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

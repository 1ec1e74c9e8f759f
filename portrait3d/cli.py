"""``portrait3d``: the project's command. Each subcommand lives in its own module, which provides
``add_parser(subparsers)`` (registering a parser whose ``func(args) -> int`` runs it)."""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Optional, Sequence

# modules of this package that each add one or more subcommands
COMMAND_MODULES: tuple = ("run", "batch", "evaluate", "report")


class UsageError(Exception):
    """A bad input the user can fix: printed as one ``error:`` line, exit code 2."""


def build_parser() -> argparse.ArgumentParser:
    from gan_prior.checks import OneLineParser

    parser = OneLineParser(
        prog="portrait3d",
        description="Portrait3D with threestudio: one portrait (run), many on Ray (batch), their "
        "metrics (evaluate) and pages (report, gallery).",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=OneLineParser)
    for name in COMMAND_MODULES:
        importlib.import_module(f"{__package__}.{name}").add_parser(sub)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    # key=value overrides may come after options (argparse takes consecutive positionals only once)
    args, extra = parser.parse_known_args(argv)
    if extra:
        if not hasattr(args, "overrides") or any(e.startswith("-") for e in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = [*args.overrides, *extra]
    try:
        return int(args.func(args) or 0)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

"""``portrait3d``: the project's command. Each subcommand lives in its own module, which provides
``add_parser(subparsers)`` (registering a parser whose ``func(args) -> int`` runs it)."""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Optional, Sequence

from .errors import UsageError

# modules of this package that each add one or more subcommands (batch_metrics: `portrait3d evaluate`)
DEBUG_ENV = "PORTRAIT3D_DEBUG"  # set to 1 to see the traceback of an unexpected error
COMMAND_MODULES: tuple = ("run", "batch", "batch_metrics", "report")


def _where(args) -> str:
    """The file or folder a command works on, for an ``OSError`` that names none."""
    for name in ("out", "folder", "runs", "prompts"):
        value = getattr(args, name, None)
        if isinstance(value, str):
            return value
    return ""


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
    from gan_prior.checks import one_line, report_error

    # key=value overrides may come after options (argparse takes consecutive positionals only once)
    args, extra = parser.parse_known_args(argv)
    if extra:
        if not hasattr(args, "overrides") or any(e.startswith("-") for e in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = [*args.overrides, *extra]
    try:
        return int(args.func(args) or 0)
    except UsageError as e:
        print(f"error: {one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # python -m gan_prior's contract: exit 2 for a bad input, 1 for a bug
        return report_error(
            e, DEBUG_ENV, "use a smaller input or a machine with more memory", where=_where(args)
        )


if __name__ == "__main__":
    sys.exit(main())

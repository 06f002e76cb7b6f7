"""The `exchange` command line: one sub-module per command group, each with `register()`."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from exchange import __version__
from exchange.cli import admin, client, custody, demo, keys, ledger, package, serve
from exchange.cli.output import CommandError, fail

# NOTE: add a command group by writing exchange/cli/<group>.py with `register(subparsers)`
# and naming it here.
GROUPS = (keys, package, ledger, client, custody, demo, serve, admin)


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser."""
    parser = argparse.ArgumentParser(
        prog="exchange",
        description="Evidence Exchange: signed evidence packages and a verifiable custody ledger.",
    )
    parser.add_argument("--version", action="version", version=f"exchange {__version__}")
    subparsers = parser.add_subparsers(dest="group", metavar="COMMAND")
    for group in GROUPS:
        group.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    handler = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 0 if args.group is None else 2
    try:
        code: int = handler(args)
    except CommandError as exc:
        return fail(exc.message, code=exc.exit_code)
    except KeyboardInterrupt:
        return fail("interrupted", code=130)
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

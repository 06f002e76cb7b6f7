"""The `exchange` command line: one sub-module per command group, each with `register()`."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from types import ModuleType
from typing import Any

from exchange import __version__
from exchange.cli import client, custody, demo, keys, ledger, package
from exchange.cli.output import CommandError, fail
from exchange.cli.server import SERVER_HINT, is_server_dependency

# NOTE: add a command group by writing exchange/cli/<group>.py with `register(subparsers)`
# and naming it here. These need only the base install (client and offline verifiers);
# `exchange ledger verify`/`proof` import the server's parts themselves when run.
GROUPS: tuple[ModuleType, ...] = (keys, package, ledger, client, custody, demo)
# Groups whose modules import the server's parts (evidence-exchange[server]): name -> help.
SERVER_GROUPS = {
    "serve": "run the exchange API server",
    "migrate": "create the database schema or upgrade it to this version",
    "admin": "operator registry: agencies, keys, clients",
}


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
    for name, help_text in SERVER_GROUPS.items():
        try:
            module = importlib.import_module(f"exchange.cli.{name}")
        except ModuleNotFoundError as exc:
            if not is_server_dependency(exc):
                raise
            _register_missing(subparsers, name, f"{help_text} (needs evidence-exchange[server])")
        else:
            module.register(subparsers)
    return parser


def _register_missing(subparsers: Any, name: str, help_text: str) -> None:
    """A stand-in for a group whose server parts are not installed: it says how to get them."""
    stand_in = subparsers.add_parser(name, help=help_text, add_help=False)
    stand_in.add_argument("rest", nargs=argparse.REMAINDER)

    def refuse(args: argparse.Namespace) -> int:
        raise CommandError(f"`exchange {name}` {SERVER_HINT}", exit_code=2)

    stand_in.set_defaults(handler=refuse)


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

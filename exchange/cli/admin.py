"""`exchange admin`: the operator's registry of agencies, agency keys and API clients.

Works on the node's database directly (settings as for `exchange serve`); every change is
written with its ledger entry in the same transaction.
"""

from __future__ import annotations

import argparse
import getpass
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from sqlmodel import Session

from exchange.cli.output import CommandError, stdout
from exchange.errors import ExchangeError
from exchange.keyfiles import ledger_key
from exchange.ledger.signer import LogSigner
from exchange.model import Role
from exchange.service import agencies
from exchange.settings import Settings
from exchange.storage.db import create_schema, make_engine, session_scope
from exchange.trust import parse_time

DEFAULT_KEY_YEARS = 5


def register(subparsers: Any) -> None:
    """Add the `admin` group."""
    group = subparsers.add_parser("admin", help="operator registry: agencies, keys, clients")
    kinds = group.add_subparsers(dest="kind", metavar="WHAT", required=True)

    agency = kinds.add_parser("agency", help="register agencies and manage their keys")
    agency_commands = agency.add_subparsers(dest="command", metavar="COMMAND", required=True)
    add = agency_commands.add_parser("add", help="register an agency with its signing key")
    add.add_argument("--id", required=True, help="agency id, e.g. TH-RTP")
    add.add_argument("--country", required=True, help="ISO 3166-1 alpha-2, e.g. TH")
    add.add_argument("--name", required=True, help="display name")
    add.add_argument("--public-key", required=True, type=Path, help="the agency's public key PEM")
    _key_window(add)
    add.set_defaults(handler=agency_add_command)

    add_key = agency_commands.add_parser("add-key", help="register another key (rotation)")
    add_key.add_argument("--id", required=True, help="agency id")
    add_key.add_argument("--public-key", required=True, type=Path, help="public key PEM")
    _key_window(add_key)
    add_key.set_defaults(handler=agency_add_key_command)

    revoke = agency_commands.add_parser("revoke-key", help="revoke an agency key from now on")
    revoke.add_argument("--id", required=True, help="agency id")
    revoke.add_argument("--key-id", required=True, help="32 hex key id")
    revoke.set_defaults(handler=agency_revoke_key_command)

    client = kinds.add_parser("client", help="register API clients of an agency")
    client_commands = client.add_subparsers(dest="command", metavar="COMMAND", required=True)
    client_add = client_commands.add_parser("add", help="register a client and its public key")
    client_add.add_argument("--id", required=True, help="client id, e.g. th-rtp-investigator")
    client_add.add_argument("--agency", required=True, help="agency id")
    client_add.add_argument("--role", required=True, choices=[r.value for r in Role])
    client_add.add_argument(
        "--public-key", required=True, type=Path, help="PEM the client signs its assertions with"
    )
    client_add.set_defaults(handler=client_add_command)


def _key_window(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--not-before", help="RFC 3339 (default: now)")
    parser.add_argument("--not-after", help=f"RFC 3339 (default: {DEFAULT_KEY_YEARS} years on)")


def _operator() -> str:
    try:
        return f"operator:{getpass.getuser()}"
    except (KeyError, OSError):
        return "operator:unknown"


def _read_pem(path: Path) -> str:
    try:
        return path.read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as exc:
        raise CommandError(f"cannot read public key {path}: {exc}") from exc


def _window(args: argparse.Namespace, now: datetime) -> tuple[datetime, datetime]:
    try:
        not_before = parse_time(args.not_before) if args.not_before else now
        not_after = (
            parse_time(args.not_after)
            if args.not_after
            else not_before + timedelta(days=365 * DEFAULT_KEY_YEARS)
        )
    except ExchangeError as exc:
        raise CommandError(exc.message) from exc
    return not_before, not_after


@contextmanager
def _registry() -> Iterator[tuple[Session, LogSigner]]:
    try:
        settings = Settings()
    except ValidationError as exc:
        raise CommandError(f"bad settings: {exc}") from exc
    try:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        engine = make_engine(settings.resolved_database_url, liveness=settings.postgres_liveness())
        create_schema(engine)
        signer = ledger_key(
            key_path=settings.ledger_key_path,
            data_dir=settings.data_dir,
            development=settings.env == "development",
        )
        log = LogSigner.from_signer(signer, origin=settings.ledger_origin)
        with session_scope(engine) as session:
            yield session, log
    except ExchangeError as exc:
        raise CommandError(exc.message) from exc


def _run(action: Callable[[Session, LogSigner, datetime], str]) -> int:
    now = datetime.now(UTC)
    with _registry() as (session, log):
        message = action(session, log, now)
    stdout.print(message, markup=False)
    return 0


def agency_add_command(args: argparse.Namespace) -> int:
    """Handle `exchange admin agency add`."""
    pem = _read_pem(args.public_key)

    def action(session: Session, log: LogSigner, now: datetime) -> str:
        not_before, not_after = _window(args, now)
        agencies.register_agency(
            session,
            log=log,
            now=now,
            agency_id=args.id,
            country=args.country,
            name=args.name,
            operator=_operator(),
        )
        key = agencies.register_key(
            session,
            log=log,
            now=now,
            agency_id=args.id,
            public_key=pem,
            not_before=not_before,
            not_after=not_after,
            operator=_operator(),
        )
        return f"registered agency {args.id} ({args.country}) with key {key.key_id}"

    return _run(action)


def agency_add_key_command(args: argparse.Namespace) -> int:
    """Handle `exchange admin agency add-key`."""
    pem = _read_pem(args.public_key)

    def action(session: Session, log: LogSigner, now: datetime) -> str:
        not_before, not_after = _window(args, now)
        key = agencies.register_key(
            session,
            log=log,
            now=now,
            agency_id=args.id,
            public_key=pem,
            not_before=not_before,
            not_after=not_after,
            operator=_operator(),
        )
        return f"registered key {key.key_id} of agency {args.id}"

    return _run(action)


def agency_revoke_key_command(args: argparse.Namespace) -> int:
    """Handle `exchange admin agency revoke-key`."""

    def action(session: Session, log: LogSigner, now: datetime) -> str:
        agencies.revoke_key(
            session, log=log, now=now, agency_id=args.id, kid=args.key_id, operator=_operator()
        )
        return f"revoked key {args.key_id} of agency {args.id} as of {now.isoformat()}"

    return _run(action)


def client_add_command(args: argparse.Namespace) -> int:
    """Handle `exchange admin client add`."""
    pem = _read_pem(args.public_key)

    def action(session: Session, log: LogSigner, now: datetime) -> str:
        client = agencies.register_client(
            session,
            log=log,
            now=now,
            client_id=args.id,
            agency_id=args.agency,
            role=Role(args.role),
            public_key=pem,
            operator=_operator(),
        )
        return f"registered client {client.id} ({client.role}) of agency {args.agency}"

    return _run(action)

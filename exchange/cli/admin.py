"""`exchange admin`: the operator's registry of agencies, agency keys and API clients.

Works on the node's database directly (settings as for `exchange serve`); every change is
written with its ledger entry in the same transaction.
"""

from __future__ import annotations

import argparse
import getpass
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from sqlmodel import Session

from exchange.cli.database import database_url, existing_database
from exchange.cli.output import CommandError, print_json, stdout
from exchange.errors import ExchangeError
from exchange.keyfiles import ledger_key
from exchange.ledger.signer import LogSigner
from exchange.model import Role, parse_json
from exchange.schema import validate
from exchange.service import agencies
from exchange.settings import Settings
from exchange.signing import public_key_pem
from exchange.storage.db import session_scope
from exchange.storage.tables import AgencyKeyRow
from exchange.trust import TrustedKey, parse_time

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
    _key_source(add)
    add.set_defaults(handler=agency_add_command)

    add_key = agency_commands.add_parser("add-key", help="register another key (rotation)")
    add_key.add_argument("--id", required=True, help="agency id")
    _key_source(add_key)
    add_key.set_defaults(handler=agency_add_key_command)

    agency_list = agency_commands.add_parser("list", help="list the registered agencies")
    _json_flag(agency_list)
    agency_list.set_defaults(handler=agency_list_command)

    keys = agency_commands.add_parser("keys", help="list the registered agency keys")
    keys.add_argument("--id", help="only this agency's keys")
    _json_flag(keys)
    keys.set_defaults(handler=agency_keys_command)

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

    client_list = client_commands.add_parser("list", help="list the registered clients")
    client_list.add_argument("--agency", help="only this agency's clients")
    _json_flag(client_list)
    client_list.set_defaults(handler=client_list_command)

    disable = client_commands.add_parser(
        "disable", help="refuse the client's logins from now on (tokens it holds expire)"
    )
    disable.add_argument("--id", required=True, help="client id")
    disable.set_defaults(handler=client_disable_command)

    enable = client_commands.add_parser("enable", help="let a disabled client log in again")
    enable.add_argument("--id", required=True, help="client id")
    enable.set_defaults(handler=client_enable_command)


def _key_source(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--public-key", type=Path, help="the agency's public key PEM")
    source.add_argument(
        "--trust-entry",
        type=Path,
        help="the key's trust entry (AGENCY.json of `exchange keys generate`): its public key "
        "and validity window are registered as they are",
    )
    parser.add_argument("--not-before", help="RFC 3339 (default: now; with --public-key)")
    parser.add_argument(
        "--not-after", help=f"RFC 3339 (default: {DEFAULT_KEY_YEARS} years on; with --public-key)"
    )


def _json_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="machine-readable output")


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


@dataclass(frozen=True)
class _KeyInput:
    pem: str
    not_before: datetime
    not_after: datetime


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


def _trust_entry(path: Path, *, agency_id: str) -> TrustedKey:
    try:
        document = parse_json(path.read_bytes(), what=str(path))
        validate("trust-agency.v1.json", document)
        entries = document if isinstance(document, list) else [document]
        if len(entries) != 1:
            raise CommandError(f"{path} holds {len(entries)} keys; give a file with one")
        key = TrustedKey.from_entry(entries[0], source=str(path))
    except OSError as exc:
        raise CommandError(f"cannot read trust entry {path}: {exc.strerror}") from exc
    except ExchangeError as exc:
        raise CommandError(f"{path}: {exc.message}") from exc
    if key.agency != agency_id:
        raise CommandError(f"{path} is a key of agency {key.agency}, not of {agency_id}")
    if key.revoked_at is not None:
        raise CommandError(f"{path} is revoked (revoked_at {key.revoked_at.isoformat()})")
    return key


def _key_input(args: argparse.Namespace, *, agency_id: str) -> Callable[[datetime], _KeyInput]:
    """Read the key now (so a bad file fails before the database is touched); the window
    may depend on the time of registration."""
    if args.trust_entry is None:
        pem = _read_pem(args.public_key)
        return lambda now: _KeyInput(pem, *_window(args, now))
    if args.not_before or args.not_after:
        raise CommandError(
            "--not-before and --not-after come from the trust entry; give them only with "
            "--public-key"
        )
    key = _trust_entry(args.trust_entry, agency_id=agency_id)
    if getattr(args, "country", None) not in (None, key.country):
        raise CommandError(f"{args.trust_entry} is for country {key.country}, not {args.country}")
    entry = _KeyInput(public_key_pem(key.public_key), key.not_before, key.not_after)
    return lambda _now: entry


def _settings() -> Settings:
    try:
        return Settings()
    except ValidationError as exc:
        raise CommandError(f"bad settings: {exc}") from exc


def _ledger_signer(settings: Settings) -> LogSigner:
    """The node's ledger key, without creating a data dir that does not exist."""
    development = settings.env == "development"
    if settings.ledger_key_path is None and development and not settings.data_dir.is_dir():
        raise CommandError(
            f"no ledger key: EXCHANGE_LEDGER_KEY_PATH is not set and the data dir "
            f"{settings.data_dir.resolve()} (where the development key lives) does not exist"
        )
    try:
        signer = ledger_key(
            key_path=settings.ledger_key_path, data_dir=settings.data_dir, development=development
        )
    except ExchangeError as exc:
        raise CommandError(exc.message) from exc
    return LogSigner.from_signer(signer, origin=settings.ledger_origin)


@contextmanager
def _database(*, read_only: bool) -> Iterator[tuple[Settings, Session]]:
    settings = _settings()
    url, source = database_url(settings)
    with existing_database(url, source, liveness=settings.postgres_liveness()) as engine:
        try:
            with session_scope(engine, read_only=read_only) as session:
                yield settings, session
        except ExchangeError as exc:
            raise CommandError(exc.message) from exc


def _run(action: Callable[[Session, LogSigner, datetime], str]) -> int:
    now = datetime.now(UTC)
    with _database(read_only=False) as (settings, session):
        message = action(session, _ledger_signer(settings), now)
    stdout.print(message, markup=False)
    return 0


def agency_add_command(args: argparse.Namespace) -> int:
    """Handle `exchange admin agency add`."""
    key_input = _key_input(args, agency_id=args.id)

    def action(session: Session, log: LogSigner, now: datetime) -> str:
        given = key_input(now)
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
            public_key=given.pem,
            not_before=given.not_before,
            not_after=given.not_after,
            operator=_operator(),
        )
        return (
            f"registered agency {args.id} ({args.country}) with key {key.key_id}, "
            f"{_valid(key.not_before, key.not_after)}"
        )

    return _run(action)


def agency_add_key_command(args: argparse.Namespace) -> int:
    """Handle `exchange admin agency add-key`."""
    key_input = _key_input(args, agency_id=args.id)

    def action(session: Session, log: LogSigner, now: datetime) -> str:
        given = key_input(now)
        key = agencies.register_key(
            session,
            log=log,
            now=now,
            agency_id=args.id,
            public_key=given.pem,
            not_before=given.not_before,
            not_after=given.not_after,
            operator=_operator(),
        )
        return f"registered key {key.key_id} of agency {args.id}, {_valid(key.not_before, key.not_after)}"

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


def client_disable_command(args: argparse.Namespace) -> int:
    """Handle `exchange admin client disable`."""

    def action(session: Session, log: LogSigner, now: datetime) -> str:
        agencies.disable_client(session, log=log, now=now, client_id=args.id, operator=_operator())
        return f"disabled client {args.id} as of {now.isoformat()}: its logins are refused"

    return _run(action)


def client_enable_command(args: argparse.Namespace) -> int:
    """Handle `exchange admin client enable`."""

    def action(session: Session, log: LogSigner, now: datetime) -> str:
        agencies.enable_client(session, log=log, now=now, client_id=args.id, operator=_operator())
        return f"enabled client {args.id}: it may log in again"

    return _run(action)


def _valid(not_before: datetime, not_after: datetime) -> str:
    return f"valid {_time(not_before)} to {_time(not_after)}"


def _time(value: datetime | None) -> str:
    return "" if value is None else value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _key_state(row: AgencyKeyRow, now: datetime) -> str:
    if row.revoked_at is not None and row.revoked_at <= now:
        return "revoked"
    if now < row.not_before:
        return "not yet valid"
    if now >= row.not_after:
        return "expired"
    return "valid"


def _list(
    args: argparse.Namespace,
    *,
    title: str,
    read: Callable[[Session, datetime], list[dict[str, str | None]]],
) -> int:
    now = datetime.now(UTC)
    with _database(read_only=True) as (_settings_in_force, session):
        rows = read(session, now)
    if args.json:
        print_json(rows)
        return 0
    if not rows:
        stdout.print(f"no {title} registered", markup=False)
        return 0
    # Plain aligned columns, never wrapped: an operator greps and copies ids from them.
    header = [column.replace("_", " ") for column in rows[0]]
    cells = [[value or "-" for value in row.values()] for row in rows]
    widths = [max(len(line[i]) for line in [header, *cells]) for i in range(len(header))]
    for line in [header, ["-" * w for w in widths], *cells]:
        text = "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True))
        stdout.print(text.rstrip(), markup=False, crop=False, overflow="ignore")
    return 0


def agency_list_command(args: argparse.Namespace) -> int:
    """Handle `exchange admin agency list`."""
    return _list(
        args,
        title="agencies",
        read=lambda session, _now: [
            {
                "id": a.id,
                "country": a.country,
                "name": a.name,
                "registered_at": _time(a.created_at),
            }
            for a in agencies.list_agencies(session)
        ],
    )


def agency_keys_command(args: argparse.Namespace) -> int:
    """Handle `exchange admin agency keys`."""
    return _list(
        args,
        title="keys",
        read=lambda session, now: [
            {
                "key_id": k.key_id,
                "agency": k.agency_id,
                "state": _key_state(k, now),
                "not_before": _time(k.not_before),
                "not_after": _time(k.not_after),
                "revoked_at": _time(k.revoked_at) or None,
            }
            for k in agencies.list_keys(session, agency_id=args.id)
        ],
    )


def client_list_command(args: argparse.Namespace) -> int:
    """Handle `exchange admin client list`."""
    return _list(
        args,
        title="clients",
        read=lambda session, now: [
            {
                "id": c.id,
                "agency": c.agency_id,
                "role": c.role,
                "key_id": c.key_id,
                "state": (
                    "disabled" if c.disabled_at is not None and c.disabled_at <= now else "enabled"
                ),
                "disabled_at": _time(c.disabled_at) or None,
            }
            for c in agencies.list_clients(session, agency_id=args.agency)
        ],
    )

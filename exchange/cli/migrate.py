"""`exchange migrate`: create the node's database schema, or bring it to the newest revision."""

from __future__ import annotations

import argparse
from typing import Any

from pydantic import ValidationError
from sqlalchemy.exc import SQLAlchemyError

from exchange.cli.database import connect_error, database_url, shown
from exchange.cli.output import CommandError, stdout
from exchange.errors import ExchangeError
from exchange.settings import Settings
from exchange.storage.db import create_schema, make_engine, schema_revisions


def register(subparsers: Any) -> None:
    """Add `migrate`."""
    migrate = subparsers.add_parser(
        "migrate",
        help="create the database schema or upgrade it to this version (run once, before replicas)",
        description="Brings the node's database (settings as for `exchange serve`) to the newest "
        "schema revision. The one command besides `serve` that creates a database: with the "
        "default SQLite settings it creates the data dir and the database file.",
    )
    migrate.add_argument("--db", help="database URL (default: the settings' database)")
    migrate.set_defaults(handler=migrate_command)


def migrate_command(args: argparse.Namespace) -> int:
    """Handle `exchange migrate`."""
    try:
        settings = Settings()
    except ValidationError as exc:
        raise CommandError(f"bad settings: {exc}") from exc
    url, _ = database_url(settings, args.db)
    if not args.db and settings.database_url is None:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    try:
        engine = make_engine(url, liveness=settings.postgres_liveness())
    except ExchangeError as exc:
        raise CommandError(exc.message) from exc
    try:
        before, head = schema_revisions(engine)
        if before != head:
            create_schema(engine)
    except SQLAlchemyError as exc:
        raise CommandError(connect_error(exc, url)) from exc
    finally:
        engine.dispose()
    where = shown(url)
    if before == head:
        stdout.print(f"database {where} is at schema revision {head}: nothing to do", markup=False)
    elif before is None:
        stdout.print(f"database {where}: schema created at revision {head}", markup=False)
    else:
        stdout.print(f"database {where}: migrated from revision {before} to {head}", markup=False)
    return 0

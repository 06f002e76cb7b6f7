"""Open the node's existing database for the operator's commands, and say plainly what is wrong.

`exchange admin` and `exchange ledger verify|proof` read and write a node's database; they
never create one (a typo in EXCHANGE_DATA_DIR would otherwise leave an empty `./var` and a
fresh, empty ledger behind, and the command would "succeed" on the wrong node). Only
`exchange migrate` and `exchange serve` create a database. Driver messages (hosts, SQL,
library internals) never reach the terminal: each failure is named in a sentence.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import Engine
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

from exchange.cli.output import CommandError
from exchange.errors import ExchangeError
from exchange.settings import Settings
from exchange.storage.db import PostgresLiveness, make_engine, schema_revisions

# SQLSTATE of the server's refusals on connect (PostgreSQL Appendix A).
_INVALID_CATALOG_NAME = "3D000"
_AUTHORIZATION_CLASS = "28"


def database_url(settings: Settings, override: str | None = None) -> tuple[str, str]:
    """The database URL a command would use, and where that choice came from (for messages)."""
    if override:
        return override, "--db"
    if settings.database_url:
        return settings.database_url, "EXCHANGE_DATABASE_URL"
    if "data_dir" in settings.model_fields_set:
        return settings.resolved_database_url, "EXCHANGE_DATA_DIR"
    return (
        settings.resolved_database_url,
        "the default: neither EXCHANGE_DATABASE_URL nor EXCHANGE_DATA_DIR is set",
    )


def shown(url: str) -> str:
    """The URL as the operator may see it: no password."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "(an unparsable URL)"


def _sqlite_path(url: str) -> Path | None:
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return None
    if not parsed.database or parsed.database == ":memory:":
        raise CommandError(f"database {url} is not a file: name the node's SQLite file")
    return Path(parsed.database)


def connect_error(exc: SQLAlchemyError, url: str) -> str:
    """A plain sentence for a failure to reach the database (never the driver's text)."""
    cause = exc.orig if hasattr(exc, "orig") else None
    sqlstate = getattr(cause, "sqlstate", None) or ""
    text = str(cause or exc)
    where = shown(url)
    if sqlstate == _INVALID_CATALOG_NAME or ("database" in text and "does not exist" in text):
        return (
            f"database {where} does not exist on its server: create it (CREATE DATABASE), "
            'then run "exchange migrate"'
        )
    if sqlstate.startswith(_AUTHORIZATION_CLASS) or "authentication failed" in text:
        return f"the database server refused the credentials in {where}"
    if "unable to open database file" in text:
        return f"cannot open the SQLite file of {where} (permissions, or a missing folder)"
    return (
        f"cannot connect to database {where}: the server does not answer or refused the "
        "connection (is it running, and are the host and port right?)"
    )


@contextmanager
def existing_database(
    url: str, source: str, *, liveness: PostgresLiveness | None = None
) -> Iterator[Engine]:
    """An engine on the node's database at schema head; `CommandError` if it is not there.

    Refuses, without creating anything: a SQLite file that does not exist, a server that
    does not answer or has no such database, a database without the exchange's schema or at
    an older revision. Any database error while the block runs becomes a plain message too.
    """
    try:
        path = _sqlite_path(url)
    except ArgumentError as exc:
        raise CommandError(f"database URL from {source} is not a valid SQLAlchemy URL") from exc
    if path is not None and not path.is_file():
        raise CommandError(
            f"database {path.resolve()} does not exist (from {source}); "
            'run "exchange migrate" to create it, or point EXCHANGE_DATA_DIR or '
            "EXCHANGE_DATABASE_URL at the node's database"
        )
    try:
        engine = make_engine(url, liveness=liveness)
    except ExchangeError as exc:
        raise CommandError(exc.message) from exc
    try:
        try:
            current, head = schema_revisions(engine)
        except SQLAlchemyError as exc:
            raise CommandError(connect_error(exc, url)) from exc
        if current is None:
            raise CommandError(
                f'database {shown(url)} has no exchange schema; run "exchange migrate" first'
            )
        if current != head:
            raise CommandError(
                f"database {shown(url)} is at schema revision {current}, this exchange needs "
                f'{head}; run "exchange migrate" (with this version) first'
            )
        try:
            yield engine
        except SQLAlchemyError as exc:
            raise CommandError(
                f"database {shown(url)} failed during the command (connection lost or a server "
                "error); the command did not complete"
            ) from exc
    finally:
        engine.dispose()

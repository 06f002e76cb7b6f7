"""The database engine and session factory shared by the service, and schema migration to head.

SQLite runs in WAL mode with foreign keys on, and every transaction begins with
`BEGIN IMMEDIATE`, so writers take the database lock up front and serialize instead of failing
with "database is locked" when a read transaction tries to upgrade; the writers of one process
first take turns on a lock of the engine's, rather than by polling SQLite's. The one exception
is a session opened with `session_scope(engine, read_only=True)`: it begins with a deferred
`BEGIN` under `PRAGMA query_only`, so it reads one WAL snapshot without queueing behind
writers, and any write it attempts fails instead of upgrading. PostgreSQL goes through psycopg 3
(`postgresql+psycopg://`); there a read-only session is a `READ ONLY` transaction.

A PostgreSQL connection is made to notice a vanished peer (see `PostgresLiveness`): TCP
keepalives on both ends, and `client_connection_check_interval` so that the backend of a node
that died mid-statement ends its transaction, and lets go of the ledger's advisory lock, within
that interval instead of when the statement finishes.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlmodel import Session

from exchange.errors import InvalidInputError

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"
SQLITE_BUSY_TIMEOUT_MS = 30_000
# Connection execution option marking a read-only transaction (read by the SQLite begin hook).
READ_ONLY_OPTION = "exchange_read_only"
# Key in the pooled DBAPI connection's `info`: the PRAGMA query_only value last set on it.
_QUERY_ONLY_INFO = "exchange_query_only"


class _SQLiteConnection(sqlite3.Connection):
    """A pysqlite connection that lets go of its engine's writer lock when its transaction ends."""

    _writer_lock: threading.Lock | None = None

    def take_writer_lock(self, lock: threading.Lock) -> None:
        """Wait for the process's writer turn, as long as SQLite would wait for its lock."""
        if self._writer_lock is not None:
            return  # a transaction ended by SQL text rather than commit(): the turn is ours still
        if not lock.acquire(timeout=SQLITE_BUSY_TIMEOUT_MS / 1000):
            raise OperationalError(
                "BEGIN IMMEDIATE", None, sqlite3.OperationalError("database is locked")
            )
        self._writer_lock = lock

    def let_go(self) -> None:
        """Give the writer turn to the next thread, if this connection holds it."""
        lock, self._writer_lock = self._writer_lock, None
        if lock is not None:
            lock.release()

    def commit(self) -> None:
        try:
            super().commit()
        finally:
            self.let_go()

    def rollback(self) -> None:
        try:
            super().rollback()
        finally:
            self.let_go()

    def close(self) -> None:
        try:
            super().close()
        finally:
            self.let_go()


@dataclass(frozen=True)
class PostgresLiveness:
    """How soon each end of a PostgreSQL connection notices that the other end is gone.

    `keepalives_*` (seconds) are TCP keepalives set on both ends: by libpq on the node's socket
    (a vanished database server fails the node's query instead of hanging it) and, through the
    server's `tcp_keepalives_*` settings, on the backend's socket (a node whose host vanished
    without closing its connections). `client_check_interval_ms` is PostgreSQL's
    `client_connection_check_interval` (version 14 and later; 0 leaves it off): while a
    statement runs, the backend checks that often whether its client closed the connection, as
    the kernel does for a node process that was killed, and then aborts the statement and its
    transaction, which releases the ledger's transaction-scoped advisory lock.
    """

    keepalives_idle: int = 30
    keepalives_interval: int = 10
    keepalives_count: int = 3
    client_check_interval_ms: int = 5000

    def connect_args(self, url_options: str | None = None) -> dict[str, Any]:
        """The psycopg connection keywords; `url_options` (the URL's own) are kept, after ours."""
        server = [
            f"-c tcp_keepalives_idle={self.keepalives_idle}",
            f"-c tcp_keepalives_interval={self.keepalives_interval}",
            f"-c tcp_keepalives_count={self.keepalives_count}",
        ]
        if self.client_check_interval_ms > 0:
            server.append(f"-c client_connection_check_interval={self.client_check_interval_ms}")
        if url_options:
            server.append(
                url_options
            )  # later -c settings win: the operator's URL has the last word
        return {
            "keepalives": 1,
            "keepalives_idle": self.keepalives_idle,
            "keepalives_interval": self.keepalives_interval,
            "keepalives_count": self.keepalives_count,
            "options": " ".join(server),
        }


def make_engine(url: str, *, liveness: PostgresLiveness | None = None, **kwargs: Any) -> Engine:
    """An engine for `url` (SQLite file or `postgresql+psycopg://`), configured for the ledger.

    `liveness` applies to PostgreSQL only (default: `PostgresLiveness()`'s documented values).
    Raises `InvalidInputError` for any other database.
    """
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        engine = create_engine(
            url,
            isolation_level=None,  # pysqlite's own BEGIN handling off; the events below own it
            connect_args={
                "timeout": SQLITE_BUSY_TIMEOUT_MS / 1000,
                "check_same_thread": False,
                "factory": _SQLiteConnection,
            },
            **kwargs,
        )
        _configure_sqlite(engine)
        return engine
    if parsed.get_backend_name() == "postgresql" and parsed.get_driver_name() in ("psycopg", ""):
        url_options = parsed.query.get("options")
        if isinstance(url_options, tuple):
            url_options = " ".join(url_options)
        parsed = parsed.difference_update_query(["options"]).set(drivername="postgresql+psycopg")
        connect_args = (liveness or PostgresLiveness()).connect_args(url_options)
        return create_engine(
            parsed.render_as_string(hide_password=False),
            pool_pre_ping=True,
            connect_args={**connect_args, **kwargs.pop("connect_args", {})},
            **kwargs,
        )
    raise InvalidInputError(
        f"unsupported database URL {parsed.drivername!r}: use sqlite or postgresql+psycopg"
    )


def _configure_sqlite(engine: Engine) -> None:
    # The threads of this process take turns at writing: SQLite's busy handler polls with
    # sleeps of up to 100 ms, so writers of one process contending through it wait unfairly
    # (seconds at the tail) and leave the lock idle between polls. Other processes on the
    # same file still meet at SQLite's lock and its busy handler.
    writer_lock = threading.Lock()

    # See: https://docs.sqlalchemy.org/en/20/dialects/sqlite.html#serializable-isolation-savepoints-transactional-ddl
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        # FULL, not WAL's usual NORMAL: NORMAL can lose the last commits on power loss, and a
        # lost `bundle.fetched` entry after the bytes went out would be a gap in custody.
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        read_only = bool(connection.get_execution_options().get(READ_ONLY_OPTION, False))
        # query_only is per connection and outlives the transaction: set it whenever the kind
        # of transaction changes, so a writer never inherits a reader's setting. `info` lives as
        # long as the DBAPI connection (cleared when the pool reconnects).
        info = connection.connection.info
        if info.get(_QUERY_ONLY_INFO) is not read_only:
            connection.exec_driver_sql(f"PRAGMA query_only={'ON' if read_only else 'OFF'}")
            info[_QUERY_ONLY_INFO] = read_only
        # A reader never takes the write lock, so it need not queue behind the writers holding
        # it: WAL gives it one consistent snapshot, and query_only makes any write it attempts
        # fail loudly instead of upgrading the transaction (which could fail with SQLITE_BUSY).
        if read_only:
            connection.exec_driver_sql("BEGIN")
            return
        driver = connection.connection.driver_connection
        if isinstance(driver, _SQLiteConnection):
            # Released by the connection's commit, rollback or close, whichever ends it; a
            # timeout fails like SQLite's own ("database is locked").
            driver.take_writer_lock(writer_lock)
        try:
            connection.exec_driver_sql("BEGIN IMMEDIATE")
        except BaseException:
            if isinstance(driver, _SQLiteConnection):
                driver.let_go()
            raise


# SQLite primary result codes of a database that is busy, locked, out of room or unreadable:
# worth a retry. Any other code (SQLITE_ERROR: a syntax error, a missing table or column;
# SQLITE_READONLY: a write in a read-only transaction) is a bug, and retrying cannot help.
_SQLITE_TRANSIENT: Final = frozenset(
    {
        sqlite3.SQLITE_BUSY,
        sqlite3.SQLITE_LOCKED,
        sqlite3.SQLITE_NOMEM,
        sqlite3.SQLITE_IOERR,
        sqlite3.SQLITE_FULL,
        sqlite3.SQLITE_CANTOPEN,
        sqlite3.SQLITE_PROTOCOL,
    }
)
# PostgreSQL SQLSTATE classes and codes of an outage or contention: connection exception,
# insufficient resources, operator intervention (shutdown, cancel), system error, transaction
# rollback (serialization failure, deadlock), lock not available.
# See: https://www.postgresql.org/docs/current/errcodes-appendix.html
_PG_TRANSIENT_CLASSES: Final = frozenset({"08", "53", "57", "58", "40"})
_PG_TRANSIENT_CODES: Final = frozenset({"55P03"})


def is_transient(exc: DBAPIError) -> bool:
    """Whether a database error means "down or busy, retry later" rather than a bug.

    Drivers file both under `OperationalError`: psycopg raises it for a statement with more
    than 65,535 parameters as for a refused connection, SQLite for a syntax error as for a
    locked database. Only an outage may be answered 503 with `Retry-After`; a bug retried
    stays a bug, so it must surface as one (500).
    """
    if exc.connection_invalidated:
        return True
    orig = exc.orig
    if isinstance(orig, sqlite3.Error):
        code = getattr(orig, "sqlite_errorcode", None)
        # Errors built by hand (the in-process writer lock's timeout) carry no code.
        return code is None or (code & 0xFF) in _SQLITE_TRANSIENT
    sqlstate = getattr(orig, "sqlstate", None)
    if isinstance(sqlstate, str):
        return sqlstate[:2] in _PG_TRANSIENT_CLASSES or sqlstate in _PG_TRANSIENT_CODES
    if hasattr(orig, "pgconn"):
        # psycopg without a SQLSTATE: the server never answered. With a connection attached,
        # it could not be reached or was lost; without one, psycopg refused the statement
        # before sending it (a client-side misuse, like too many parameters).
        return getattr(orig, "pgconn", None) is not None
    return isinstance(exc, OperationalError)


def is_sqlite(engine_or_session: Engine | Session) -> bool:
    """Whether the engine (or the session's bound engine) is SQLite."""
    bind = (
        engine_or_session.get_bind()
        if isinstance(engine_or_session, Session)
        else engine_or_session
    )
    return bind.dialect.name == "sqlite"


def alembic_config(engine: Engine) -> Config:
    """An Alembic configuration for the migrations shipped inside the package (no alembic.ini)."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["engine"] = engine
    return config


def create_schema(engine: Engine) -> None:
    """Run every Alembic migration up to head on `engine` (idempotent)."""
    command.upgrade(alembic_config(engine), "head")


def schema_revisions(engine: Engine) -> tuple[str | None, str]:
    """The database's Alembic revision (None when it has no exchange schema) and the newest one.

    Reads only: unlike `create_schema`, it never creates a table.
    """
    head = ScriptDirectory.from_config(alembic_config(engine)).get_current_head()
    if head is None:  # pragma: no cover - the package ships its migrations
        raise RuntimeError(f"no migrations in {MIGRATIONS_DIR}")
    with engine.connect() as connection:
        current = MigrationContext.configure(connection).get_current_revision()
    return current, head


def _read_only_options(engine: Engine) -> dict[str, Any]:
    if engine.dialect.name == "postgresql":
        # psycopg sets its connection read-only, so the transaction begins READ ONLY; SQLAlchemy
        # resets the characteristic when the connection goes back to the pool.
        return {"postgresql_readonly": True}
    return {READ_ONLY_OPTION: True}


@contextmanager
def session_scope(engine: Engine, *, read_only: bool = False) -> Iterator[Session]:
    """One transaction: commit if the block returns, roll back if it raises.

    `read_only=True` for a use case that never writes: it does not take SQLite's write lock
    (see the module docstring), and any write in it raises.
    """
    options = _read_only_options(engine) if read_only else {}
    with Session(engine, expire_on_commit=False, execution_options=options) as session:
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise

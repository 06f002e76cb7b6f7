"""Schema migration races; read-only sessions; SQLite writers taking turns within a process."""

from __future__ import annotations

import multiprocessing
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, inspect, text
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError, PendingRollbackError
from sqlmodel import Session

from exchange.settings import Settings
from exchange.storage.db import (
    PostgresLiveness,
    alembic_config,
    create_schema,
    make_engine,
    session_scope,
)


def _migrate(url: str) -> None:
    engine = make_engine(url)
    try:
        create_schema(engine)
    finally:
        engine.dispose()


def test_four_nodes_migrating_at_once_all_succeed(fresh_pg_url: str):
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_migrate, args=(fresh_pg_url,)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]
    engine = make_engine(fresh_pg_url)
    try:
        head = ScriptDirectory.from_config(alembic_config(engine)).get_current_head()
        with engine.connect() as conn:
            versions = conn.exec_driver_sql("SELECT version_num FROM alembic_version").all()
        assert versions == [(head,)]
        assert {"ledger_entry", "ledger_hash", "ledger_checkpoint"} <= set(
            inspect(engine).get_table_names()
        )
    finally:
        engine.dispose()


# --------------------------------------------------------------------------- read-only sessions


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    engine = make_engine(db_url)
    with session_scope(engine) as session:
        session.execute(text("CREATE TABLE item (n INTEGER PRIMARY KEY)"))
    yield engine
    engine.dispose()


def _count(session: Session) -> int:
    return int(session.execute(text("SELECT count(*) FROM item")).scalar_one())


def _insert(engine: Engine, *values: int, read_only: bool = False) -> None:
    with session_scope(engine, read_only=read_only) as session:
        for n in values:
            session.execute(text("INSERT INTO item VALUES (:n)"), {"n": n})


def _fail_after_insert(engine: Engine) -> None:
    with session_scope(engine) as session:
        session.execute(text("INSERT INTO item VALUES (1)"))
        raise RuntimeError("use case failed")


def _invalidate_after_insert(engine: Engine) -> None:
    with session_scope(engine) as session:
        session.execute(text("INSERT INTO item VALUES (3)"))
        session.connection().invalidate()  # the DB-API connection is closed under it


def test_read_only_session_reads_and_refuses_writes(engine: Engine):
    with session_scope(engine) as session:
        session.execute(text("INSERT INTO item VALUES (1)"))
    with session_scope(engine, read_only=True) as session:
        assert _count(session) == 1
    with pytest.raises(DBAPIError, match=r"read-only|readonly"):
        _insert(engine, 2, read_only=True)
    # The pooled connection goes back to writing for the next ordinary session.
    with session_scope(engine) as session:
        session.execute(text("INSERT INTO item VALUES (3)"))
    with session_scope(engine, read_only=True) as session:
        assert _count(session) == 2


def test_sqlite_reader_does_not_wait_for_an_open_writer(tmp_path: Path):
    engine = make_engine(f"sqlite:///{tmp_path / 'x.db'}")
    with session_scope(engine) as session:
        session.execute(text("CREATE TABLE item (n INTEGER PRIMARY KEY)"))
    with session_scope(engine) as writer:
        writer.execute(text("INSERT INTO item VALUES (1)"))
        # The writer holds SQLite's write lock and the process's writer turn; a reader on the
        # same thread would block on either (and fail after the busy timeout) if it took them.
        with session_scope(engine, read_only=True) as reader:
            assert _count(reader) == 0  # its own snapshot, without the uncommitted row
    with session_scope(engine, read_only=True) as reader:
        assert _count(reader) == 1
    engine.dispose()


def _write_beside_a_reader(engine: Engine, n: int) -> None:
    # The reader takes the pooled connection the last transaction ran on, so the write needs
    # another: had that one kept the writer turn, the write would time out and fail.
    with session_scope(engine, read_only=True) as reader:
        _count(reader)
        _insert(engine, n)


def test_sqlite_writer_turn_is_given_back_however_a_transaction_ends(tmp_path: Path):
    # One pooled connection, so that the reader below always gets the one just used.
    engine = make_engine(f"sqlite:///{tmp_path / 'x.db'}", pool_size=1, max_overflow=4)
    with session_scope(engine) as session:
        session.execute(text("CREATE TABLE item (n INTEGER PRIMARY KEY)"))
    _insert(engine, 10)
    _write_beside_a_reader(engine, 11)
    with pytest.raises(RuntimeError):
        _fail_after_insert(engine)
    _write_beside_a_reader(engine, 12)
    with pytest.raises(IntegrityError):
        _insert(engine, 2, 2)
    _write_beside_a_reader(engine, 13)
    with pytest.raises(PendingRollbackError):
        _invalidate_after_insert(engine)
    _write_beside_a_reader(engine, 14)
    with pytest.raises(OperationalError, match="readonly"):
        _insert(engine, 4, read_only=True)
    _write_beside_a_reader(engine, 15)
    # Begun on one thread and committed on another, as FastAPI runs a SessionDep.
    with ThreadPoolExecutor(max_workers=2) as pool:
        session = pool.submit(lambda: Session(engine)).result()
        pool.submit(lambda: session.execute(text("INSERT INTO item VALUES (5)"))).result()
        pool.submit(session.commit).result()
        pool.submit(session.close).result()
    _write_beside_a_reader(engine, 16)
    with session_scope(engine, read_only=True) as session:
        rows = [r[0] for r in session.execute(text("SELECT n FROM item ORDER BY n"))]
    assert rows == [5, 10, 11, 12, 13, 14, 15, 16]
    engine.dispose()


def test_sqlite_writers_on_many_threads_all_commit(tmp_path: Path):
    engine = make_engine(f"sqlite:///{tmp_path / 'x.db'}")
    with session_scope(engine) as session:
        session.execute(text("CREATE TABLE item (n INTEGER PRIMARY KEY)"))

    def write(n: int) -> None:
        with session_scope(engine) as session:
            # Read, then write what was read: lost updates would show as a short count.
            seen = _count(session)
            session.execute(text("INSERT INTO item VALUES (:n)"), {"n": n * 1000 + seen})

    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(write, range(200)))
    with session_scope(engine, read_only=True) as session:
        rows = sorted(r[0] % 1000 for r in session.execute(text("SELECT n FROM item")))
    assert rows == list(range(200))  # every writer saw all the commits before its own
    engine.dispose()


# ------------------------------------------------------- PostgreSQL: noticing a vanished peer


def _shown(engine: Engine, *names: str) -> dict[str, str]:
    with engine.connect() as conn:
        return {n: str(conn.exec_driver_sql(f"SHOW {n}").scalar_one()) for n in names}


SERVER_SIDE = (
    "client_connection_check_interval",
    "tcp_keepalives_idle",
    "tcp_keepalives_interval",
    "tcp_keepalives_count",
)


def test_postgres_connections_carry_the_configured_keepalives_and_client_check(pg_url: str):
    settings = Settings(
        database_url=pg_url,
        db_keepalives_idle=21,
        db_keepalives_interval=7,
        db_keepalives_count=4,
        db_client_check_interval_ms=1500,
    )
    engine = make_engine(settings.resolved_database_url, liveness=settings.postgres_liveness())
    try:
        assert _shown(engine, *SERVER_SIDE) == {
            "client_connection_check_interval": "1500ms",
            "tcp_keepalives_idle": "21",
            "tcp_keepalives_interval": "7",
            "tcp_keepalives_count": "4",
        }
        with engine.connect() as conn:
            libpq = conn.connection.driver_connection.info.get_parameters()  # type: ignore[union-attr]
        assert {k: libpq.get(k) for k in ("keepalives", "keepalives_idle")} == {
            "keepalives": "1",
            "keepalives_idle": "21",
        }
        assert (libpq.get("keepalives_interval"), libpq.get("keepalives_count")) == ("7", "4")
    finally:
        engine.dispose()


def test_postgres_liveness_defaults_are_the_documented_ones(pg_url: str):
    engine = make_engine(pg_url, liveness=Settings().postgres_liveness())
    try:
        assert _shown(engine, *SERVER_SIDE) == {
            "client_connection_check_interval": "5s",
            "tcp_keepalives_idle": "30",
            "tcp_keepalives_interval": "10",
            "tcp_keepalives_count": "3",
        }
    finally:
        engine.dispose()


def test_postgres_options_in_the_url_are_kept_and_win(pg_url: str):
    url = f"{pg_url}?options=-c%20statement_timeout%3D4321%20-c%20tcp_keepalives_count%3D9"
    engine = make_engine(url, liveness=PostgresLiveness(client_check_interval_ms=0))
    try:
        assert _shown(engine, "statement_timeout", "tcp_keepalives_count") == {
            "statement_timeout": "4321ms",
            "tcp_keepalives_count": "9",
        }
        assert _shown(engine, "client_connection_check_interval") == {
            "client_connection_check_interval": "0"  # 0: left off, for PostgreSQL before 14
        }
    finally:
        engine.dispose()

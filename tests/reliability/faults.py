"""Faults injected into the real database at the ledger commit point, and the custody invariants.

The seal of a package updates its row and appends `package.sealed` in one transaction; the
bytes were stored before (PUT). A trigger on `ledger_entry` puts a fault exactly at the
ledger insert of that transaction, with no change to the exchange's code:

- `install_abort_trigger`: the insert raises (SQLite `RAISE(ABORT)`, PostgreSQL `RAISE
  EXCEPTION`), so the transaction fails after the package row was already updated in it.
  It can aim at another table and statement too (the upload's `package_file` update).
- `install_hold_trigger`: the insert does not return, so the process can be killed there.
  PostgreSQL sleeps in the trigger (`pg_sleep`), visible in `pg_stat_activity`. SQLite has no
  sleep: the trigger first writes more than the page cache holds (SQLite spills those
  uncommitted pages into the WAL file, which is how a test sees that the transaction reached
  the trigger), then runs a cross join that takes hours.

`custody_violations` checks both directions: every sealed package has exactly one
`package.sealed` entry for its manifest, and every such entry's files are in the store and
hash to the manifest's values.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from exchange.errors import ExchangeError
from exchange.storage.blobstore import BlobStore

TRIGGER = "fault_at_ledger_commit"
FUNCTION = "fault_at_ledger_commit_fn"
ABORT_MESSAGE = "injected fault at the ledger commit"
BURN_ROWS = 160  # SQLite: BURN_ROWS**2 KiB spilled, BURN_ROWS**5 rows joined (hours)
SPILL_TABLE = "fault_spill"
BURN_TABLE = "fault_burn"
HOLD_SECONDS = 30  # PostgreSQL: bounded, so a forgotten trigger cannot hang a run for long
READ_CHUNK = 1024 * 1024


def is_sqlite(database_url: str) -> bool:
    """Whether the URL names a SQLite database."""
    return make_url(database_url).get_backend_name() == "sqlite"


def sqlite_path(database_url: str) -> Path:
    """The file of a SQLite URL."""
    database = make_url(database_url).database
    assert database, database_url  # a file URL is a precondition of every caller
    return Path(database)


def libpq_url(database_url: str) -> str:
    """A SQLAlchemy PostgreSQL URL as psycopg takes it."""
    return make_url(database_url).set(drivername="postgresql").render_as_string(hide_password=False)


@contextmanager
def _sqlite(database_url: str) -> Iterator[sqlite3.Connection]:
    # Autocommit, with the exchange's busy timeout, so DDL waits for a writer instead of failing.
    conn = sqlite3.connect(sqlite_path(database_url), timeout=30, isolation_level=None)
    try:
        yield conn
    finally:
        conn.close()


def _pg(database_url: str, *statements: str) -> None:
    with psycopg.connect(libpq_url(database_url), autocommit=True, connect_timeout=5) as conn:
        for statement in statements:
            conn.execute(statement.encode())


def install_abort_trigger(
    database_url: str, *, table: str = "ledger_entry", event: str = "INSERT"
) -> None:
    """Make every `event` (INSERT, UPDATE) on `table` fail with `ABORT_MESSAGE`."""
    if is_sqlite(database_url):
        with _sqlite(database_url) as conn:
            conn.execute(
                f"CREATE TRIGGER {TRIGGER} BEFORE {event} ON {table} "
                f"BEGIN SELECT RAISE(ABORT, '{ABORT_MESSAGE}'); END"
            )
        return
    _pg(
        database_url,
        f"CREATE FUNCTION {FUNCTION}() RETURNS trigger LANGUAGE plpgsql AS "
        f"$$ BEGIN RAISE EXCEPTION '{ABORT_MESSAGE}'; END $$",
        f"CREATE TRIGGER {TRIGGER} BEFORE {event} ON {table} "
        f"FOR EACH ROW EXECUTE FUNCTION {FUNCTION}()",
    )


def install_hold_trigger(database_url: str) -> None:
    """Make every insert into `ledger_entry` stall inside its transaction (see the module doc)."""
    if is_sqlite(database_url):
        with _sqlite(database_url) as conn:
            conn.execute(f"CREATE TABLE {BURN_TABLE} (x INTEGER)")
            conn.executemany(
                f"INSERT INTO {BURN_TABLE} VALUES (?)",  # noqa: S608  # fixed names
                [(i,) for i in range(BURN_ROWS)],
            )
            conn.execute(f"CREATE TABLE {SPILL_TABLE} (b BLOB)")
            conn.execute(
                f"CREATE TRIGGER {TRIGGER} BEFORE INSERT ON ledger_entry BEGIN "  # noqa: S608  # fixed names
                f"INSERT INTO {SPILL_TABLE} SELECT randomblob(1024) "
                f"FROM {BURN_TABLE} a, {BURN_TABLE} b; "
                f"SELECT count(*) FROM {BURN_TABLE} a, {BURN_TABLE} b, {BURN_TABLE} c, "
                f"{BURN_TABLE} d, {BURN_TABLE} e; "
                "END"
            )
        return
    _pg(
        database_url,
        f"CREATE FUNCTION {FUNCTION}() RETURNS trigger LANGUAGE plpgsql AS "
        f"$$ BEGIN PERFORM pg_sleep({HOLD_SECONDS}); RETURN NEW; END $$",
        f"CREATE TRIGGER {TRIGGER} BEFORE INSERT ON ledger_entry "
        f"FOR EACH ROW EXECUTE FUNCTION {FUNCTION}()",
    )


def drop_fault(database_url: str, *, table: str = "ledger_entry") -> None:
    """Remove whichever trigger (and its helpers) was installed on `table`."""
    if is_sqlite(database_url):
        with _sqlite(database_url) as conn:
            conn.execute(f"DROP TRIGGER IF EXISTS {TRIGGER}")
            conn.execute(f"DROP TABLE IF EXISTS {BURN_TABLE}")
            conn.execute(f"DROP TABLE IF EXISTS {SPILL_TABLE}")
        return
    _pg(
        database_url,
        f"DROP TRIGGER IF EXISTS {TRIGGER} ON {table}",
        f"DROP FUNCTION IF EXISTS {FUNCTION}()",
    )


def spilled_rows(database_url: str) -> int:
    """Committed rows of the SQLite hold trigger's spill table (0 once a crash rolled it back)."""
    with _sqlite(database_url) as conn:
        return int(conn.execute(f"SELECT count(*) FROM {SPILL_TABLE}").fetchone()[0])  # noqa: S608


def wal_bytes(database_url: str) -> int:
    """Size of a SQLite database's WAL file (0 if there is none)."""
    wal = sqlite_path(database_url).with_name(sqlite_path(database_url).name + "-wal")
    return wal.stat().st_size if wal.exists() else 0


def held_ledger_inserts(database_url: str) -> list[int]:
    """PostgreSQL: backend pids of the database sleeping in the hold trigger of a ledger insert."""
    database = make_url(database_url).database
    with psycopg.connect(libpq_url(database_url), autocommit=True, connect_timeout=5) as conn:
        rows = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = %s AND state = 'active' "
            "AND wait_event = 'PgSleep' AND query ILIKE 'INSERT INTO ledger_entry%%'",
            (database,),
        ).fetchall()
    return [int(r[0]) for r in rows]


def backend_gone(database_url: str, pid: int) -> bool:
    """PostgreSQL: whether a backend process has ended (its transaction with it)."""
    with psycopg.connect(libpq_url(database_url), autocommit=True, connect_timeout=5) as conn:
        row = conn.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchone()
    return row is None


def wait_for(condition: str, check: Callable[[], bool], *, seconds: float = 60.0) -> None:
    """Poll `check` until it holds; AssertionError naming `condition` after `seconds`."""
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {condition}")
        time.sleep(0.05)


def package_state(database_url: str, package_id: str) -> str:
    """The stored state of one package."""
    engine = create_engine(database_url)
    try:
        with engine.connect() as conn:
            state = conn.execute(
                text("SELECT state FROM package WHERE id = :id"), {"id": package_id}
            ).scalar_one()
    finally:
        engine.dispose()
    return str(state)


def _file_digest(store: BlobStore, key: str) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    with store.open(key) as reader:
        while chunk := reader.read(READ_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def custody_violations(database_url: str, store: BlobStore) -> tuple[list[str], int]:
    """Breaches of "no sealed package without its entry, no entry without its bytes".

    Returns the breaches found (empty when custody holds) and the number of `package.sealed`
    entries whose every file was read back from `store` and matched its manifest.
    """
    engine = create_engine(database_url)
    try:
        with engine.connect() as conn:
            packages = {
                str(r[0]): (str(r[1]), bytes(r[2]), str(r[3]))
                for r in conn.execute(
                    text("SELECT id, state, manifest, manifest_sha256 FROM package")
                ).all()
            }
            entries = [
                (int(r[0]), r[1], json.loads(bytes(r[2])))
                for r in conn.execute(
                    text(
                        "SELECT seq, package_id, data FROM ledger_entry "
                        "WHERE action = 'package.sealed' ORDER BY seq"
                    )
                ).all()
            ]
    finally:
        engine.dispose()

    problems: list[str] = []
    sealed_by: dict[str, list[int]] = {}
    for seq, package_id, _ in entries:
        sealed_by.setdefault(str(package_id), []).append(seq)
    for package_id, (state, _, _) in packages.items():
        if state == "sealed" and len(sealed_by.get(package_id, [])) != 1:
            problems.append(
                f"package {package_id} is sealed with entries {sealed_by.get(package_id, [])}"
            )

    checked = 0
    for seq, package_id, entry in entries:
        if package_id not in packages:
            problems.append(f"entry {seq} seals unknown package {package_id}")
            continue
        state, manifest, manifest_sha256 = packages[package_id]
        if state != "sealed":
            problems.append(f"entry {seq} seals package {package_id}, which is {state}")
        if entry["details"].get("manifest_sha256") != manifest_sha256:
            problems.append(f"entry {seq} names another manifest than package {package_id}'s")
        files: list[dict[str, Any]] = json.loads(manifest)["files"]
        bad = [f"{f['path']}: {why}" for f in files if (why := _file_problem(store, f))]
        problems.extend(f"entry {seq} (package {package_id}) {b}" for b in bad)
        checked += not bad
    return problems, checked


def _file_problem(store: BlobStore, file: dict[str, Any]) -> str | None:
    try:
        digest, size = _file_digest(store, store.key_for(file["sha256"]))
    except ExchangeError as exc:
        return f"unreadable from the store: {exc}"
    if (digest, size) != (file["sha256"], file["size"]):
        return f"stored bytes hash to {digest} ({size} bytes), manifest says {file['sha256']}"
    return None

"""The custody ledger in the database: entry, stored-hash and checkpoint tables; append and read.

`append` and `append_many` run inside the CALLER's transaction, so that a use case's own rows and
the ledger entry recording it commit or roll back together; they never commit. Appends are
serialized by the database (SQLite: the `BEGIN IMMEDIATE` every transaction starts with, see
`exchange.storage.db`; PostgreSQL: a transaction-scoped advisory lock), so no two writers get
the same seq or fork the chain. Every failure raises: nothing is ever skipped silently.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from collections.abc import Callable, Generator, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from operator import itemgetter
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    func,
    text,
)
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import OperationalError
from sqlmodel import Field, Session, SQLModel, col, select

from exchange.errors import (
    DatabaseUnavailableError,
    IntegrityFailureError,
    InvalidInputError,
    NotFoundError,
    StorageError,
)
from exchange.ledger import casechain, merkle, tlog
from exchange.ledger.audit import (
    CHUNK,
    AuditSummary,
    NoteVerifier,
    verify_log,
    verify_log_parallel,
)
from exchange.ledger.checkpoint import Checkpoint, parse_checkpoint_note
from exchange.ledger.entry import GENESIS_PREV, Action, NewEntry, make_entry
from exchange.ledger.proof import proof_document
from exchange.ledger.signer import LogSigner
from exchange.model import parse_json
from exchange.storage.db import is_transient, make_engine, session_scope

# pg_advisory_xact_lock key serializing ledger appends: the first 8 bytes of SHA-256("exchange.ledger").
APPEND_LOCK_KEY = int.from_bytes(
    hashlib.sha256(b"exchange.ledger").digest()[:8], "big", signed=True
)


def _seq_type() -> BigInteger:
    # INTEGER PRIMARY KEY is SQLite's rowid alias (no second index); BIGINT on PostgreSQL.
    return BigInteger().with_variant(Integer(), "sqlite")


class LedgerEntryRow(SQLModel, table=True):
    """One entry: its canonical bytes are the record; the other columns index it."""

    __tablename__ = "ledger_entry"
    # As migration 0003 made them: a case's newest entry, and the few entries naming no case.
    __table_args__ = (
        Index("ix_ledger_entry_case_seq", "case_id", "seq"),
        Index(
            "ix_ledger_entry_caseless",
            "action",
            "seq",
            sqlite_where=text("case_id IS NULL"),
            postgresql_where=text("case_id IS NULL"),
        ),
    )

    seq: int = Field(sa_column=Column(_seq_type(), primary_key=True, autoincrement=False))
    data: bytes = Field(sa_column=Column(LargeBinary(), nullable=False))
    entry_hash: bytes = Field(sa_column=Column(LargeBinary(), nullable=False))
    action: str = Field(sa_column=Column(String(64), nullable=False))
    case_id: str | None = Field(default=None, sa_column=Column(String(128)))
    package_id: str | None = Field(default=None, sa_column=Column(String(36), index=True))
    time: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))


class LedgerHashRow(SQLModel, table=True):
    """One stored Merkle hash at its Go-tlog stored hash index."""

    __tablename__ = "ledger_hash"

    idx: int = Field(sa_column=Column(_seq_type(), primary_key=True, autoincrement=False))
    hash: bytes = Field(sa_column=Column(LargeBinary(), nullable=False))


class LedgerCheckpointRow(SQLModel, table=True):
    """A signed checkpoint note for one tree size."""

    __tablename__ = "ledger_checkpoint"

    size: int = Field(sa_column=Column(_seq_type(), primary_key=True, autoincrement=False))
    note: str = Field(sa_column=Column(Text(), nullable=False))
    created_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))


_ENTRY = LedgerEntryRow.__table__  # type: ignore[attr-defined]  # SQLModel sets it on table=True classes
_HASH = LedgerHashRow.__table__  # type: ignore[attr-defined]
_CHECKPOINT = LedgerCheckpointRow.__table__  # type: ignore[attr-defined]


@dataclass(frozen=True)
class AppendedEntry:
    """An entry as written: its seq, entry hash, canonical bytes and the checkpoint covering it."""

    seq: int
    entry_hash: bytes
    data: bytes
    checkpoint: str


class _HashReader:
    """Reads stored hashes in one query per call, remembering those read or written."""

    def __init__(self, connection: Connection) -> None:
        self._connection = connection
        self.cache: dict[int, bytes] = {}

    def __call__(self, indexes: Sequence[int]) -> list[bytes]:
        missing = [i for i in indexes if i not in self.cache]
        if missing:
            self.cache.update(_select_hashes(self._connection, missing))
        try:
            return [self.cache[i] for i in indexes]
        except KeyError as exc:
            raise StorageError(f"ledger: stored hash {exc.args[0]} is missing") from exc


def _select_hashes(connection: Connection, indexes: Sequence[int]) -> dict[int, bytes]:
    found: dict[int, bytes] = {}
    unique = sorted(set(indexes))
    # Chunked so that no driver meets a parameter limit (SQLite's is 32766).
    for start in range(0, len(unique), 10_000):
        chunk = unique[start : start + 10_000]
        rows = connection.execute(
            select(_HASH.c.idx, _HASH.c.hash).where(_HASH.c.idx.in_(chunk))
        ).all()
        found.update((int(i), bytes(h)) for i, h in rows)
    return found


_ENTRY_COLUMNS = ("seq", "data", "entry_hash", "action", "case_id", "package_id", "time")


def _insert_many(
    connection: Connection, table: str, columns: Sequence[str], rows: Sequence[tuple[object, ...]]
) -> None:
    mark = "?" if connection.dialect.paramstyle == "qmark" else "%s"
    statement = (
        f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join([mark] * len(columns))})"  # noqa: S608  # fixed names, values bound
    )
    connection.exec_driver_sql(statement, list(rows))


def read_hashes(session: Session, indexes: Sequence[int]) -> list[bytes]:
    """The stored hashes at `indexes`, in that order, in one query; raises if any is missing."""
    return _HashReader(session.connection())(indexes)


def _lock(connection: Connection) -> None:
    if connection.dialect.name == "postgresql":
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": APPEND_LOCK_KEY})
    # SQLite: the transaction began with BEGIN IMMEDIATE and already holds the write lock.


def _tip(connection: Connection) -> tuple[int, str]:
    """The next seq and the hex hash of the last entry (GENESIS_PREV for an empty log)."""
    row = connection.exec_driver_sql(
        "SELECT seq, entry_hash FROM ledger_entry ORDER BY seq DESC LIMIT 1"
    ).first()
    if row is None:
        return 0, GENESIS_PREV
    return int(row[0]) + 1, bytes(row[1]).hex()


def _check_tip_is_signed(connection: Connection, size: int) -> None:
    # Never extend a log whose tail no longer matches its last signed checkpoint.
    signed = connection.exec_driver_sql(
        "SELECT size FROM ledger_checkpoint ORDER BY size DESC LIMIT 1"
    ).scalar()
    if int(signed or 0) != size:
        raise IntegrityFailureError(
            f"ledger holds {size} entries but its latest checkpoint covers {int(signed or 0)}; "
            "run `exchange ledger verify`",
            reason="truncated" if size < int(signed or 0) else "unsigned_entries",
        )


def _case_heads(connection: Connection, case_ids: Sequence[str]) -> dict[str, tuple[int, bytes]]:
    """(entries so far, chain head) of each case, from its newest entry: one indexed read each.

    Straight on the driver's cursor: a batch touches hundreds of cases, and SQLAlchemy's
    statement handling would cost more than the reads.
    """
    mark = "?" if connection.dialect.paramstyle == "qmark" else "%s"
    newest = f"SELECT seq, data FROM ledger_entry WHERE case_id = {mark} ORDER BY seq DESC LIMIT 1"  # noqa: S608  # fixed text, values bound
    driver: Any = connection.connection.driver_connection
    cursor = driver.cursor()
    heads: dict[str, tuple[int, bytes]] = {}
    try:
        for case_id in case_ids:
            cursor.execute(newest, (case_id,))
            row = cursor.fetchone()
            if row is None:
                heads[case_id] = (0, casechain.genesis(case_id))
                continue
            seq, data = int(row[0]), bytes(row[1])
            obj = parse_json(data, what="stored ledger entry")
            link = obj.get("case_prev")
            if isinstance(link, str):
                heads[case_id] = (
                    int(obj["case_seq"]) + 1,
                    casechain.advance(bytes.fromhex(link), seq, merkle.leaf_hash(data)),
                )
                continue
            # The case's newest entry predates v2: fold its whole history once; the entry
            # appended now carries the head, so this happens once per case.
            cursor.execute(
                f"SELECT seq, data FROM ledger_entry WHERE case_id = {mark} ORDER BY seq",  # noqa: S608
                (case_id,),
            )
            heads[case_id] = casechain.fold(
                case_id, ((int(s), merkle.leaf_hash(bytes(d))) for s, d in cursor.fetchall())
            )
    finally:
        cursor.close()
    return heads


def lock_appends(session: Session) -> None:
    """Take the append lock now, for a use case that reads, then writes and appends.

    Held until the caller's transaction ends; `append` takes it again at no cost.
    """
    _lock(session.connection())


def append(session: Session, new: NewEntry, *, log: LogSigner, now: datetime) -> AppendedEntry:
    """Append one entry in the caller's transaction (never commits); see `append_many`."""
    return append_many(session, [new], log=log, now=now)[0]


def append_many(
    session: Session, news: Sequence[NewEntry], *, log: LogSigner, now: datetime
) -> list[AppendedEntry]:
    """Append `news` in order, with their stored hashes and one new signed checkpoint.

    Runs in the caller's transaction and never commits; takes the append lock first.
    Raises `InvalidInputError` for an entry that does not fit the schema,
    `IntegrityFailureError` if the stored log no longer ends at its latest checkpoint,
    `DatabaseUnavailableError` if the database is busy or down; any other database error goes
    through untranslated, as it does outside the ledger (the API answers both alike). In every
    case the caller's transaction must roll back.
    """
    if not news:
        raise InvalidInputError("append_many: no entries")
    try:
        connection = session.connection()
        _lock(connection)
        size, prev = _tip(connection)
        _check_tip_is_signed(connection, size)
        read = _HashReader(connection)
        entry_rows: list[tuple[object, ...]] = []
        hash_rows: list[tuple[int, bytes]] = []
        appended: list[tuple[int, bytes, bytes]] = []
        # One bound value for every row: the column type's own conversion, applied once.
        time_processor = _ENTRY.c.time.type.bind_processor(connection.dialect)
        time_value = time_processor(now) if time_processor else now
        heads = _case_heads(
            connection, list(dict.fromkeys(n.case_id for n in news if n.case_id is not None))
        )
        for new in news:
            seq = size
            case_id = new.case_id
            if case_id is None:
                entry, data = make_entry(new, seq=seq, prev=prev, time=now)
                leaf = merkle.leaf_hash(data)
            else:
                case_seq, head = heads[case_id]
                entry, data = make_entry(
                    new, seq=seq, prev=prev, time=now, case_link=(case_seq, head.hex())
                )
                leaf = merkle.leaf_hash(data)
                heads[case_id] = (case_seq + 1, casechain.advance(head, seq, leaf))
            digest = hashlib.sha256(data).digest()
            first = tlog.stored_hash_index(0, seq)
            stored = tlog.stored_hashes_for_record(seq, leaf, read)
            for offset, value in enumerate(stored):
                read.cache[first + offset] = value
                hash_rows.append((first + offset, value))
            entry_rows.append(
                (seq, data, digest, entry.action.value, entry.case_id, entry.package_id, time_value)
            )
            appended.append((seq, digest, data))
            prev = digest.hex()
            size += 1
        root = tlog.tree_hash(size, read)
        note = log.sign(Checkpoint(origin=log.origin, size=size, root_hash=root))
        # Plain DB-API executemany: the ORM's per-row bookkeeping costs more than the inserts.
        _insert_many(connection, "ledger_entry", _ENTRY_COLUMNS, entry_rows)
        _insert_many(connection, "ledger_hash", ("idx", "hash"), hash_rows)
        _insert_many(
            connection,
            "ledger_checkpoint",
            ("size", "note", "created_at"),
            [(size, note, time_value)],
        )
    except OperationalError as exc:
        if not is_transient(exc):
            raise  # a bug, not an outage: no 503
        # The driver's text (hosts, backend messages) stays in the cause, for the server log.
        raise DatabaseUnavailableError(
            "ledger append failed: the database is unavailable or busy"
        ) from exc
    return [AppendedEntry(seq=s, entry_hash=h, data=d, checkpoint=note) for s, h, d in appended]


def append_committed(
    engine: Engine, new: NewEntry, *, log: LogSigner, now: datetime
) -> AppendedEntry:
    """Append one entry in a transaction of its own and commit it (CLI, admin, benchmarks)."""
    with session_scope(engine) as session:
        return append(session, new, log=log, now=now)


def append_many_committed(
    engine: Engine, news: Sequence[NewEntry], *, log: LogSigner, now: datetime
) -> list[AppendedEntry]:
    """`append_many` in a transaction of its own, committed."""
    with session_scope(engine) as session:
        return append_many(session, news, log=log, now=now)


def inclusion_proof(session: Session, seq: int, size: int) -> list[bytes]:
    """The RFC 6962 inclusion proof of entry `seq` in the tree of `size` entries (one query).

    Raises `InvalidInputError` unless 0 <= seq < size <= the log's size.
    """
    connection = session.connection()
    _check_size(connection, size)
    if not 0 <= seq < size:
        raise InvalidInputError(f"seq {seq} is not below tree size {size}")
    return tlog.inclusion_proof(seq, size, _HashReader(connection))


def consistency_proof(session: Session, old: int, new: int) -> list[bytes]:
    """The RFC 6962 consistency proof from tree size `old` to `new` (one query).

    Raises `InvalidInputError` unless 0 < old <= new <= the log's size.
    """
    connection = session.connection()
    if not 0 < old <= new:
        raise InvalidInputError(f"consistency proof needs 0 < old <= new, got {old}, {new}")
    _check_size(connection, new)
    return tlog.consistency_proof(old, new, _HashReader(connection))


def proof(session: Session, seq: int, *, against: int | None = None) -> dict[str, Any]:
    """The proof document (schemas/proof.v1.json) of entry `seq` under the latest checkpoint.

    With `against`, it also carries the signed checkpoint at that older size and the
    consistency proof from it. Raises `NotFoundError` for an unknown entry or a size that has
    no checkpoint, `InvalidInputError` for an impossible size.
    """
    note = latest_checkpoint(session)
    if note is None:
        raise NotFoundError("the ledger is empty")
    size = parse_checkpoint_note(note)[0].size
    entry = get_entry(session, seq)
    if seq >= size:
        raise NotFoundError(f"entry {seq} is not covered by the latest checkpoint (size {size})")
    consistency = None
    if against is not None:
        if not 0 < against <= size:
            raise InvalidInputError(
                f"against size {against} is not between 1 and the tree size {size}"
            )
        consistency = (
            against,
            checkpoint_at(session, against),
            consistency_proof(session, against, size),
        )
    return proof_document(
        checkpoint=note,
        seq=seq,
        tree_size=size,
        leaf=bytes(entry.data),
        inclusion=inclusion_proof(session, seq, size),
        consistency=consistency,
    )


def _check_size(connection: Connection, size: int) -> None:
    entries = _tip(connection)[0]
    if size > entries:
        raise InvalidInputError(f"tree size {size} is beyond the log's {entries} entries")


def tree_size(session: Session) -> int:
    """The number of entries (the seq the next append gets)."""
    return _tip(session.connection())[0]


def latest_checkpoint(session: Session) -> str | None:
    """The newest signed checkpoint note, or None for an empty log."""
    return session.exec(
        select(LedgerCheckpointRow.note).order_by(col(LedgerCheckpointRow.size).desc()).limit(1)
    ).first()


def checkpoint_at(session: Session, size: int) -> str:
    """The signed checkpoint for tree `size`; raises `NotFoundError` if none was signed."""
    note = session.exec(
        select(LedgerCheckpointRow.note).where(LedgerCheckpointRow.size == size)
    ).first()
    if note is None:
        raise NotFoundError(f"no ledger checkpoint for tree size {size}")
    return note


def get_entry(session: Session, seq: int) -> LedgerEntryRow:
    """The entry at `seq`; raises `NotFoundError`."""
    row = session.get(LedgerEntryRow, seq)
    if row is None:
        raise NotFoundError(f"no ledger entry {seq}")
    return row


def entries_for_case(session: Session, case_id: str) -> list[LedgerEntryRow]:
    """Every entry of one case, in seq order."""
    return list(
        session.exec(
            select(LedgerEntryRow)
            .where(LedgerEntryRow.case_id == case_id)
            .order_by(col(LedgerEntryRow.seq))
        ).all()
    )


@dataclass(frozen=True)
class CaseEntryRow:
    """One entry of a case as an export reads it: its bytes and the columns indexing them."""

    seq: int
    data: bytes
    action: str
    package_id: str | None


def case_entries(session: Session, case_id: str, *, below: int) -> list[CaseEntryRow]:
    """Every entry of a case with seq < `below`, in seq order.

    On the driver's cursor, all rows at once: an export of a large case reads ten thousand
    rows, and SQLAlchemy's per-row handling would cost a third of the export.
    """
    connection = session.connection()
    mark = "?" if connection.dialect.paramstyle == "qmark" else "%s"
    driver: Any = connection.connection.driver_connection
    cursor = driver.cursor()
    try:
        cursor.execute(
            "SELECT seq, data, action, package_id FROM ledger_entry "  # noqa: S608  # fixed text
            f"WHERE case_id = {mark} AND seq < {mark} ORDER BY seq",
            (case_id, below),
        )
        return [CaseEntryRow(int(s), bytes(d), a, p) for s, d, a, p in cursor.fetchall()]
    finally:
        cursor.close()


_KEY_ACTIONS = (Action.KEY_REGISTERED.value, Action.KEY_REVOKED.value)


def key_entries(session: Session, key_ids: Sequence[str], *, below: int) -> list[tuple[int, bytes]]:
    """(seq, bytes) of the `key.registered`/`key.revoked` entries of `key_ids`, below a size."""
    if not key_ids:
        return []
    wanted = set(key_ids)
    rows = session.connection().execute(
        select(_ENTRY.c.seq, _ENTRY.c.data)
        .where(
            _ENTRY.c.case_id.is_(None),
            _ENTRY.c.action.in_(_KEY_ACTIONS),
            _ENTRY.c.seq < below,
        )
        .order_by(_ENTRY.c.seq)
    )
    found: list[tuple[int, bytes]] = []
    for seq, data in rows:
        details = parse_json(bytes(data), what="stored ledger entry").get("details", {})
        if details.get("key_id") in wanted:
            found.append((int(seq), bytes(data)))
    return found


def entry_count(session: Session) -> int:
    """Rows in the entry table (differs from `tree_size` only if rows were deleted)."""
    return int(session.exec(select(func.count()).select_from(LedgerEntryRow)).one())


def iter_entries(
    session: Session, *, batch: int = 10_000
) -> Generator[tuple[int, bytes, bytes], None, None]:
    """Every (seq, canonical bytes, entry hash) row in seq order, streamed."""
    return _stream(session, "SELECT seq, data, entry_hash FROM ledger_entry ORDER BY seq", batch)


def iter_hashes(session: Session, *, batch: int = 10_000) -> Generator[bytes, None, None]:
    """Every stored hash in stored-hash-index order, streamed."""
    rows = _stream(session, "SELECT hash FROM ledger_hash ORDER BY idx", batch)
    try:
        yield from map(itemgetter(0), rows)
    finally:
        rows.close()


@contextmanager
def log_rows(
    session: Session,
) -> Iterator[tuple[Iterator[tuple[int, bytes, bytes]], Iterator[bytes]]]:
    """(`iter_entries`, `iter_hashes`) for `audit.verify_log`, closed on leaving the block.

    Closing matters when verification stops early: the cursors must not outlive the session.
    """
    entries = iter_entries(session)
    hashes = iter_hashes(session)
    try:
        yield entries, hashes
    finally:
        entries.close()
        hashes.close()


def _stream(session: Session, query: str, batch: int) -> Generator[Any, None, None]:
    # A full audit reads millions of rows: straight from the driver's cursor, in the session's
    # transaction, because SQLAlchemy's per-row objects would cost more than the hashing.
    # Both drivers return BLOB/bytea as bytes.
    connection = session.connection()
    return _driver_stream(
        connection.connection.driver_connection, connection.dialect.name, query, (), batch
    )


def _driver_stream(
    driver: Any, dialect: str, query: str, params: tuple[int, ...], batch: int
) -> Generator[Any, None, None]:
    if dialect == "postgresql":
        # A named (server-side) cursor: rows arrive `batch` at a time, not all at once.
        cursor = driver.cursor(name=f"ledger_audit_{secrets.token_hex(4)}")
        cursor.itersize = batch
        query = query.replace("?", "%s")
    else:
        cursor = driver.cursor()
    try:
        cursor.execute(query, params)
        while rows := cursor.fetchmany(batch):
            yield from rows
    finally:
        cursor.close()


def _bounded(query: str, column: str, lo: int, hi: int | None) -> tuple[str, tuple[int, ...]]:
    if lo == 0 and hi is None:
        # The whole table, with no lower bound: a row planted below 0 must reach the walk too.
        return f"{query} ORDER BY {column}", ()
    if hi is None:
        return f"{query} WHERE {column} >= ? ORDER BY {column}", (lo,)
    return f"{query} WHERE {column} >= ? AND {column} < ? ORDER BY {column}", (lo, hi)


class StoredLog:
    """The ledger tables as an `audit.LogSource` for `audit.verify_log_parallel`.

    In the process that made it, every read runs in `session`'s transaction, the one the
    checkpoint was read in (on SQLite it holds the write lock, so the log cannot grow under
    the audit). Forked worker processes open their own plain read connection from `url`: they
    read only entries the checkpoint already covers, which no honest append ever changes.
    """

    def __init__(self, session: Session, url: str, *, batch: int = 10_000) -> None:
        self._session = session
        self._url = url
        self._batch = batch
        self._pid = os.getpid()
        self._driver: Any = None

    def _read(self, query: str, params: tuple[int, ...]) -> Generator[Any, None, None]:
        if os.getpid() == self._pid:
            connection = self._session.connection()
            driver = connection.connection.driver_connection
            dialect = connection.dialect.name
        else:
            if self._driver is None:
                # A raw DB-API connection: SQLAlchemy's begin hook would start a write
                # transaction (BEGIN IMMEDIATE) on SQLite, which the parent already holds.
                self._driver = make_engine(self._url).raw_connection().driver_connection
            driver = self._driver
            dialect = "postgresql" if self._url.startswith("postgresql") else "sqlite"
        return _driver_stream(driver, dialect, query, params, self._batch)

    def entries(self, lo: int, hi: int | None) -> Generator[tuple[int, bytes, bytes], None, None]:
        """Entry rows with lo <= seq (< hi), in seq order, streamed."""
        return self._read(
            *_bounded("SELECT seq, data, entry_hash FROM ledger_entry", "seq", lo, hi)
        )

    def hashes(self, lo: int, hi: int | None) -> Generator[bytes, None, None]:
        """Stored hashes with lo <= index (< hi), in index order, streamed."""
        rows = self._read(*_bounded("SELECT hash FROM ledger_hash", "idx", lo, hi))
        try:
            yield from map(itemgetter(0), rows)
        finally:
            rows.close()

    def counts(self) -> tuple[int, int]:
        """Rows in the entry table and in the stored-hash table."""
        connection = self._session.connection()
        entries = connection.exec_driver_sql("SELECT count(*) FROM ledger_entry").scalar_one()
        hashes = connection.exec_driver_sql("SELECT count(*) FROM ledger_hash").scalar_one()
        return int(entries), int(hashes)


def can_fork_readers(engine: Engine) -> bool:
    """Whether other processes can open this database (not an in-memory SQLite one)."""
    url = engine.url
    return url.get_backend_name() == "postgresql" or url.database not in (None, "", ":memory:")


def verify_stored_log(
    session: Session,
    *,
    verify_note: NoteVerifier,
    workers: int = 1,
    deep: Callable[[bytes], object] | None = None,
    chunk_size: int = CHUNK,
) -> AuditSummary:
    """Verify the whole stored ledger against its latest checkpoint (`audit.verify_log`).

    With `workers` >= 2 (and no `deep`), the aligned chunks are checked by that many forked
    processes; the outcome and any error are the same. `session` must not have read anything
    yet (on PostgreSQL its snapshot is set here). Raises `VerificationError`.
    """
    connection = session.connection()
    if connection.dialect.name == "postgresql":
        # One snapshot for the checkpoint and every row this process reads.
        connection.exec_driver_sql("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
    note = latest_checkpoint(session)
    engine = session.get_bind()
    if workers >= 2 and deep is None and isinstance(engine, Engine) and can_fork_readers(engine):
        source = StoredLog(session, engine.url.render_as_string(hide_password=False))
        return verify_log_parallel(
            source,
            checkpoint_note=note,
            verify_note=verify_note,
            workers=workers,
            chunk_size=chunk_size,
        )
    with log_rows(session) as (entries, hashes):
        return verify_log(
            entries,
            hashes,
            checkpoint_note=note,
            verify_note=verify_note,
            deep=deep,
            chunk_size=chunk_size,
        )

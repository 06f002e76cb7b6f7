"""The ledger in SQLite and PostgreSQL: appends, proofs, reads, fail-closed, concurrent writers."""

from __future__ import annotations

import itertools
import multiprocessing
import sqlite3
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, text
from sqlalchemy.exc import IntegrityError

from exchange.errors import (
    IntegrityFailureError,
    InvalidInputError,
    NotFoundError,
    StorageError,
    VerificationError,
)
from exchange.ledger import merkle, tlog
from exchange.ledger.audit import verify_log
from exchange.ledger.entry import GENESIS_PREV, Action, parse_entry
from exchange.ledger.signer import LogSigner
from exchange.signing import Signer
from exchange.storage import ledger_store as store
from exchange.storage.db import alembic_config, create_schema, make_engine, session_scope
from tests.ledger_fixtures import CASE, ORIGIN, new_entry


def counts(engine: Engine) -> tuple[int, ...]:
    """Rows in the entry, hash and checkpoint tables."""
    with session_scope(engine) as session:
        connection = session.connection()
        return tuple(
            connection.execute(text(f"SELECT COUNT(*) FROM {table}")).scalar_one()  # noqa: S608  # fixed names
            for table in ("ledger_entry", "ledger_hash", "ledger_checkpoint")
        )


def test_sqlite_engine_settings(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'x.db'}")
    with engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert connection.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert connection.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30_000
        # The transaction began with BEGIN IMMEDIATE: it already holds the write lock.
        other = sqlite3.connect(tmp_path / "x.db", timeout=0)
        with pytest.raises(sqlite3.OperationalError, match="database is locked"):
            other.execute("BEGIN IMMEDIATE")
        other.close()
    engine.dispose()


def test_create_schema_is_idempotent(engine: Engine) -> None:
    create_schema(engine)
    head = ScriptDirectory.from_config(alembic_config(engine)).get_current_head()
    with session_scope(engine) as session:
        version = session.connection().exec_driver_sql("SELECT version_num FROM alembic_version")
        assert version.scalar_one() == head
    assert counts(engine) == (0, 0, 0)


def test_unsupported_database_url() -> None:
    with pytest.raises(InvalidInputError, match="unsupported database URL 'mysql'"):
        make_engine("mysql://localhost/x")


def leaf_hashes(engine: Engine) -> list[bytes]:
    with session_scope(engine) as session:
        return [merkle.leaf_hash(data) for _, data, _ in store.iter_entries(session)]


def test_first_append(engine: Engine, log: LogSigner, now: datetime) -> None:
    with session_scope(engine) as session:
        appended = store.append(session, new_entry(0), log=log, now=now)
    assert appended.seq == 0
    entry = parse_entry(appended.data)
    assert entry.prev == GENESIS_PREV
    assert entry.time == "2026-11-29T12:00:00.000000Z"
    checkpoint = log.verifier().verify(appended.checkpoint)
    assert (checkpoint.origin, checkpoint.size) == (ORIGIN, 1)
    assert checkpoint.root_hash == merkle.leaf_hash(appended.data)
    with session_scope(engine) as session:
        row = store.get_entry(session, 0)
        assert bytes(row.data) == appended.data
        assert bytes(row.entry_hash) == appended.entry_hash
        assert row.action == "package.sealed"
        assert row.case_id == CASE
        assert store.tree_size(session) == 1
        assert store.latest_checkpoint(session) == appended.checkpoint
        assert store.checkpoint_at(session, 1) == appended.checkpoint


def test_chain_and_tree_over_many_appends(engine: Engine, log: LogSigner, now: datetime) -> None:
    notes = {}
    for i in range(21):
        with session_scope(engine) as session:
            notes[i + 1] = store.append(
                session, new_entry(i), log=log, now=now + timedelta(seconds=i)
            ).checkpoint
    leaves = leaf_hashes(engine)
    assert counts(engine) == (21, tlog.stored_hash_count(21), 21)
    verifier = log.verifier()
    with session_scope(engine) as session:
        summary = verify_log(
            store.iter_entries(session),
            store.iter_hashes(session),
            checkpoint_note=store.latest_checkpoint(session),
            verify_note=verifier.verify,
        )
        assert summary.size == 21
        assert summary.root_hash == merkle.root(leaves)
        for size in range(1, 22):
            checkpoint = verifier.verify(store.checkpoint_at(session, size))
            assert checkpoint.root_hash == merkle.root(leaves[:size])
            for seq in range(size):
                proof = store.inclusion_proof(session, seq, size)
                merkle.verify_inclusion(leaves[seq], seq, size, proof, checkpoint.root_hash)
            for old in range(1, size + 1):
                proof = store.consistency_proof(session, old, size)
                merkle.verify_consistency(
                    old, size, merkle.root(leaves[:old]), checkpoint.root_hash, proof
                )


def test_append_many_writes_one_checkpoint(engine: Engine, log: LogSigner, now: datetime) -> None:
    with session_scope(engine) as session:
        store.append(session, new_entry(0), log=log, now=now)
    with session_scope(engine) as session:
        appended = store.append_many(
            session, [new_entry(i) for i in range(1, 40)], log=log, now=now
        )
    assert [a.seq for a in appended] == list(range(1, 40))
    assert {a.checkpoint for a in appended} == {appended[-1].checkpoint}
    assert counts(engine) == (40, tlog.stored_hash_count(40), 2)
    leaves = leaf_hashes(engine)
    assert log.verifier().verify(appended[-1].checkpoint).root_hash == merkle.root(leaves)
    for a, b in itertools.pairwise(appended):
        assert parse_entry(b.data).prev == a.entry_hash.hex()
    with session_scope(engine) as session:
        indexes = [tlog.stored_hash_index(0, n) for n in (39, 0, 17)]
        assert store.read_hashes(session, indexes) == [leaves[39], leaves[0], leaves[17]]
        with pytest.raises(NotFoundError, match="no ledger checkpoint for tree size 20"):
            store.checkpoint_at(session, 20)


def test_reads(engine: Engine, log: LogSigner, now: datetime) -> None:
    with session_scope(engine) as session:
        assert store.latest_checkpoint(session) is None
        assert store.tree_size(session) == 0
        store.append_many(
            session,
            [
                new_entry(0),
                new_entry(1, case_id="PH-2026-7"),
                new_entry(
                    2, action=Action.GRANT_ISSUED, package_id="0b9e7c1a-3f4d-4e2b-9a6c-5d8e7f6a1b2c"
                ),
            ],
            log=log,
            now=now,
        )
    with session_scope(engine) as session:
        assert [r.seq for r in store.entries_for_case(session, CASE)] == [0, 2]
        assert store.entries_for_case(session, "nobody") == []
        assert store.get_entry(session, 2).package_id == "0b9e7c1a-3f4d-4e2b-9a6c-5d8e7f6a1b2c"
        with pytest.raises(NotFoundError, match="no ledger entry 3"):
            store.get_entry(session, 3)
        with pytest.raises(StorageError, match="stored hash 99 is missing"):
            store.read_hashes(session, [0, 99])
        with pytest.raises(InvalidInputError, match="seq 3 is not below tree size 3"):
            store.inclusion_proof(session, 3, 3)
        with pytest.raises(InvalidInputError, match="tree size 4 is beyond the log's 3 entries"):
            store.inclusion_proof(session, 0, 4)
        with pytest.raises(
            InvalidInputError, match="consistency proof needs 0 < old <= new, got 3, 2"
        ):
            store.consistency_proof(session, 3, 2)


def test_append_rolls_back_with_the_callers_transaction(
    engine: Engine, log: LogSigner, now: datetime
) -> None:
    with session_scope(engine) as session:
        store.append(session, new_entry(0), log=log, now=now)

    def use_case() -> None:
        with session_scope(engine) as session:
            store.append_many(session, [new_entry(1), new_entry(2)], log=log, now=now)
            raise RuntimeError("use case failed")

    with pytest.raises(RuntimeError, match="use case failed"):
        use_case()
    assert counts(engine) == (1, tlog.stored_hash_count(1), 1)


def test_invalid_entry_stores_nothing(engine: Engine, log: LogSigner, now: datetime) -> None:
    with (
        pytest.raises(InvalidInputError, match="ledger entry /package_id"),
        session_scope(engine) as session,
    ):
        store.append_many(session, [new_entry(0), new_entry(1, package_id="x")], log=log, now=now)
    assert counts(engine) == (0, 0, 0)
    with (
        pytest.raises(InvalidInputError, match="append_many: no entries"),
        session_scope(engine) as session,
    ):
        store.append_many(session, [], log=log, now=now)


def test_database_failure_raises_and_stores_nothing(
    engine: Engine, log: LogSigner, now: datetime
) -> None:
    with session_scope(engine) as session:
        store.append(session, new_entry(0), log=log, now=now)
        # A stray row where the next append's leaf hash goes: the insert must fail loudly.
        session.connection().execute(
            text("INSERT INTO ledger_hash (idx, hash) VALUES (:i, :h)"),
            {"i": tlog.stored_hash_index(0, 1), "h": b"\x00" * 32},
        )
    with (
        pytest.raises(IntegrityError),
        session_scope(engine) as session,
    ):
        store.append(session, new_entry(1), log=log, now=now)
    assert counts(engine) == (1, 2, 1)


def test_append_refuses_to_extend_a_truncated_log(
    engine: Engine, log: LogSigner, now: datetime
) -> None:
    with session_scope(engine) as session:
        store.append_many(session, [new_entry(i) for i in range(3)], log=log, now=now)
        session.connection().execute(text("DELETE FROM ledger_entry WHERE seq = 2"))
    with pytest.raises(IntegrityFailureError) as caught, session_scope(engine) as session:
        store.append(session, new_entry(3), log=log, now=now)
    assert caught.value.reason == "truncated"
    assert caught.value.message == (
        "ledger holds 2 entries but its latest checkpoint covers 3; run `exchange ledger verify`"
    )
    assert counts(engine) == (2, tlog.stored_hash_count(3), 1)


def test_wrong_log_key_is_not_accepted(engine: Engine, log: LogSigner, now: datetime) -> None:
    with session_scope(engine) as session:
        note = store.append(session, new_entry(0), log=log, now=now).checkpoint
    other = LogSigner.from_signer(Signer.generate(), origin=ORIGIN).verifier()
    with pytest.raises(VerificationError, match="no signature by a known key") as caught:
        other.verify(note)
    assert caught.value.reason == "bad_checkpoint_signature"


def _append_worker(url: str, worker: int, count: int, pem: bytes, ready: Any) -> None:
    engine = make_engine(url)
    log = LogSigner.from_signer(Signer.from_pem(pem), origin=ORIGIN)
    start = datetime.fromisoformat("2026-11-29T12:00:00+00:00")
    ready.wait(timeout=60)  # all four start appending together
    for i in range(count):
        store.append_committed(engine, new_entry(worker * 1000 + i), log=log, now=start)
    engine.dispose()


@pytest.mark.slow
def test_four_processes_append_without_gaps_or_forks(
    engine: Engine, db_url: str, log: LogSigner, log_key: Signer
) -> None:
    ctx = multiprocessing.get_context("spawn")
    ready = ctx.Barrier(4)
    workers = [
        ctx.Process(target=_append_worker, args=(db_url, w, 250, log_key.private_pem(), ready))
        for w in range(4)
    ]
    for p in workers:
        p.start()
    for p in workers:
        p.join(timeout=240)
        assert p.exitcode == 0
    with session_scope(engine) as session:
        rows = list(store.iter_entries(session))
        assert [seq for seq, _, _ in rows] == list(range(1000))
        numbers = sorted(parse_entry(data).details["n"] for _, data, _ in rows)
        assert numbers == sorted(w * 1000 + i for w in range(4) for i in range(250))
        summary = verify_log(
            iter(rows),
            store.iter_hashes(session),
            checkpoint_note=store.latest_checkpoint(session),
            verify_note=log.verifier().verify,
        )
        assert summary.size == 1000
    assert counts(engine) == (1000, tlog.stored_hash_count(1000), 1000)

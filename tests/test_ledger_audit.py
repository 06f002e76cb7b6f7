"""Full-log verification (pure): a good log passes; each kind of damage is named at its first seq."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime

import pytest

from exchange.errors import VerificationError
from exchange.ledger import casechain, merkle, tlog
from exchange.ledger.audit import MemoryLog, verify_log, verify_log_parallel
from exchange.ledger.checkpoint import Checkpoint
from exchange.ledger.entry import GENESIS_PREV, make_entry, parse_entry
from exchange.ledger.signer import LogSigner
from exchange.signing import Signer
from tests.ledger_fixtures import ORIGIN, new_entry


@dataclass(frozen=True)
class Log:
    entries: list[tuple[int, bytes, bytes]]
    hashes: list[bytes]
    note: str | None


def build(log: LogSigner, now: datetime, size: int) -> Log:
    entries: list[tuple[int, bytes, bytes]] = []
    stored: dict[int, bytes] = {}

    def read(indexes: Sequence[int]) -> list[bytes]:
        return [stored[i] for i in indexes]

    prev = GENESIS_PREV
    heads = casechain.Heads()
    for seq in range(size):
        new = new_entry(seq)
        link = None
        if new.case_id is not None:
            count, head = heads.link(new.case_id)
            link = (count, head.hex())
        _, data = make_entry(new, seq=seq, prev=prev, time=now, case_link=link)
        if new.case_id is not None:
            heads.add(new.case_id, seq, merkle.leaf_hash(data))
        digest = hashlib.sha256(data).digest()
        entries.append((seq, data, digest))
        first = tlog.stored_hash_index(0, seq)
        for offset, h in enumerate(
            tlog.stored_hashes_for_record(seq, merkle.leaf_hash(data), read)
        ):
            stored[first + offset] = h
        prev = digest.hex()
    note = None
    if size:
        note = log.sign(Checkpoint(origin=ORIGIN, size=size, root_hash=tlog.tree_hash(size, read)))
    return Log(entries, [h for _, h in sorted(stored.items())], note)


def run(log: LogSigner, damaged: Log, chunk_size: int = 8192, workers: int = 1) -> None:
    if workers > 1:
        verify_log_parallel(
            MemoryLog(damaged.entries, damaged.hashes),
            checkpoint_note=damaged.note,
            verify_note=log.verifier().verify,
            workers=workers,
            chunk_size=chunk_size,
        )
        return
    verify_log(
        iter(damaged.entries),
        iter(damaged.hashes),
        checkpoint_note=damaged.note,
        verify_note=log.verifier().verify,
        chunk_size=chunk_size,
    )


class InOrderForbidden(MemoryLog):
    """A source that fails the test if anything reads the log from seq 0 in this process."""

    def entries(self, lo: int, hi: int | None) -> Iterable[tuple[int, bytes, bytes]]:
        assert not (lo == 0 and hi is None), "fell back to the in-order verification"
        return super().entries(lo, hi)


@pytest.fixture(scope="module")
def good(log: LogSigner) -> Log:
    from tests.conftest import NOW

    return build(log, NOW, 37)


@pytest.mark.parametrize(
    ("chunk_size", "deep"), [(2, False), (8, False), (16, True), (8192, False)]
)
def test_good_log_verifies(log: LogSigner, good: Log, chunk_size: int, deep: bool) -> None:
    summary = verify_log(
        iter(good.entries),
        iter(good.hashes),
        checkpoint_note=good.note,
        verify_note=log.verifier().verify,
        deep=parse_entry if deep else None,
        chunk_size=chunk_size,
    )
    assert (summary.entries, summary.size, summary.stored_hashes) == (
        37,
        37,
        tlog.stored_hash_count(37),
    )
    assert summary.root_hash == merkle.root([merkle.leaf_hash(d) for _, d, _ in good.entries])


@pytest.mark.parametrize(("chunk_size", "workers"), [(2, 2), (4, 2), (8, 4), (16, 2)])
def test_parallel_verification_of_a_good_log(
    log: LogSigner, good: Log, chunk_size: int, workers: int
) -> None:
    # InOrderForbidden proves the forked workers did the work: no in-order re-run happened.
    summary = verify_log_parallel(
        InOrderForbidden(good.entries, good.hashes),
        checkpoint_note=good.note,
        verify_note=log.verifier().verify,
        workers=workers,
        chunk_size=chunk_size,
    )
    expected = verify_log(
        iter(good.entries),
        iter(good.hashes),
        checkpoint_note=good.note,
        verify_note=log.verifier().verify,
    )
    assert summary == expected
    assert summary.entries == 37


def test_parallel_verification_needs_the_unread_rows_counted(log: LogSigner, good: Log) -> None:
    # An entry row that no range reads (here: one past the rows the workers and the tail see)
    # sends the audit back to the in-order walk, which names it.
    class HiddenRow(MemoryLog):
        def counts(self) -> tuple[int, int]:
            entries, hashes = super().counts()
            return entries + 1, hashes

    with pytest.raises(AssertionError, match="fell back"):
        verify_log_parallel(
            type("Both", (HiddenRow, InOrderForbidden), {})(good.entries, good.hashes),
            checkpoint_note=good.note,
            verify_note=log.verifier().verify,
            workers=2,
            chunk_size=4,
        )


def test_empty_log_verifies(log: LogSigner) -> None:
    summary = verify_log([], [], checkpoint_note=None, verify_note=log.verifier().verify)
    assert summary.size == 0
    assert summary.root_hash == hashlib.sha256(b"").digest()


def _edit(
    i: int, f: Callable[[tuple[int, bytes, bytes]], tuple[int, bytes, bytes]]
) -> Callable[[Log], Log]:
    def apply(log: Log) -> Log:
        entries = list(log.entries)
        entries[i] = f(entries[i])
        return replace(log, entries=entries)

    return apply


def _rehash(row: tuple[int, bytes, bytes], old: bytes, new: bytes) -> tuple[int, bytes, bytes]:
    data = row[1].replace(old, new)
    return row[0], data, hashlib.sha256(data).digest()


def _swap(i: int, j: int) -> Callable[[Log], Log]:
    def apply(log: Log) -> Log:
        entries = list(log.entries)
        (si, di, hi), (sj, dj, hj) = entries[i], entries[j]
        entries[i], entries[j] = (si, dj, hj), (sj, di, hi)
        return replace(log, entries=entries)

    return apply


def _hash(k: int, value: bytes | None) -> Callable[[Log], Log]:
    def apply(log: Log) -> Log:
        hashes = list(log.hashes)
        if value is None:
            del hashes[k]
        else:
            hashes[k] = value
        return replace(log, hashes=hashes)

    return apply


DAMAGE: list[tuple[str, Callable[[Log], Log], str, str]] = [
    (
        "edited bytes",
        _edit(5, lambda r: (r[0], r[1].replace(b'"n":5', b'"n":6'), r[2])),
        "entry_hash_mismatch",
        "seq 5: entry_hash_mismatch: SHA-256 of the entry differs from its stored hash",
    ),
    (
        "edited bytes and entry hash",
        _edit(5, lambda r: _rehash(r, b'"n":5', b'"n":6')),
        "stored_hash_mismatch",
        "seq 5: stored_hash_mismatch: stored hash 8 (leaf) is wrong or missing",
    ),
    (
        "deleted row",
        lambda log: replace(log, entries=log.entries[:9] + log.entries[10:]),
        "seq_gap",
        "seq 9: seq_gap: missing (next row is seq 10)",
    ),
    (
        "swapped rows",
        _swap(3, 4),
        "seq_mismatch",
        "seq 3: seq_mismatch: the entry does not carry this seq",
    ),
    (
        "truncated tail",
        lambda log: replace(log, entries=log.entries[:30]),
        "truncated",
        "seq 30: truncated: the log ends at 30 entries but checkpoint covers 37",
    ),
    (
        "altered stored leaf hash",
        _hash(0, b"\x00" * 32),
        "stored_hash_mismatch",
        "seq 0: stored_hash_mismatch: stored hash 0 (leaf) is wrong or missing",
    ),
    (
        "altered stored node hash",
        _hash(tlog.stored_hash_index(2, 1), b"\x00" * 32),
        "stored_hash_mismatch",
        f"seq 7: stored_hash_mismatch: stored hash {tlog.stored_hash_index(2, 1)} (node) is wrong or missing",
    ),
    (
        "missing stored hash",
        _hash(4, None),
        "stored_hash_mismatch",
        "seq 3: stored_hash_mismatch: stored hash 4 (leaf) is wrong or missing",
    ),
    (
        "extra stored hash",
        lambda log: replace(log, hashes=[*log.hashes, b"\x00" * 32]),
        "stored_hash_mismatch",
        f"seq 37: stored_hash_mismatch: extra stored hash {tlog.stored_hash_count(37)} beyond the log",
    ),
    (
        "no checkpoint",
        lambda log: replace(log, note=None),
        "no_checkpoint",
        "seq 0: no_checkpoint: 37 entries but no signed checkpoint",
    ),
]


# Chunks of 2, 4 and 8 run the whole-chunk fast path (and its fall-back) on a 37-entry log;
# 8192 runs the entry-by-entry path only. With 2 workers the chunks under the checkpoint are
# checked in forked processes first; the message must be the in-order one all the same.
@pytest.mark.parametrize(
    ("chunk_size", "workers"), [(2, 1), (4, 1), (8, 1), (8192, 1), (2, 2), (4, 2), (8, 3)]
)
@pytest.mark.parametrize(
    ("name", "damage", "reason", "message"), DAMAGE, ids=[d[0] for d in DAMAGE]
)
def test_damage_is_named(
    log: LogSigner,
    good: Log,
    name: str,
    damage: Callable[[Log], Log],
    reason: str,
    message: str,
    chunk_size: int,
    workers: int,
) -> None:
    with pytest.raises(VerificationError) as caught:
        run(log, damage(good), chunk_size, workers)
    assert (caught.value.reason, caught.value.message) == (reason, message)


@pytest.mark.parametrize(("chunk_size", "workers"), [(8192, 1), (4, 2), (2, 2)])
def test_broken_chain_is_named(
    log: LogSigner, now: datetime, chunk_size: int, workers: int
) -> None:
    # A consistent rewrite of one entry (new prev, new hash) still breaks the next link; with
    # chunks of 4 the forged entry opens the second chunk, so only the stitching sees it.
    damaged = build(log, now, 8)
    seq, data, _ = damaged.entries[4]
    forged = data[: data.rfind(b'"prev":"') + 8] + b"f" * 64 + data[data.rfind(b'"prev":"') + 72 :]
    entries = list(damaged.entries)
    entries[4] = (seq, forged, hashlib.sha256(forged).digest())
    with pytest.raises(VerificationError) as caught:
        run(log, replace(damaged, entries=entries), chunk_size, workers)
    assert caught.value.message == "seq 4: chain_broken: prev is not the previous entry's hash"


def test_root_mismatch_is_named(log: LogSigner, good: Log) -> None:
    other = log.sign(Checkpoint(origin=ORIGIN, size=37, root_hash=b"\x11" * 32))
    with pytest.raises(VerificationError) as caught:
        run(log, replace(good, note=other))
    assert caught.value.reason == "root_mismatch"
    assert caught.value.message.startswith("seq 36: root_mismatch: root ")


def test_checkpoint_by_another_key_is_named(good: Log) -> None:
    stranger = LogSigner.from_signer(Signer.generate(), origin=ORIGIN)
    with pytest.raises(VerificationError) as caught:
        run(stranger, good)
    assert caught.value.reason == "bad_checkpoint_signature"
    assert caught.value.message.startswith("latest checkpoint: bad_checkpoint_signature: ")


@pytest.mark.parametrize(("chunk_size", "workers"), [(8192, 1), (2, 2)])
def test_unsigned_entries_are_named(
    log: LogSigner, now: datetime, chunk_size: int, workers: int
) -> None:
    longer = build(log, now, 10)
    shorter = build(log, now, 8)
    with pytest.raises(VerificationError) as caught:
        run(log, replace(longer, note=shorter.note), chunk_size, workers)
    assert (
        caught.value.message
        == "seq 8: unsigned_entries: entries 8..9 are not covered by the latest checkpoint"
    )


def test_deep_check_names_a_malformed_entry(log: LogSigner, now: datetime) -> None:
    damaged = build(log, now, 1)
    seq, data, _ = damaged.entries[0]
    odd = data.replace(b'"action":"package.sealed"', b'"action":"package.stolen"')
    rebuilt = build_from_rows(log, [(seq, odd)])
    with pytest.raises(VerificationError) as caught:
        verify_log(
            iter(rebuilt.entries),
            iter(rebuilt.hashes),
            checkpoint_note=rebuilt.note,
            verify_note=log.verifier().verify,
            deep=parse_entry,
        )
    assert caught.value.reason == "malformed_entry"
    assert caught.value.message.startswith(
        "seq 0: malformed_entry: not valid against ledger-entry.v2.json: /action"
    )


def build_from_rows(log: LogSigner, rows: list[tuple[int, bytes]]) -> Log:
    stored: dict[int, bytes] = {}

    def read(indexes: Sequence[int]) -> list[bytes]:
        return [stored[i] for i in indexes]

    entries = []
    for seq, data in rows:
        entries.append((seq, data, hashlib.sha256(data).digest()))
        first = tlog.stored_hash_index(0, seq)
        for offset, h in enumerate(
            tlog.stored_hashes_for_record(seq, merkle.leaf_hash(data), read)
        ):
            stored[first + offset] = h
    size = len(rows)
    note = log.sign(Checkpoint(origin=ORIGIN, size=size, root_hash=tlog.tree_hash(size, read)))
    return Log(entries, [h for _, h in sorted(stored.items())], note)


def test_a_failing_worker_sends_the_audit_back_in_order(log: LogSigner, good: Log) -> None:
    parent = os.getpid()

    class WorkersCannotRead(MemoryLog):
        def entries(self, lo: int, hi: int | None) -> Iterable[tuple[int, bytes, bytes]]:
            if os.getpid() != parent:
                raise RuntimeError("worker lost its database")
            return super().entries(lo, hi)

    summary = verify_log_parallel(
        WorkersCannotRead(good.entries, good.hashes),
        checkpoint_note=good.note,
        verify_note=log.verifier().verify,
        workers=2,
        chunk_size=4,
    )
    assert summary.entries == 37

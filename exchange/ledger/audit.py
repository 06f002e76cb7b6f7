"""Full verification of a stored ledger: hash chain, stored Merkle hashes, root and checkpoint.

Pure and streaming: rows come in as plain tuples and nothing is built per row beyond the hashes,
so a million entries verify in a few seconds. The first problem found raises one
`VerificationError` whose message starts with ``seq N: <reason>`` and whose `reason` is one of:

``seq_gap``               a seq is missing, repeated or out of order
``entry_hash_mismatch``   SHA-256(bytes) differs from the stored entry hash
``seq_mismatch``          the seq inside the entry differs from its row
``chain_broken``          `prev` is not the previous entry's hash
``malformed_entry``       the entry bytes are not a canonical ledger entry
``stored_hash_mismatch``  a stored Merkle hash is wrong, missing or extra
``truncated``             the log holds fewer entries than its latest checkpoint
``unsigned_entries``      entries beyond the latest checkpoint (no append writes those)
``root_mismatch``         the recomputed root differs from the checkpoint's root
``bad_checkpoint_signature``  the checkpoint is not signed by the log key
``bad_checkpoint``        the checkpoint note is malformed
``origin_mismatch``       the checkpoint names another log
``no_checkpoint``         entries exist but no checkpoint does
"""

from __future__ import annotations

import base64
import binascii
import gc
import hashlib
import multiprocessing
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from itertools import islice, pairwise, repeat
from operator import add, itemgetter
from typing import Protocol, TypeVar

from exchange.errors import ExchangeError, InvalidInputError, VerificationError
from exchange.ledger import tlog
from exchange.ledger.checkpoint import Checkpoint

# (seq, canonical entry bytes, stored entry hash), in seq order.
EntryRow = tuple[int, bytes, bytes]
CHUNK = 8192
# Verifies a signed checkpoint note and returns its parsed body; raises VerificationError.
NoteVerifier = Callable[[str], Checkpoint]

_PREV_KEY = b',"prev":"'
_FIRST, _SECOND, _THIRD = itemgetter(0), itemgetter(1), itemgetter(2)
_GENESIS = b"0" * 64
_T = TypeVar("_T")


@dataclass(frozen=True)
class AuditSummary:
    """What a successful full verification covered."""

    entries: int
    size: int
    root_hash: bytes
    stored_hashes: int
    checkpoint: Checkpoint | None


def _fail(seq: int, reason: str, detail: str) -> VerificationError:
    return VerificationError(f"seq {seq}: {reason}: {detail}", reason=reason)


def verify_log(
    entries: Iterable[EntryRow],
    stored_hashes: Iterable[bytes],
    *,
    checkpoint_note: str | None,
    verify_note: NoteVerifier,
    deep: Callable[[bytes], object] | None = None,
    chunk_size: int = CHUNK,
) -> AuditSummary:
    """Recompute the chain, every stored hash and the root; check them against the checkpoint.

    `entries` are (seq, canonical bytes, stored entry hash) in seq order; `stored_hashes` are
    the stored Merkle hashes in stored-hash-index order from index 0 (a missing, extra or
    moved row shifts the stream, so it shows up as a mismatch at the first index it touches).

    `verify_note` checks the checkpoint's signature against the log key and returns its body.
    `deep`, if given, is called on every entry's bytes (e.g. `entry.parse_entry`) and any
    `ExchangeError` it raises is reported as ``malformed_entry``. `chunk_size` (a power of
    two) is how many entries are checked at once; it changes the speed, never the outcome.
    Raises `VerificationError` for the first bad seq (see the module docstring for reasons).
    """
    checkpoint = _verify_checkpoint(checkpoint_note, verify_note)
    if chunk_size < 2 or chunk_size & (chunk_size - 1):
        raise InvalidInputError(f"chunk size {chunk_size} is not a power of two >= 2")
    walk = _Walk(chunk_size)
    return _finish(walk, _run(walk, entries, stored_hashes, deep), checkpoint)


def _verify_checkpoint(checkpoint_note: str | None, verify_note: NoteVerifier) -> Checkpoint | None:
    if checkpoint_note is None:
        return None
    try:
        return verify_note(checkpoint_note)
    except VerificationError as exc:
        # reason: bad_checkpoint_signature, bad_checkpoint (malformed) or origin_mismatch
        raise VerificationError(
            f"latest checkpoint: {exc.reason}: {exc.message}", reason=exc.reason
        ) from exc


def _run(
    walk: _Walk,
    entries: Iterable[EntryRow],
    stored_hashes: Iterable[bytes],
    deep: Callable[[bytes], object] | None,
) -> Iterator[bytes]:
    """Walk `entries` from the walk's state on; returns the rest of the stored-hash stream."""
    hashes = iter(stored_hashes)
    rows = iter(entries)
    while chunk := list(islice(rows, walk.chunk_size)):
        # The stored hashes these records wrote: a stream shifted by a missing or extra row
        # still holds exactly this many, and any shift shows up as a mismatch.
        found = list(
            islice(hashes, tlog.stored_hash_count(walk.expected + len(chunk)) - walk.next_index)
        )
        if deep is None and walk.fast(chunk, found):
            continue
        # Slow path: entry by entry, raising at the first bad seq (also after a fast-path miss).
        walk.slow(chunk, found, deep)
    return hashes


def _finish(walk: _Walk, hashes: Iterator[bytes], checkpoint: Checkpoint | None) -> AuditSummary:
    """The end-of-log checks: size against the checkpoint, no extra hash, root."""
    size = walk.expected
    next_index = walk.next_index
    extra = next(hashes, None) is not None
    root = _root(walk.stack)
    if checkpoint is None:
        if size:
            raise _fail(0, "no_checkpoint", f"{size} entries but no signed checkpoint")
    elif size < checkpoint.size:
        raise _fail(
            size,
            "truncated",
            f"the log ends at {size} entries but checkpoint covers {checkpoint.size}",
        )
    elif size > checkpoint.size:
        raise _fail(
            checkpoint.size,
            "unsigned_entries",
            f"entries {checkpoint.size}..{size - 1} are not covered by the latest checkpoint",
        )
    if extra:
        raise _fail(size, "stored_hash_mismatch", f"extra stored hash {next_index} beyond the log")
    if checkpoint is not None and root != checkpoint.root_hash:
        raise _fail(
            size - 1,
            "root_mismatch",
            f"root {base64.b64encode(root).decode()} differs from checkpoint "
            f"{base64.b64encode(checkpoint.root_hash).decode()}",
        )
    return AuditSummary(
        entries=size, size=size, root_hash=root, stored_hashes=next_index, checkpoint=checkpoint
    )


class LogSource(Protocol):
    """The stored log as ranges, for `verify_log_parallel`; each worker process reads its own.

    A source must be usable in a forked child: open connections lazily, per process.
    """

    def entries(self, lo: int, hi: int | None) -> Iterable[EntryRow]:
        """Entry rows with lo <= seq (< hi), in seq order."""
        ...

    def hashes(self, lo: int, hi: int | None) -> Iterable[bytes]:
        """Stored hashes with lo <= index (< hi), in index order."""
        ...

    def counts(self) -> tuple[int, int]:
        """How many entry rows and stored-hash rows there are in all."""
        ...


@dataclass(frozen=True)
class MemoryLog:
    """A `LogSource` over lists already in memory (row i holds seq i; benchmarks and tests)."""

    rows: Sequence[EntryRow]
    stored: Sequence[bytes]

    def entries(self, lo: int, hi: int | None) -> Iterable[EntryRow]:
        """Rows lo..hi by position."""
        return self.rows[lo:hi]

    def hashes(self, lo: int, hi: int | None) -> Iterable[bytes]:
        """Stored hashes lo..hi by position."""
        return self.stored[lo:hi]

    def counts(self) -> tuple[int, int]:
        """The lengths of both lists."""
        return len(self.rows), len(self.stored)


def verify_log_parallel(
    source: LogSource,
    *,
    checkpoint_note: str | None,
    verify_note: NoteVerifier,
    workers: int,
    chunk_size: int = CHUNK,
) -> AuditSummary:
    """`verify_log` over `source` with the aligned chunks under the checkpoint spread over
    `workers` processes; same outcome, same errors.

    Each worker checks its chunks' entries, chain and subtree hashes; this process then links
    the chunks (each first `prev` to the hash before it, the stored hashes that climb above
    chunk level), verifies the rest of the log itself and checks that no row was left unread.
    Any doubt anywhere, or no way to start processes, and the whole log is verified again in
    order by `verify_log`, so a failure is always reported at its first bad seq.
    """
    checkpoint = _verify_checkpoint(checkpoint_note, verify_note)
    if chunk_size < 2 or chunk_size & (chunk_size - 1):
        raise InvalidInputError(f"chunk size {chunk_size} is not a power of two >= 2")
    chunks = (checkpoint.size if checkpoint else 0) // chunk_size
    walk = None
    if workers >= 2 and chunks >= 2:
        walk = _verify_chunks_in_parallel(source, chunks, chunk_size, workers)
    if walk is not None:
        with (
            _closing(source.entries(walk.expected, None)) as rest,
            _closing(source.hashes(walk.next_index, None)) as stored,
        ):
            summary = _finish(walk, _run(walk, rest, stored, None), checkpoint)
        if source.counts() == (summary.entries, summary.stored_hashes):
            return summary
    with _closing(source.entries(0, None)) as rows, _closing(source.hashes(0, None)) as stored:
        return verify_log(
            rows,
            stored,
            checkpoint_note=checkpoint_note,
            verify_note=verify_note,
            chunk_size=chunk_size,
        )


@contextmanager
def _closing(rows: Iterable[_T]) -> Iterator[Iterable[_T]]:
    # A source's streams may hold database cursors: close them when verification stops early.
    try:
        yield rows
    finally:
        close = getattr(rows, "close", None)
        if close is not None:
            close()


# (first prev, last entry hash, subtree root, stored hashes climbing above it) of one chunk.
_ChunkLink = tuple[bytes, bytes, bytes, list[bytes]]
_WORKER_SOURCE: list[LogSource] = []


def _verify_chunks_in_parallel(
    source: LogSource, chunks: int, chunk_size: int, workers: int
) -> _Walk | None:
    # A few ranges per worker, so that one slow range does not leave a core idle.
    parts = min(chunks, workers * 4)
    bounds = [chunks * i // parts * chunk_size for i in range(parts + 1)]
    ranges = [(lo, hi, chunk_size) for lo, hi in pairwise(bounds) if lo < hi]
    # Frozen, the objects this process holds are left alone by the children's collections,
    # which would otherwise touch (and so copy) every page of a log held in memory.
    gc.freeze()
    try:
        # fork: the children inherit `source` as it is, nothing is pickled but the results.
        context = multiprocessing.get_context("fork")
        with ProcessPoolExecutor(
            max_workers=workers,
            mp_context=context,
            initializer=_WORKER_SOURCE.append,
            initargs=(source,),
        ) as pool:
            results = list(pool.map(_check_range, ranges))
    except Exception:  # e.g. no fork here, a dead worker, a worker's read failing
        # Whatever went wrong in the workers, the in-order walk re-checks everything in this
        # process and reports any real fault (or the database's own error) where it is.
        return None
    finally:
        gc.unfreeze()
    walk = _Walk(chunk_size)
    for links in results:
        if links is None:
            return None
        for link in links:
            if not walk.link(*link):
                return None
    return walk


def _check_range(job: tuple[int, int, int]) -> list[_ChunkLink] | None:
    # Runs in a worker process: the aligned chunks lo..hi, each checked on its own.
    lo, hi, m = job
    source = _WORKER_SOURCE[-1]
    layout = _chunk_layout(m)
    with (
        _closing(source.entries(lo, hi)) as entry_rows,
        _closing(source.hashes(tlog.stored_hash_count(lo), tlog.stored_hash_count(hi))) as stored,
    ):
        rows, hashes = iter(entry_rows), iter(stored)
        links: list[_ChunkLink] = []
        for base in range(lo, hi, m):
            chunk = list(islice(rows, m))
            found = list(
                islice(hashes, tlog.stored_hash_count(base + m) - tlog.stored_hash_count(base))
            )
            if len(chunk) != m:
                return None
            checked = _check_chunk(chunk, found, base, layout)
            if checked is None:
                return None
            links.append((checked.first_prev, checked.last_hash, checked.root, found[2 * m - 1 :]))
        if next(rows, None) is not None or next(hashes, None) is not None:
            return None
    return links


class _Walk:
    """The verifier's running state: next seq, previous entry hash, right-edge subtrees."""

    def __init__(self, chunk_size: int) -> None:
        self.chunk_size = chunk_size
        self.layout = _chunk_layout(chunk_size)
        self.prev_hex = _GENESIS
        self.expected = 0
        self.next_index = 0
        self.stack: list[bytes] = []  # perfect right-edge subtree hashes, largest first

    def fast(self, chunk: list[EntryRow], found: list[bytes]) -> bool:
        """Check a whole aligned chunk with C-level list operations; False on any doubt."""
        m = len(chunk)
        base = self.expected
        if m != self.chunk_size or base % m:
            return False
        checked = _check_chunk(chunk, found, base, self.layout)
        if checked is None:
            return False
        return self.link(checked.first_prev, checked.last_hash, checked.root, found[2 * m - 1 :])

    def link(self, first_prev: bytes, last_hash: bytes, root: bytes, climbs: list[bytes]) -> bool:
        """Append the next aligned chunk, already checked on its own, to the walk.

        Checks its first `prev` against the hash before it and the stored hashes that climb
        above it; False, with the walk unchanged, if either disagrees.
        """
        stack = list(self.stack)
        if first_prev != self.prev_hex or not _climb(
            stack, self.expected // self.chunk_size, root, climbs
        ):
            return False
        self.prev_hex = last_hash
        self.expected += self.chunk_size
        self.next_index += 2 * self.chunk_size - 1 + len(climbs)
        self.stack = stack
        return True

    def slow(
        self, chunk: list[EntryRow], found: list[bytes], deep: Callable[[bytes], object] | None
    ) -> None:
        """Check a chunk entry by entry; raises `VerificationError` at the first bad seq."""
        sha256 = hashlib.sha256
        computed: list[bytes] = []
        failure: VerificationError | None = None
        for seq, data, stored in chunk:
            failure = self._check_entry(seq, data, stored, deep)
            if failure is not None:
                break
            self.prev_hex = binascii.hexlify(stored)
            node = sha256(b"\x00" + data).digest()
            computed.append(node)
            # Appending leaf `seq` completes one subtree per trailing 1 bit of seq; the stored
            # hash index is post-order, so those parents follow the leaf.
            n = seq
            while n & 1:
                node = sha256(b"\x01" + self.stack.pop() + node).digest()
                computed.append(node)
                n >>= 1
            self.stack.append(node)
            self.expected += 1
        # Stored hashes of the entries before a bad one are compared first, so that the
        # earliest problem is the one reported.
        if found[: len(computed)] != computed:
            raise _stored_hash_failure(self.next_index, computed, found)
        self.next_index += len(computed)
        if failure is not None:
            raise failure
        if len(found) != len(computed):
            raise _stored_hash_failure(self.next_index, [], found[len(computed) :])

    def _check_entry(
        self, seq: int, data: bytes, stored: bytes, deep: Callable[[bytes], object] | None
    ) -> VerificationError | None:
        expected = self.expected
        if seq != expected:
            detail = (
                f"missing (next row is seq {seq})" if seq > expected else "repeated or out of order"
            )
            return _fail(expected, "seq_gap", detail)
        if hashlib.sha256(data).digest() != stored:
            return _fail(
                seq, "entry_hash_mismatch", "SHA-256 of the entry differs from its stored hash"
            )
        # Keys are in RFC 8785 order and only "seq" and "time" follow "prev", neither holding
        # an object, so the last ',"prev":"' is the top-level one.
        at = data.rfind(_PREV_KEY)
        if at < 0 or not data.startswith(b'","seq":%d,"time":"' % seq, at + 73):
            return _fail(seq, "seq_mismatch", "the entry does not carry this seq")
        if not data.startswith(self.prev_hex, at + 9):
            return _fail(seq, "chain_broken", "prev is not the previous entry's hash")
        if deep is not None:
            try:
                deep(data)
            except ExchangeError as exc:
                return _fail(seq, "malformed_entry", exc.message)
        return None


@dataclass(frozen=True)
class _CheckedChunk:
    """An aligned chunk whose entries, chain and subtree hashes agree with each other."""

    first_prev: bytes  # the `prev` the chunk's first entry names (hex, ASCII)
    last_hash: bytes  # the hex entry hash of its last entry, the next chunk's `prev`
    root: bytes  # the hash of the perfect subtree over the chunk


def _check_chunk(
    chunk: list[EntryRow],
    found: list[bytes],
    base: int,
    layout: list[Callable[[list[bytes]], tuple[bytes, ...]]],
) -> _CheckedChunk | None:
    # Everything about one aligned chunk that does not depend on the entries before it: seqs,
    # entry hashes, the chain inside the chunk, and every stored hash of the perfect subtree
    # over it. What links it to the log before (its first `prev`, the hashes that climb above
    # it) is left to the caller. None on any doubt; the slow path then finds the exact fault.
    m = len(chunk)
    seqs = list(map(_FIRST, chunk))
    if seqs != list(range(base, base + m)):
        return None
    datas = list(map(_SECOND, chunk))
    sha256 = hashlib.sha256
    digests = [h.digest() for h in map(sha256, datas)]
    if digests != list(map(_THIRD, chunk)):
        return None
    ats = list(map(bytes.rfind, datas, repeat(_PREV_KEY)))
    if min(ats) < 0:
        return None
    first_prev = datas[0][ats[0] + 9 : ats[0] + 73]
    prevs = [first_prev, *map(binascii.hexlify, digests[:-1])]
    if not all(map(bytes.startswith, datas, prevs, map(add, ats, repeat(9)))):
        return None
    tails = [b'","seq":%d,"time":"' % seq for seq in seqs]
    if not all(map(bytes.startswith, datas, tails, map(add, ats, repeat(73)))):
        return None
    # The chunk is a perfect subtree: hash it level by level and compare each level with the
    # stored hashes picked out of their post-order positions.
    if len(found) < 2 * m - 1:
        return None
    level = [h.digest() for h in map(sha256, map(b"\x00".__add__, datas))]
    for positions in layout:
        if tuple(level) != positions(found):
            return None
        if len(level) == 1:
            break
        level = [
            sha256(b"\x01" + left + right).digest()
            for left, right in zip(level[0::2], level[1::2], strict=True)
        ]
    return _CheckedChunk(
        first_prev=first_prev, last_hash=binascii.hexlify(digests[-1]), root=level[0]
    )


def _climb(stack: list[bytes], n: int, node: bytes, climbs: list[bytes]) -> bool:
    # Chunk number `n` (of equal aligned chunks) completes one larger subtree per trailing 1
    # bit of n; its last record stored those parents right after the chunk's own hashes.
    at = 0
    while n & 1:
        node = hashlib.sha256(b"\x01" + stack.pop() + node).digest()
        if at >= len(climbs) or climbs[at] != node:
            return False
        at += 1
        n >>= 1
    stack.append(node)
    return at == len(climbs)


@cache
def _chunk_layout(size: int) -> list[Callable[[list[bytes]], tuple[bytes, ...]]]:
    # Where each level's hashes of an aligned `size`-record subtree sit among the hashes those
    # records store: the same offsets for every aligned chunk, since the low bits of the
    # record numbers are the same.
    first = tlog.stored_hash_index(0, size)
    getters = []
    for level in range(size.bit_length()):
        positions = [
            tlog.stored_hash_index(level, (size >> level) + i) - first for i in range(size >> level)
        ]
        getters.append(_getter(positions))
    return getters


def _getter(positions: list[int]) -> Callable[[list[bytes]], tuple[bytes, ...]]:
    pick = itemgetter(*positions)
    if len(positions) == 1:
        return lambda found: (pick(found),)
    return pick  # itemgetter of several indexes returns a tuple


def _stored_hash_failure(
    first: int, computed: list[bytes], found: list[bytes]
) -> VerificationError:
    at = next(
        (i for i, (want, got) in enumerate(zip(computed, found, strict=False)) if want != got),
        len(found),
    )
    index = first + at
    level, n = tlog.split_stored_hash_index(index)
    seq = ((n + 1) << level) - 1  # the record whose append stored this hash
    kind = "leaf" if level == 0 else "node"
    return _fail(seq, "stored_hash_mismatch", f"stored hash {index} ({kind}) is wrong or missing")


def _root(stack: list[bytes]) -> bytes:
    # The right-edge perfect subtrees, folded right to left (RFC 6962 §2.1 split).
    if not stack:
        return hashlib.sha256(b"").digest()
    node = stack[-1]
    for left in reversed(stack[:-1]):
        node = hashlib.sha256(b"\x01" + left + node).digest()
    return node

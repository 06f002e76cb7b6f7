"""Where a Merkle log's hashes live: the append-only "stored hash index" layout of Go's sumdb tlog.

Every hash of a *complete* subtree is stored once, write-once, in post-order (Crosby & Wallach,
"Efficient Data Structures for Tamper-Evident Logging", 2009, §3.3): appending record n stores
its leaf hash, then the hash of every subtree that record n completes (one per trailing 1 bit of
n). So the level-0 hash of record n sits at index n + n//2 + n//4 + ... and the log holds
``stored_hash_count(n) = 2n - popcount(n)`` hashes: just under two per record, never rewritten.

Hashes of incomplete subtrees (the right edge of a tree whose size is not a power of two) are
never stored: they are the right-to-left fold of at most log2(n) stored complete subtrees.

`HashReader` is how callers hand stored hashes in: ``read(indexes)`` returns the hashes at those
stored-hash indexes in the same order. Every function here builds the full list of indexes it
needs first and calls `read` ONCE, so a database answers a root or a proof in one query.
See: https://research.swtch.com/tlog and https://www.rfc-editor.org/rfc/rfc9162#section-2.1
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence

from exchange.errors import InvalidInputError, StorageError

HashReader = Callable[[Sequence[int]], list[bytes]]
"""``read(indexes) -> hashes``: the stored hashes at `indexes`, in the same order."""

# A half-open range [lo, hi) of record numbers; every range used here is an RFC 6962 subtree,
# i.e. lo is a multiple of the smallest power of two >= hi - lo.
Span = tuple[int, int]

_sha256 = hashlib.sha256
_EMPTY_ROOT = _sha256(b"").digest()


def stored_hash_index(level: int, n: int) -> int:
    """The stored-hash index of the level-`level` hash number `n` (leaves are level 0)."""
    if level < 0 or n < 0:
        raise InvalidInputError(f"no stored hash at level {level}, number {n}")
    # Written while appending its last record k, after the `level` hashes stored before it
    # for k (the leaf and the lower levels of the same subtree).
    last = ((n + 1) << level) - 1
    return 2 * last - last.bit_count() + level


def split_stored_hash_index(index: int) -> tuple[int, int]:
    """The (level, n) stored at `index`: the inverse of `stored_hash_index`."""
    if index < 0:
        raise InvalidInputError(f"no stored hash at index {index}")
    # stored_hash_count(k) = 2k - popcount(k) <= index holds for k = index // 2, and fails
    # within a few dozen steps above it, so walk up to the record k whose hashes hold index.
    k = index // 2
    first = 2 * k - k.bit_count()
    while True:
        after = first + 1 + _trailing_ones(k)
        if after > index:
            break
        k += 1
        first = after
    level = index - first
    return level, k >> level


def stored_hash_count(n_records: int) -> int:
    """How many hashes a log of `n_records` records stores."""
    if n_records < 0:
        raise InvalidInputError(f"negative log size {n_records}")
    return 2 * n_records - n_records.bit_count()


def stored_hashes_for_record(n: int, leaf_hash: bytes, read: HashReader) -> list[bytes]:
    """The hashes to store when appending record `n`, in index order from `stored_hash_index(0, n)`.

    That is `leaf_hash` followed by the hash of every subtree record `n` completes; `read` is
    called once (or not at all for even `n`) for the left siblings, all stored earlier.
    """
    if n < 0:
        raise InvalidInputError(f"negative record number {n}")
    if len(leaf_hash) != 32:
        raise InvalidInputError(f"leaf hash has {len(leaf_hash)} bytes, expected 32")
    ones = _trailing_ones(n)
    out = [leaf_hash]
    if ones:
        siblings = _read(
            read, [stored_hash_index(level, (n >> level) - 1) for level in range(ones)]
        )
        node = leaf_hash
        for left in siblings:
            node = _sha256(b"\x01" + left + node).digest()
            out.append(node)
    return out


def tree_hash(size: int, read: HashReader) -> bytes:
    """The RFC 6962 root of the first `size` records; reads popcount(size) <= 1+log2 n hashes."""
    if size < 0:
        raise InvalidInputError(f"negative tree size {size}")
    if size == 0:
        return _EMPTY_ROOT
    return span_hashes([(0, size)], read)[0]


def subtree_indexes(lo: int, hi: int) -> list[int]:
    """The stored-hash indexes whose right-to-left fold is MTH(D[lo:hi]); [lo, hi) must be a subtree.

    A subtree is a range the RFC 6962 recursion produces: non-empty, and `lo` a multiple of the
    smallest power of two >= hi - lo. Its hash is the fold of its complete parts, largest first.
    """
    width = hi - lo
    if lo < 0 or width <= 0 or lo & ((1 << (width - 1).bit_length()) - 1):
        raise InvalidInputError(f"records [{lo}, {hi}) are not a Merkle subtree")
    out = []
    for level in range(width.bit_length() - 1, -1, -1):
        if width >> level & 1:
            out.append(stored_hash_index(level, lo >> level))
            lo += 1 << level
    return out


def inclusion_spans(index: int, size: int) -> list[Span]:
    """The subtrees whose hashes make the RFC 6962 PATH(index, D[0:size]), leaf to root."""
    if not 0 <= index < size:
        raise InvalidInputError(f"index {index} not below tree size {size}")
    out: list[Span] = []
    lo, hi = 0, size
    while hi - lo > 1:
        k = 1 << ((hi - lo - 1).bit_length() - 1)  # largest power of two < hi - lo
        if index < lo + k:
            out.append((lo + k, hi))
            hi = lo + k
        else:
            out.append((lo, lo + k))
            lo += k
    out.reverse()
    return out


def consistency_spans(old_size: int, new_size: int) -> list[Span]:
    """The subtrees whose hashes make the RFC 6962 PROOF(old_size, D[0:new_size]), in proof order.

    Empty when `old_size` is 0 or equal to `new_size`.
    """
    if not 0 <= old_size <= new_size:
        raise InvalidInputError(f"no consistency proof from size {old_size} to {new_size}")
    out: list[Span] = []
    if old_size in (0, new_size):
        return out
    lo, hi = 0, new_size
    whole_old_tree = True  # SUBPROOF's flag b: the old tree is still [0, hi) itself
    while hi != old_size:
        k = 1 << ((hi - lo - 1).bit_length() - 1)
        if old_size <= lo + k:
            out.append((lo + k, hi))
            hi = lo + k
        else:
            out.append((lo, lo + k))
            lo += k
            whole_old_tree = False
    if not whole_old_tree:
        out.append((lo, hi))
    out.reverse()
    return out


def span_hashes(spans: Sequence[Span], read: HashReader) -> list[bytes]:
    """The Merkle hash of every subtree in `spans`, with one call to `read`."""
    groups = [subtree_indexes(lo, hi) for lo, hi in spans]
    stored = _read(read, [i for group in groups for i in group])
    out = []
    at = 0
    for group in groups:
        end = at + len(group)
        node = stored[end - 1]
        for left in reversed(stored[at : end - 1]):
            node = _sha256(b"\x01" + left + node).digest()
        out.append(node)
        at = end
    return out


def inclusion_proof(index: int, size: int, read: HashReader) -> list[bytes]:
    """The RFC 6962 inclusion proof of record `index` in the tree of `size` records (one read)."""
    return span_hashes(inclusion_spans(index, size), read)


def consistency_proof(old_size: int, new_size: int, read: HashReader) -> list[bytes]:
    """The RFC 6962 consistency proof from tree size `old_size` to `new_size` (one read)."""
    return span_hashes(consistency_spans(old_size, new_size), read)


def _trailing_ones(n: int) -> int:
    return (n ^ (n + 1)).bit_length() - 1


def _read(read: HashReader, indexes: list[int]) -> list[bytes]:
    if not indexes:
        return []
    hashes = read(indexes)
    if len(hashes) != len(indexes):
        raise StorageError(f"asked for {len(indexes)} stored hashes, got {len(hashes)}")
    return hashes

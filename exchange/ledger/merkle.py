"""RFC 6962 / RFC 9162 Merkle tree hashing, proofs and their verification (pure).

Leaf hash = SHA-256(0x00 || entry), node hash = SHA-256(0x01 || left || right), the empty tree's
root is SHA-256(""), and a tree of n > 1 leaves splits at the largest power of two below n.
Proofs are built from stored hashes (see `exchange.ledger.tlog`) and never rehash the log.
See: https://www.rfc-editor.org/rfc/rfc9162#section-2.1
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from exchange.errors import VerificationError
from exchange.ledger import tlog
from exchange.ledger.tlog import HashReader

__all__ = [
    "EMPTY_ROOT",
    "HASH_SIZE",
    "HashReader",
    "consistency_proof",
    "inclusion_proof",
    "leaf_hash",
    "node_hash",
    "root",
    "verify_consistency",
    "verify_inclusion",
]

HASH_SIZE = 32
EMPTY_ROOT = hashlib.sha256(b"").digest()
"""MTH({}), the root of the empty tree."""

_sha256 = hashlib.sha256


def leaf_hash(data: bytes) -> bytes:
    """SHA-256(0x00 || data): the Merkle hash of one log entry."""
    return _sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """SHA-256(0x01 || left || right): the hash of an interior node."""
    return _sha256(b"\x01" + left + right).digest()


def root(leaf_hashes: Sequence[bytes]) -> bytes:
    """MTH of the tree with these leaf hashes (RFC 6962 §2.1), hashing each node once."""
    level = list(leaf_hashes)
    if not level:
        return EMPTY_ROOT
    # Pairing neighbours level by level, carrying an odd last node up unchanged, builds exactly
    # the left-perfect tree of the RFC's split at the largest power of two.
    while len(level) > 1:
        carry = level[-1] if len(level) & 1 else None
        level = [
            _sha256(b"\x01" + a + b).digest() for a, b in zip(level[::2], level[1::2], strict=False)
        ]
        if carry is not None:
            level.append(carry)
    return level[0]


def inclusion_proof(index: int, size: int, get_hash: HashReader) -> list[bytes]:
    """PATH(index, D[0:size]) from stored hashes, leaf to root; one call to `get_hash`.

    Raises `InvalidInputError` unless 0 <= index < size.
    """
    return tlog.inclusion_proof(index, size, get_hash)


def consistency_proof(old: int, new: int, get_hash: HashReader) -> list[bytes]:
    """PROOF(old, D[0:new]) from stored hashes; empty if old is 0 or equals new.

    Raises `InvalidInputError` unless 0 <= old <= new.
    """
    return tlog.consistency_proof(old, new, get_hash)


def verify_inclusion(
    leaf_hash: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes
) -> None:
    """Check that `leaf_hash` is leaf `index` of the tree of `size` leaves with `root`.

    RFC 9162 §2.1.3.2. Raises `VerificationError` (reason ``bad_inclusion_proof``) otherwise.
    """
    _check_hash(leaf_hash, "leaf hash", "bad_inclusion_proof")
    _check_hash(root, "root", "bad_inclusion_proof")
    if index < 0 or size < 0:
        raise _fail("bad_inclusion_proof", f"negative index {index} or tree size {size}")
    if index >= size:
        raise _fail("bad_inclusion_proof", f"index {index} not below tree size {size}")
    expected = _inclusion_length(index, size)
    if len(proof) != expected:
        raise _fail("bad_inclusion_proof", f"proof has {len(proof)} hashes, expected {expected}")
    for at, p in enumerate(proof):
        _check_hash(p, f"proof hash {at}", "bad_inclusion_proof")

    fn, sn, r = index, size - 1, leaf_hash
    for p in proof:
        if fn & 1 or fn == sn:
            r = _sha256(b"\x01" + p + r).digest()
            while not fn & 1 and fn:
                fn >>= 1
                sn >>= 1
        else:
            r = _sha256(b"\x01" + r + p).digest()
        fn >>= 1
        sn >>= 1
    # The length check above makes sn reach 0 exactly; kept as the RFC's own guard.
    if sn != 0:
        raise _fail("bad_inclusion_proof", "proof does not reach the root")
    if r != root:
        raise _fail("bad_inclusion_proof", f"computed root {r.hex()} != {root.hex()}")


def verify_consistency(
    old_size: int, new_size: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]
) -> None:
    """Check that the tree (`new_size`, `new_root`) extends the tree (`old_size`, `old_root`).

    RFC 9162 §2.1.4.2, plus: equal sizes need an empty proof and equal roots; a size-0 old tree
    (whose root must be `EMPTY_ROOT`) is consistent with every tree, with an empty proof.
    Raises `VerificationError` (reason ``bad_consistency_proof``) otherwise.
    """
    reason = "bad_consistency_proof"
    _check_hash(old_root, "old root", reason)
    _check_hash(new_root, "new root", reason)
    if old_size < 0 or new_size < 0:
        raise _fail(reason, f"negative tree size {min(old_size, new_size)}")
    if old_size > new_size:
        raise _fail(reason, f"old tree size {old_size} is larger than new tree size {new_size}")
    if old_size == 0:
        if proof:
            raise _fail(reason, f"proof has {len(proof)} hashes, expected 0")
        if old_root != EMPTY_ROOT:
            raise _fail(
                reason, f"root {old_root.hex()} of the empty tree is not {EMPTY_ROOT.hex()}"
            )
        if new_size == 0 and new_root != EMPTY_ROOT:
            raise _fail(
                reason, f"root {new_root.hex()} of the empty tree is not {EMPTY_ROOT.hex()}"
            )
        return
    if old_size == new_size:
        if proof:
            raise _fail(reason, f"proof has {len(proof)} hashes, expected 0")
        if old_root != new_root:
            raise _fail(
                reason,
                f"same tree size {old_size} with different roots {old_root.hex()} != {new_root.hex()}",
            )
        return
    expected = len(tlog.consistency_spans(old_size, new_size))
    if len(proof) != expected:
        raise _fail(reason, f"proof has {len(proof)} hashes, expected {expected}")
    for at, p in enumerate(proof):
        _check_hash(p, f"proof hash {at}", reason)

    path = list(proof)
    if old_size & (old_size - 1) == 0:
        # A power-of-two old tree is a complete subtree of the new one: its root starts the path.
        path.insert(0, old_root)
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise _fail(reason, "proof is longer than the path to the root")
        if fn & 1 or fn == sn:
            fr = _sha256(b"\x01" + c + fr).digest()
            sr = _sha256(b"\x01" + c + sr).digest()
            while not fn & 1 and fn:
                fn >>= 1
                sn >>= 1
        else:
            sr = _sha256(b"\x01" + sr + c).digest()
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise _fail(reason, "proof does not reach the root")
    if fr != old_root:
        raise _fail(reason, f"computed old root {fr.hex()} != {old_root.hex()}")
    if sr != new_root:
        raise _fail(reason, f"computed new root {sr.hex()} != {new_root.hex()}")


def _inclusion_length(index: int, size: int) -> int:
    # Levels where index's and the last leaf's paths differ need a sibling each; above that,
    # a sibling exists only where index's path is a right child (a 1 bit).
    inner = (index ^ (size - 1)).bit_length()
    return inner + (index >> inner).bit_count()


def _check_hash(value: object, what: str, reason: str) -> None:
    # Proofs often come from partners' JSON: refuse str/None/short values with a clear message.
    if not isinstance(value, bytes) or len(value) != HASH_SIZE:
        got = f"{len(value)} bytes" if isinstance(value, bytes) else type(value).__name__
        raise _fail(reason, f"{what} is not a {HASH_SIZE}-byte hash (got {got})")


def _fail(reason: str, message: str) -> VerificationError:
    return VerificationError(message, reason=reason)

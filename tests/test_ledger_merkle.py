"""RFC 6962 hashing, the tlog stored-hash layout, proofs and their verification."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from functools import cache

import pytest
from hypothesis import given, settings, strategies as st

from exchange.errors import InvalidInputError, StorageError, VerificationError
from exchange.ledger import merkle, tlog
from tests.conftest import VECTORS

CT = json.loads((VECTORS / "ledger" / "rfc6962.json").read_text())
MAX_BRUTE = 300


def h(hex_text: str) -> bytes:
    return bytes.fromhex(hex_text)


def sha(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


# --- RFC 6962 §2.1 written as plain recursion over a list of leaf hashes -----------------------


def split(n: int) -> int:
    k = 1
    while k * 2 < n:
        k *= 2
    return k


class Reference:
    """MTH, PATH and PROOF of RFC 6962 §2.1 as plain recursion over `leaves` (MTH memoised)."""

    def __init__(self, leaves: Sequence[bytes]) -> None:
        self.leaves = leaves
        self.mth = cache(self._mth)

    def _mth(self, lo: int, hi: int) -> bytes:
        if hi == lo:
            return sha(b"")
        if hi - lo == 1:
            return self.leaves[lo]
        k = split(hi - lo)
        return sha(b"\x01" + self.mth(lo, lo + k) + self.mth(lo + k, hi))

    def path(self, m: int, lo: int, hi: int) -> list[bytes]:
        if hi - lo <= 1:
            return []
        k = split(hi - lo)
        if m < k:
            return [*self.path(m, lo, lo + k), self.mth(lo + k, hi)]
        return [*self.path(m - k, lo + k, hi), self.mth(lo, lo + k)]

    def subproof(self, m: int, lo: int, hi: int, whole: bool) -> list[bytes]:
        if m == hi - lo:
            return [] if whole else [self.mth(lo, hi)]
        k = split(hi - lo)
        if m <= k:
            return [*self.subproof(m, lo, lo + k, whole), self.mth(lo + k, hi)]
        return [*self.subproof(m - k, lo + k, hi, False), self.mth(lo, lo + k)]


class Store:
    """A list of stored hashes with a reader that counts calls and indexes read."""

    def __init__(self) -> None:
        self.hashes: list[bytes] = []
        self.calls = 0
        self.read_count = 0

    def read(self, indexes: Sequence[int]) -> list[bytes]:
        self.calls += 1
        self.read_count += len(indexes)
        return [self.hashes[i] for i in indexes]


def build_store(leaves: Sequence[bytes]) -> Store:
    store = Store()
    for n, leaf in enumerate(leaves):
        assert len(store.hashes) == tlog.stored_hash_index(0, n) == tlog.stored_hash_count(n)
        store.hashes += tlog.stored_hashes_for_record(n, leaf, store.read)
    return store


BRUTE_LEAVES = [merkle.leaf_hash(b"record %d" % i) for i in range(MAX_BRUTE)]
BRUTE_STORE = build_store(BRUTE_LEAVES)
REF = Reference(BRUTE_LEAVES)
MTH, PATH, SUBPROOF = REF.mth, REF.path, REF.subproof
CT_LEAVES = [merkle.leaf_hash(h(x)) for x in CT["leaves"]]
CT_STORE = build_store(CT_LEAVES)


# --- hashing and the CT vectors ----------------------------------------------------------------


def test_hash_functions_follow_rfc6962() -> None:
    assert merkle.EMPTY_ROOT == sha(b"")
    assert merkle.leaf_hash(b"abc") == sha(b"\x00abc")
    assert merkle.node_hash(b"L" * 32, b"R" * 32) == sha(b"\x01" + b"L" * 32 + b"R" * 32)


def test_ct_leaf_hashes_and_roots() -> None:
    assert [x.hex() for x in CT_LEAVES] == CT["leaf_hashes"]
    for size, expected in enumerate(CT["roots_by_size"]):
        assert merkle.root(CT_LEAVES[:size]).hex() == expected
        assert tlog.tree_hash(size, CT_STORE.read).hex() == expected


def test_ct_node_hashes_sit_at_their_stored_indexes() -> None:
    for level, row in enumerate(CT["node_hashes_by_level"]):
        for n, expected in enumerate(row):
            assert CT_STORE.hashes[tlog.stored_hash_index(level, n)].hex() == expected
    assert len(CT_STORE.hashes) == tlog.stored_hash_count(8) == 15


@pytest.mark.parametrize(
    "vector", CT["inclusion_proofs"], ids=lambda v: f"{v['index']}-{v['size']}"
)
def test_ct_inclusion_proofs(vector: dict[str, object]) -> None:
    index, size = vector["index"], vector["size"]
    assert isinstance(index, int)
    assert isinstance(size, int)
    path = [h(x) for x in vector["path"]]  # type: ignore[attr-defined]  # a JSON list of hex
    assert merkle.inclusion_proof(index, size, CT_STORE.read) == path
    root = h(CT["roots_by_size"][size])
    merkle.verify_inclusion(CT_LEAVES[index], index, size, path, root)


@pytest.mark.parametrize(
    "vector", CT["consistency_proofs"], ids=lambda v: f"{v['old_size']}-{v['new_size']}"
)
def test_ct_consistency_proofs(vector: dict[str, object]) -> None:
    old, new = vector["old_size"], vector["new_size"]
    assert isinstance(old, int)
    assert isinstance(new, int)
    path = [h(x) for x in vector["path"]]  # type: ignore[attr-defined]  # a JSON list of hex
    assert merkle.consistency_proof(old, new, CT_STORE.read) == path
    merkle.verify_consistency(
        old, new, h(CT["roots_by_size"][old]), h(CT["roots_by_size"][new]), path
    )


# --- the stored hash layout --------------------------------------------------------------------


def test_stored_hash_index_is_post_order() -> None:
    # Leaves and completed subtrees in the order an append-only log writes them.
    order = [(0, 0), (0, 1), (1, 0), (0, 2), (0, 3), (1, 1), (2, 0), (0, 4), (0, 5), (1, 2)]
    assert [tlog.stored_hash_index(level, n) for level, n in order] == list(range(len(order)))
    assert [tlog.split_stored_hash_index(i) for i in range(len(order))] == order


def test_split_inverts_index_over_a_range() -> None:
    for index in range(5000):
        level, n = tlog.split_stored_hash_index(index)
        assert tlog.stored_hash_index(level, n) == index


@given(st.integers(0, 40), st.integers(0, 2**40))
def test_split_inverts_index_for_large_values(level: int, n: int) -> None:
    assert tlog.split_stored_hash_index(tlog.stored_hash_index(level, n)) == (level, n)


@given(st.integers(0, 2**62))
def test_stored_hash_count_is_the_next_leaf_index(n: int) -> None:
    assert tlog.stored_hash_count(n) == tlog.stored_hash_index(0, n)
    assert tlog.stored_hash_count(n) == sum(n >> level for level in range(64))


def test_appending_reads_only_left_siblings_once() -> None:
    store = Store()
    for n, leaf in enumerate(BRUTE_LEAVES[:64]):
        before = store.calls, store.read_count
        stored = tlog.stored_hashes_for_record(n, leaf, store.read)
        ones = (n ^ (n + 1)).bit_length() - 1  # trailing 1 bits of n
        assert len(stored) == 1 + ones
        assert (store.calls - before[0], store.read_count - before[1]) == (min(ones, 1), ones)
        store.hashes += stored
    assert store.hashes == BRUTE_STORE.hashes[: len(store.hashes)]


def test_bad_layout_arguments_raise() -> None:
    with pytest.raises(InvalidInputError, match="no stored hash at level -1, number 0"):
        tlog.stored_hash_index(-1, 0)
    with pytest.raises(InvalidInputError, match="no stored hash at index -1"):
        tlog.split_stored_hash_index(-1)
    with pytest.raises(InvalidInputError, match="negative log size -1"):
        tlog.stored_hash_count(-1)
    with pytest.raises(InvalidInputError, match="leaf hash has 3 bytes, expected 32"):
        tlog.stored_hashes_for_record(0, b"abc", BRUTE_STORE.read)
    with pytest.raises(InvalidInputError, match=r"records \[1, 3\) are not a Merkle subtree"):
        tlog.subtree_indexes(1, 3)
    with pytest.raises(InvalidInputError, match=r"records \[4, 4\) are not a Merkle subtree"):
        tlog.subtree_indexes(4, 4)


def test_a_reader_returning_the_wrong_count_is_a_storage_error() -> None:
    with pytest.raises(StorageError, match="asked for 2 stored hashes, got 1"):
        tlog.tree_hash(3, lambda indexes: [b"\x00" * 32])


# --- against the recursive definition, every size up to MAX_BRUTE ------------------------------


def test_roots_match_the_definition_for_every_size() -> None:
    for size in range(MAX_BRUTE + 1):
        expected = MTH(0, size)
        assert merkle.root(BRUTE_LEAVES[:size]) == expected
        calls, count = BRUTE_STORE.calls, BRUTE_STORE.read_count
        assert tlog.tree_hash(size, BRUTE_STORE.read) == expected
        assert BRUTE_STORE.calls - calls == (1 if size else 0)
        assert BRUTE_STORE.read_count - count == size.bit_count() <= 1 + size.bit_length()


def test_inclusion_proofs_match_the_definition_for_every_index_and_size() -> None:
    for size in range(1, MAX_BRUTE + 1):
        root = MTH(0, size)
        for index in range(size):
            calls = BRUTE_STORE.calls
            proof = merkle.inclusion_proof(index, size, BRUTE_STORE.read)
            assert BRUTE_STORE.calls - calls == (1 if size > 1 else 0)
            assert proof == PATH(index, 0, size), (index, size)
            merkle.verify_inclusion(BRUTE_LEAVES[index], index, size, proof, root)


def test_consistency_proofs_match_the_definition_for_every_pair_of_sizes() -> None:
    for new in range(1, MAX_BRUTE + 1):
        new_root = MTH(0, new)
        for old in range(new + 1):
            proof = merkle.consistency_proof(old, new, BRUTE_STORE.read)
            expected = SUBPROOF(old, 0, new, True) if old else []
            assert proof == expected, (old, new)
            merkle.verify_consistency(old, new, MTH(0, old), new_root, proof)


# --- very large trees: every leaf hash equal, so a subtree's hash depends on its width only ----


@cache
def uniform_hash(width: int) -> bytes:
    if width == 0:
        return merkle.EMPTY_ROOT
    if width == 1:
        return merkle.leaf_hash(b"same")
    k = split(width)
    return merkle.node_hash(uniform_hash(k), uniform_hash(width - k))


def uniform_read(indexes: Sequence[int]) -> list[bytes]:
    return [uniform_hash(1 << tlog.split_stored_hash_index(i)[0]) for i in indexes]


@settings(max_examples=200)
@given(st.integers(1, 2**62).flatmap(lambda n: st.tuples(st.integers(0, n - 1), st.just(n))))
def test_inclusion_in_huge_trees(args: tuple[int, int]) -> None:
    index, size = args
    proof = merkle.inclusion_proof(index, size, uniform_read)
    assert len(proof) <= 2 * size.bit_length()
    merkle.verify_inclusion(uniform_hash(1), index, size, proof, uniform_hash(size))
    assert tlog.tree_hash(size, uniform_read) == uniform_hash(size)


@settings(max_examples=200)
@given(st.integers(1, 2**62).flatmap(lambda n: st.tuples(st.integers(1, n), st.just(n))))
def test_consistency_in_huge_trees(args: tuple[int, int]) -> None:
    old, new = args
    proof = merkle.consistency_proof(old, new, uniform_read)
    merkle.verify_consistency(old, new, uniform_hash(old), uniform_hash(new), proof)


# --- tampering ---------------------------------------------------------------------------------

SOME = sha(b"some other hash")


def inclusion_tamperings(
    leaf: bytes, index: int, size: int, proof: list[bytes], root: bytes
) -> list[tuple[str, tuple[bytes, int, int, list[bytes], bytes]]]:
    out: list[tuple[str, tuple[bytes, int, int, list[bytes], bytes]]] = [
        ("wrong leaf", (SOME, index, size, proof, root)),
        ("wrong root", (leaf, index, size, proof, SOME)),
        ("empty root", (leaf, index, size, proof, merkle.EMPTY_ROOT)),
        ("extra hash at end", (leaf, index, size, [*proof, root], root)),
        ("extra hash at front", (leaf, index, size, [root, *proof], root)),
        ("index + 1", (leaf, index + 1, size, proof, root)),
        ("index - 1", (leaf, index - 1, size, proof, root)),
        ("index ^ 2", (leaf, index ^ 2, size, proof, root)),
        ("size * 2", (leaf, index, size * 2, proof, root)),
        ("size / 2", (leaf, index, size // 2, proof, root)),
    ]
    for at in range(len(proof)):
        for byte in (0, 31):
            flipped = bytearray(proof[at])
            flipped[byte] ^= 1
            out.append(
                (
                    f"flip {at}:{byte}",
                    (leaf, index, size, [*proof[:at], bytes(flipped), *proof[at + 1 :]], root),
                )
            )
        out.append((f"drop {at}", (leaf, index, size, proof[:at] + proof[at + 1 :], root)))
        out.append(
            (f"replace {at}", (leaf, index, size, [*proof[:at], SOME, *proof[at + 1 :]], root))
        )
    if len(proof) > 1:
        out.append(("swap", (leaf, index, size, [proof[1], proof[0], *proof[2:]], root)))
    return out


@pytest.mark.parametrize(
    ("index", "size"),
    [
        (0, 1),
        (0, 8),
        (5, 8),
        (2, 3),
        (1, 5),
        (6, 7),
        (0, 2),
        (12, 13),
        (100, 257),
        (256, 257),
        (7, 300),
    ],
)
def test_every_inclusion_tampering_is_rejected(index: int, size: int) -> None:
    proof = merkle.inclusion_proof(index, size, BRUTE_STORE.read)
    root = MTH(0, size)
    merkle.verify_inclusion(BRUTE_LEAVES[index], index, size, proof, root)
    for what, args in inclusion_tamperings(BRUTE_LEAVES[index], index, size, proof, root):
        leaf, i, n, p, r = args
        if (i, n) != (index, size) and 0 <= i < n <= MAX_BRUTE and BRUTE_LEAVES[i] == leaf:
            continue  # a genuinely different, valid claim
        with pytest.raises(VerificationError) as caught:
            merkle.verify_inclusion(leaf, i, n, p, r)
        assert caught.value.reason == "bad_inclusion_proof", what


def consistency_tamperings(
    old: int, new: int, old_root: bytes, new_root: bytes, proof: list[bytes]
) -> list[tuple[str, tuple[int, int, bytes, bytes, list[bytes]]]]:
    out: list[tuple[str, tuple[int, int, bytes, bytes, list[bytes]]]] = [
        ("old + 1", (old + 1, new, old_root, new_root, proof)),
        ("old - 1", (old - 1, new, old_root, new_root, proof)),
        ("old ^ 2", (old ^ 2, new, old_root, new_root, proof)),
        ("new * 2", (old, new * 2, old_root, new_root, proof)),
        ("new / 2", (old, new // 2, old_root, new_root, proof)),
        ("wrong old root", (old, new, SOME, new_root, proof)),
        ("wrong new root", (old, new, old_root, SOME, proof)),
        ("swapped roots", (old, new, new_root, old_root, proof)),
        ("empty proof", (old, new, old_root, new_root, [])),
        ("extra at end", (old, new, old_root, new_root, [*proof, new_root])),
        ("extra at front", (old, new, old_root, new_root, [old_root, *proof])),
        ("duplicate first", (old, new, old_root, new_root, [proof[0], *proof])),
    ]
    for at in range(len(proof)):
        flipped = bytearray(proof[at])
        flipped[at % 32] ^= 0x10
        out.append(
            (
                f"flip {at}",
                (old, new, old_root, new_root, [*proof[:at], bytes(flipped), *proof[at + 1 :]]),
            )
        )
        out.append((f"drop {at}", (old, new, old_root, new_root, proof[:at] + proof[at + 1 :])))
    return out


@pytest.mark.parametrize(
    ("old", "new"),
    [(1, 2), (1, 8), (6, 8), (2, 5), (6, 7), (3, 4), (4, 7), (5, 300), (128, 300), (127, 129)],
)
def test_every_consistency_tampering_is_rejected(old: int, new: int) -> None:
    proof = merkle.consistency_proof(old, new, BRUTE_STORE.read)
    old_root, new_root = MTH(0, old), MTH(0, new)
    merkle.verify_consistency(old, new, old_root, new_root, proof)
    for what, args in consistency_tamperings(old, new, old_root, new_root, proof):
        with pytest.raises(VerificationError) as caught:
            merkle.verify_consistency(*args)
        assert caught.value.reason == "bad_consistency_proof", what


# --- exact messages and edge cases -------------------------------------------------------------


def test_inclusion_messages() -> None:
    leaf, root = BRUTE_LEAVES[0], MTH(0, 5)
    proof = merkle.inclusion_proof(0, 5, BRUTE_STORE.read)
    cases = [
        ((leaf, 5, 5, proof, root), "index 5 not below tree size 5"),
        ((leaf, 0, 0, [], merkle.EMPTY_ROOT), "index 0 not below tree size 0"),
        ((leaf, -1, 5, proof, root), "negative index -1 or tree size 5"),
        ((leaf, 0, 5, proof[:2], root), "proof has 2 hashes, expected 3"),
        ((leaf, 0, 5, [*proof, root], root), "proof has 4 hashes, expected 3"),
        (
            (leaf, 0, 5, [proof[0], b"short", proof[2]], root),
            r"proof hash 1 is not a 32-byte hash \(got 5 bytes\)",
        ),
        (
            (leaf, 0, 5, [proof[0], proof[1].hex(), proof[2]], root),
            r"proof hash 1 is not a 32-byte hash \(got str\)",
        ),
        ((b"", 0, 5, proof, root), r"leaf hash is not a 32-byte hash \(got 0 bytes\)"),
        ((leaf, 0, 5, proof, SOME), f"computed root {root.hex()} != {SOME.hex()}"),
    ]
    for args, message in cases:
        with pytest.raises(VerificationError, match=message) as caught:
            merkle.verify_inclusion(*args)  # type: ignore[arg-type]  # deliberately wrong types
        assert caught.value.reason == "bad_inclusion_proof"


def test_single_leaf_tree_root_is_its_leaf_hash() -> None:
    merkle.verify_inclusion(BRUTE_LEAVES[0], 0, 1, [], BRUTE_LEAVES[0])
    with pytest.raises(VerificationError, match="computed root"):
        merkle.verify_inclusion(BRUTE_LEAVES[0], 0, 1, [], BRUTE_LEAVES[1])


def test_consistency_edge_cases_accepted() -> None:
    empty, r1, r5 = merkle.EMPTY_ROOT, MTH(0, 1), MTH(0, 5)
    merkle.verify_consistency(0, 0, empty, empty, [])
    merkle.verify_consistency(0, 5, empty, r5, [])
    merkle.verify_consistency(1, 1, r1, r1, [])
    merkle.verify_consistency(5, 5, r5, r5, [])
    assert merkle.consistency_proof(0, 5, BRUTE_STORE.read) == []
    assert merkle.consistency_proof(5, 5, BRUTE_STORE.read) == []
    assert merkle.consistency_proof(0, 0, BRUTE_STORE.read) == []


def test_consistency_messages() -> None:
    empty, r1, r2, r5 = merkle.EMPTY_ROOT, MTH(0, 1), MTH(0, 2), MTH(0, 5)
    proof = merkle.consistency_proof(2, 5, BRUTE_STORE.read)
    proof3 = merkle.consistency_proof(3, 5, BRUTE_STORE.read)
    cases = [
        ((5, 2, r5, r2, []), "old tree size 5 is larger than new tree size 2"),
        ((-1, 2, r5, r2, []), "negative tree size -1"),
        ((0, 0, empty, r1, []), f"root {r1.hex()} of the empty tree is not {empty.hex()}"),
        ((0, 5, r1, r5, []), f"root {r1.hex()} of the empty tree is not {empty.hex()}"),
        ((0, 5, empty, r5, [r1]), "proof has 1 hashes, expected 0"),
        ((5, 5, r5, r5, [r1]), "proof has 1 hashes, expected 0"),
        ((1, 1, r1, r2, []), f"same tree size 1 with different roots {r1.hex()} != {r2.hex()}"),
        ((2, 5, r2, r5, proof[:1]), "proof has 1 hashes, expected 2"),
        ((2, 5, r2, r5, []), "proof has 0 hashes, expected 2"),
        (
            (2, 5, r2, r5, [proof[0], b"x" * 33]),
            r"proof hash 1 is not a 32-byte hash \(got 33 bytes\)",
        ),
        ((2, 5, b"", r5, proof), r"old root is not a 32-byte hash \(got 0 bytes\)"),
        ((3, 5, SOME, r5, proof3), f"computed old root {MTH(0, 3).hex()} != {SOME.hex()}"),
        # A power-of-two old root is itself the proof's first node: a wrong one breaks the new.
        ((2, 5, SOME, r5, proof), "computed new root "),
        ((2, 5, r2, SOME, proof), f"computed new root {r5.hex()} != {SOME.hex()}"),
    ]
    for args, message in cases:
        with pytest.raises(VerificationError, match=message) as caught:
            merkle.verify_consistency(*args)
        assert caught.value.reason == "bad_consistency_proof"


def test_proof_generation_refuses_impossible_arguments() -> None:
    with pytest.raises(InvalidInputError, match="index 5 not below tree size 5"):
        merkle.inclusion_proof(5, 5, BRUTE_STORE.read)
    with pytest.raises(InvalidInputError, match="index -1 not below tree size 5"):
        merkle.inclusion_proof(-1, 5, BRUTE_STORE.read)
    with pytest.raises(InvalidInputError, match="no consistency proof from size 6 to 5"):
        merkle.consistency_proof(6, 5, BRUTE_STORE.read)
    with pytest.raises(InvalidInputError, match="negative tree size -1"):
        tlog.tree_hash(-1, BRUTE_STORE.read)


def test_a_proof_binds_the_size_only_through_its_shape() -> None:
    # Sizes 257..512 give leaf 7 the same path shape, so the proof alone cannot tell them
    # apart: callers must take size and root from ONE verified checkpoint (docs/ledger.md).
    proof = merkle.inclusion_proof(7, 300, BRUTE_STORE.read)
    merkle.verify_inclusion(BRUTE_LEAVES[7], 7, 299, proof, MTH(0, 300))
    assert merkle.inclusion_proof(7, 299, BRUTE_STORE.read) != proof

"""A client's check that a log only grew between two checkpoints, and the ledger key fingerprint."""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Sequence

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from exchange.errors import VerificationError
from exchange.ledger import merkle, tlog
from exchange.ledger.checkpoint import Checkpoint, key_fingerprint
from exchange.ledger.consistency import verify_log_growth
from exchange.ledger.signer import LogSigner

ORIGIN = "exchange.example/ledger"


class Log:
    """An in-memory RFC 6962 log over the records given."""

    def __init__(self, records: Sequence[bytes]) -> None:
        self.hashes: list[bytes] = []
        for n, record in enumerate(records):
            self.hashes += tlog.stored_hashes_for_record(
                n, merkle.leaf_hash(record), lambda ix: [self.hashes[i] for i in ix]
            )
        self.leaves = [merkle.leaf_hash(r) for r in records]

    def checkpoint(self, size: int) -> Checkpoint:
        return Checkpoint(ORIGIN, size, merkle.root(self.leaves[:size]))

    def proof(self, old: int, new: int) -> list[bytes]:
        return merkle.consistency_proof(old, new, lambda ix: [self.hashes[i] for i in ix])


HONEST = Log([b"entry %d" % i for i in range(13)])
# The same first 6 entries, then a different seventh: a rewrite after size 6.
FORKED = Log([b"entry %d" % i for i in range(6)] + [b"forged %d" % i for i in range(6, 13)])


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.mark.parametrize(("old", "new"), [(1, 13), (6, 7), (7, 13), (8, 13), (13, 13)])
def test_a_log_that_only_grew_passes(old: int, new: int):
    verify_log_growth(
        seen=HONEST.checkpoint(old), current=HONEST.checkpoint(new), proof=HONEST.proof(old, new)
    )


def test_a_rewrite_after_the_seen_size_is_not_noticed_because_it_is_no_rewrite():
    # The first 6 entries are the same in both logs: growing from 6 either way is consistent.
    verify_log_growth(
        seen=HONEST.checkpoint(6), current=FORKED.checkpoint(13), proof=FORKED.proof(6, 13)
    )


def test_a_log_rewritten_before_the_seen_size_is_refused():
    seen, current = HONEST.checkpoint(8), FORKED.checkpoint(13)
    with pytest.raises(VerificationError) as caught:
        verify_log_growth(seen=seen, current=current, proof=FORKED.proof(8, 13))
    assert caught.value.reason == "log_rewritten"
    assert re.fullmatch(
        f"the ledger {re.escape(ORIGIN)} at tree size 13 does not extend the checkpoint at "
        r"size 8 this client saw \(computed (old|new) root [0-9a-f]{64} != [0-9a-f]{64}\): "
        "the log was rewritten",
        caught.value.message,
    ), caught.value.message


def test_the_same_size_with_another_root_is_refused():
    seen, current = HONEST.checkpoint(9), FORKED.checkpoint(9)
    with pytest.raises(VerificationError) as caught:
        verify_log_growth(seen=seen, current=current, proof=[])
    assert caught.value.reason == "log_rewritten"
    assert caught.value.message == (
        f"the ledger {ORIGIN} has root {b64(current.root_hash)} at tree size 9, but this client "
        f"saw root {b64(seen.root_hash)} at that size: the log was rewritten"
    )


def test_a_log_that_shrank_is_refused():
    with pytest.raises(VerificationError) as caught:
        verify_log_growth(seen=HONEST.checkpoint(9), current=HONEST.checkpoint(8), proof=[])
    assert caught.value.reason == "log_rewritten"
    assert caught.value.message == (
        f"the ledger {ORIGIN} is now at tree size 8, smaller than the size 9 this client saw "
        "before: the log was rolled back or rewritten"
    )


@pytest.mark.parametrize("damage", ["drop", "flip", "extra"])
def test_a_damaged_proof_is_refused(damage: str):
    proof = HONEST.proof(5, 13)
    if damage == "drop":
        proof = proof[:-1]
    elif damage == "flip":
        proof[0] = bytes([proof[0][0] ^ 1]) + proof[0][1:]
    else:
        proof.append(b"\x00" * 32)
    with pytest.raises(VerificationError) as caught:
        verify_log_growth(seen=HONEST.checkpoint(5), current=HONEST.checkpoint(13), proof=proof)
    assert caught.value.reason == "log_rewritten"


def test_checkpoints_of_two_logs_are_not_compared():
    other = Checkpoint("other.example/ledger", 13, HONEST.checkpoint(13).root_hash)
    with pytest.raises(VerificationError) as caught:
        verify_log_growth(seen=HONEST.checkpoint(5), current=other, proof=HONEST.proof(5, 13))
    assert caught.value.reason == "origin_mismatch"


def test_fingerprint_is_sha256_of_the_raw_key_in_groups_of_four():
    private = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
    raw = private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    digest = hashlib.sha256(raw).hexdigest()
    fingerprint = key_fingerprint(private.public_key())
    assert fingerprint.replace(" ", "") == digest
    assert [len(g) for g in fingerprint.split(" ")] == [4] * 16
    assert LogSigner(private_key=private, origin=ORIGIN).fingerprint == fingerprint

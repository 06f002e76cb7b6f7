"""Proof documents (schemas/proof.v1.json): an entry, its inclusion proof and a signed checkpoint.

A partner verifies one with the log's public key alone: checkpoint signature, then the RFC 9162
inclusion proof of the entry's leaf hash up to the checkpoint's root, then (if present) the old
checkpoint's signature and the consistency proof from it to the new one.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from exchange.errors import InvalidInputError, VerificationError
from exchange.ledger import merkle
from exchange.ledger.checkpoint import Checkpoint
from exchange.ledger.entry import LedgerEntry, parse_entry
from exchange.schema import validate

SCHEMA = "proof.v1.json"
FORMAT = "exchange.ledger-proof/v1"


@dataclass(frozen=True)
class ProvedEntry:
    """What a proof document established."""

    origin: str
    tree_size: int
    root_hash: bytes
    entry: LedgerEntry
    consistent_from: int | None


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: str, *, what: str) -> bytes:
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError) as exc:
        raise InvalidInputError(f"proof {what}: not base64") from exc


def proof_document(
    *,
    checkpoint: str,
    seq: int,
    tree_size: int,
    leaf: bytes,
    inclusion: Sequence[bytes],
    consistency: tuple[int, str, Sequence[bytes]] | None = None,
) -> dict[str, Any]:
    """The proof JSON object; `consistency` is (old size, old signed checkpoint, proof hashes)."""
    origin = checkpoint.split("\n", 1)[0]
    document: dict[str, Any] = {
        "format": FORMAT,
        "origin": origin,
        "checkpoint": checkpoint,
        "seq": seq,
        "tree_size": tree_size,
        "leaf": _b64(leaf),
        "inclusion": [_b64(h) for h in inclusion],
    }
    if consistency is not None:
        old_size, old_note, proof = consistency
        document["consistency"] = {
            "old_size": old_size,
            "old_checkpoint": old_note,
            "proof": [_b64(h) for h in proof],
        }
    return document


def verify_proof_document(
    document: object, *, verify_note: Callable[[str], Checkpoint]
) -> ProvedEntry:
    """Check a proof document; `verify_note` checks a checkpoint's signature and returns its body.

    Raises `InvalidInputError` for a malformed document and `VerificationError` (reasons
    ``origin_mismatch``, ``size_mismatch``, ``seq_mismatch`` and those of `merkle`) otherwise.
    """
    validate(SCHEMA, document)
    if not isinstance(document, dict):  # the schema demands an object; this narrows the type
        raise InvalidInputError("proof is not a JSON object")
    checkpoint = verify_note(document["checkpoint"])
    if checkpoint.origin != document["origin"]:
        raise VerificationError(
            f"checkpoint origin {checkpoint.origin!r} is not {document['origin']!r}",
            reason="origin_mismatch",
        )
    if checkpoint.size != document["tree_size"]:
        raise VerificationError(
            f"checkpoint size {checkpoint.size} is not tree_size {document['tree_size']}",
            reason="size_mismatch",
        )
    leaf = _unb64(document["leaf"], what="leaf")
    entry = parse_entry(leaf)
    if entry.seq != document["seq"]:
        raise VerificationError(
            f"the entry's seq {entry.seq} is not {document['seq']}", reason="seq_mismatch"
        )
    merkle.verify_inclusion(
        merkle.leaf_hash(leaf),
        entry.seq,
        checkpoint.size,
        [_unb64(h, what="inclusion") for h in document["inclusion"]],
        checkpoint.root_hash,
    )
    consistent_from: int | None = None
    if "consistency" in document:
        part = document["consistency"]
        old = verify_note(part["old_checkpoint"])
        if old.origin != checkpoint.origin or old.size != part["old_size"]:
            raise VerificationError(
                f"old checkpoint is {old.origin} size {old.size}, not "
                f"{checkpoint.origin} size {part['old_size']}",
                reason="size_mismatch",
            )
        merkle.verify_consistency(
            old.size,
            checkpoint.size,
            old.root_hash,
            checkpoint.root_hash,
            [_unb64(h, what="consistency") for h in part["proof"]],
        )
        consistent_from = old.size
    return ProvedEntry(
        origin=checkpoint.origin,
        tree_size=checkpoint.size,
        root_hash=checkpoint.root_hash,
        entry=entry,
        consistent_from=consistent_from,
    )

"""Auditors' reads of the custody ledger: checkpoint, one entry with its proof, consistency."""

from __future__ import annotations

import base64
from datetime import datetime
from typing import Any

from sqlmodel import Session

from exchange.errors import NotFoundError
from exchange.ledger.checkpoint import parse_checkpoint_note
from exchange.ledger.signer import LogSigner
from exchange.model import Principal, Role
from exchange.service.access import readable_case
from exchange.signing import public_key_pem
from exchange.storage import ledger_store


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def ledger_key(log: LogSigner) -> dict[str, str]:
    """The ledger's public key: PEM, the C2SP verifier key text partners pin, its fingerprint."""
    return {
        "origin": log.origin,
        "public_key_pem": public_key_pem(log.private_key.public_key()),
        "vkey": log.vkey,
        "fingerprint": log.fingerprint,
    }


def checkpoint(session: Session) -> dict[str, Any]:
    """The latest signed checkpoint; `NotFoundError` for an empty ledger."""
    note = ledger_store.latest_checkpoint(session)
    if note is None:
        raise NotFoundError("the ledger is empty")
    body = parse_checkpoint_note(note)[0]
    return {
        "origin": body.origin,
        "tree_size": body.size,
        "root_hash": _b64(body.root_hash),
        "checkpoint": note,
    }


def entry_proof(
    session: Session, *, principal: Principal, now: datetime, seq: int
) -> dict[str, Any]:
    """One entry with its inclusion proof (schemas/proof.v1.json) under the latest checkpoint.

    An entry about a case is shown only to callers who may see that case (admins: always);
    anyone else gets `NotFoundError`, as for an entry that does not exist.
    """
    row = ledger_store.get_entry(session, seq)
    if row.case_id is not None and principal.role != Role.ADMIN:
        try:
            readable_case(session, principal, row.case_id, now=now)
        except NotFoundError:
            raise NotFoundError(f"no ledger entry {seq}") from None
    return ledger_store.proof(session, seq)


def consistency(session: Session, *, old: int, new: int | None = None) -> dict[str, Any]:
    """The consistency proof from the checkpoint at `old` to the one at `new` (default latest)."""
    latest = checkpoint(session)
    size = latest["tree_size"] if new is None else new
    note = latest["checkpoint"] if new is None else ledger_store.checkpoint_at(session, size)
    proof = ledger_store.consistency_proof(session, old, size)
    return {
        "old_size": old,
        "old_checkpoint": ledger_store.checkpoint_at(session, old),
        "tree_size": size,
        "checkpoint": note,
        "proof": [_b64(h) for h in proof],
    }

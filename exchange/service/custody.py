"""The custody bundle of a case (schemas/custody-bundle.v1.json), verifiable offline.

Every ledger entry about the case, each with its inclusion proof against ONE signed checkpoint,
that checkpoint, the sealed packages' manifests and JWS, and their signers' public keys. The
export itself is recorded first (`custody.exported`), so the bundle proves its own export.
"""

from __future__ import annotations

import base64
from datetime import datetime
from typing import Any

from sqlmodel import Session, col, select

from exchange.grants import check_scope
from exchange.ledger.checkpoint import parse_checkpoint_note
from exchange.ledger.entry import Action, NewEntry
from exchange.ledger.signer import LogSigner
from exchange.model import Principal, parse_json
from exchange.service.access import actor_of, readable_case
from exchange.service.packages import SEALED, signer_entry
from exchange.storage import ledger_store
from exchange.storage.tables import PackageRow

FORMAT = "exchange.custody-bundle/v1"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def custody_bundle(
    session: Session, *, log: LogSigner, principal: Principal, now: datetime, case_id: str
) -> dict[str, Any]:
    """Record `custody.exported` and build the case's custody bundle under the new checkpoint."""
    case = readable_case(session, principal, case_id, now=now)
    check_scope(principal, "custody:read")
    appended = ledger_store.append(
        session,
        NewEntry(
            actor=actor_of(principal),
            action=Action.CUSTODY_EXPORTED,
            case_id=case.id,
            details={"format": FORMAT},
        ),
        log=log,
        now=now,
    )
    note = appended.checkpoint
    size = parse_checkpoint_note(note)[0].size
    entries = [
        {
            "seq": row.seq,
            "leaf": _b64(bytes(row.data)),
            "inclusion": [_b64(h) for h in ledger_store.inclusion_proof(session, row.seq, size)],
        }
        for row in ledger_store.entries_for_case(session, case.id)
        if row.seq < size
    ]
    sealed = session.exec(
        select(PackageRow)
        .where(PackageRow.case_id == case.id, PackageRow.state == SEALED)
        .order_by(col(PackageRow.sealed_at), col(PackageRow.id))
    ).all()
    packages = [
        {
            "package_id": p.id,
            "manifest": parse_json(p.manifest, what="stored manifest"),
            "jws": p.jws,
        }
        for p in sealed
    ]
    key_ids = sorted({p.signer_key_id for p in sealed})
    return {
        "format": FORMAT,
        "case_id": case.id,
        "origin": log.origin,
        "tree_size": size,
        "exported_at": now.isoformat(),
        "checkpoint": note,
        "entries": entries,
        "packages": packages,
        "signer_keys": [signer_entry(session, kid) for kid in key_ids],
    }

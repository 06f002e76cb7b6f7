"""The custody bundle of a case (schemas/custody-bundle.v2.json), verifiable offline.

Exporting is two steps, so that writers never wait for an export: `record_export` appends the
`custody.exported` entry in a short write transaction (it becomes the last leaf of its own
checkpoint, which is what lets the bundle prove that no later entry of the case exists), then
`build_bundle` reads everything else in a read-only transaction. Every row it reads is at or
below the export's seq, which no later append changes.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from exchange.custody import FORMAT_V2
from exchange.custody.disclosure import Audience, disclosed
from exchange.grants import check_scope
from exchange.ledger import merkle
from exchange.ledger.entry import Action, NewEntry
from exchange.ledger.signer import LogSigner
from exchange.model import Principal, parse_json
from exchange.service.access import actor_of, readable_case
from exchange.service.packages import signer_entry
from exchange.storage import ledger_store
from exchange.storage.db import session_scope
from exchange.storage.tables import PackageRow

FORMAT = FORMAT_V2


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


@dataclass(frozen=True)
class Export:
    """A recorded export: whose case, for whom, and the entry (last leaf of `checkpoint`)."""

    case_id: str
    owner_agency: str
    audience: Audience
    seq: int
    checkpoint: str
    exported_at: datetime


def record_export(
    session: Session, *, log: LogSigner, principal: Principal, now: datetime, case_id: str
) -> Export:
    """Check access and append `custody.exported`; commit before `build_bundle`."""
    case = readable_case(session, principal, case_id, now=now)
    check_scope(principal, "custody:read")
    audience = Audience(
        agency=principal.agency,
        country=principal.country,
        owner=principal.agency == case.owner_agency,
    )
    appended = ledger_store.append(
        session,
        NewEntry(
            actor=actor_of(principal),
            action=Action.CUSTODY_EXPORTED,
            case_id=case.id,
            details={"format": FORMAT, "audience": audience.view},
        ),
        log=log,
        now=now,
    )
    return Export(
        case_id=case.id,
        owner_agency=case.owner_agency,
        audience=audience,
        seq=appended.seq,
        checkpoint=appended.checkpoint,
        exported_at=now,
    )


_CASE_PREV = b',"case_prev":"'
_DETAILS = b'"details":'


def _without_case_prev(data: bytes) -> bytes:
    # A v2 entry's case_prev is the chain head over the entries before it, which the verifier
    # folds anyway: a bundle leaves it out (docs/ledger.md) and saves 78 bytes an entry. In
    # canonical bytes the top-level key comes before "details", and no string can hold the
    # unescaped quote the marker starts with, so the first match before "details" is it.
    at = data.find(_CASE_PREV)
    if at < 0 or at > data.find(_DETAILS):
        return data
    return data[:at] + data[at + len(_CASE_PREV) + 65 :]


# Stored entries are canonical JSON that was validated when appended (and `ledger verify --deep`
# re-checks it), so a partner's export reads the two facts it needs from fixed places instead
# of parsing ten thousand entries: in canonical order the actor's "agency" is the first key of
# that name ("act", before it, holds only "name" and "sub"), and the top-level "case_seq" comes
# before "details"; no JSON string can hold the unescaped quotes these markers contain.
_AGENCY = b'"agency":"'
_CASE_SEQ = b',"case_seq":'
_GRANT_ACTIONS = (Action.GRANT_ISSUED.value, Action.GRANT_REVOKED.value)


def _decision_view(row: ledger_store.CaseEntryRow) -> dict[str, Any]:
    """What `disclosed` reads of an entry: action, acting agency, and a grant's details."""
    if row.action in _GRANT_ACTIONS:
        view: dict[str, Any] = json.loads(row.data)
        return view
    at = row.data.index(_AGENCY) + len(_AGENCY)
    agency = row.data[at : row.data.index(b'"', at)].decode("ascii")
    return {"action": row.action, "actor": {"agency": agency}, "details": {}}


def _case_seq(data: bytes, index: int) -> int:
    """The entry's case_seq; its place in the case for an entry written before v2."""
    at = data.find(_CASE_SEQ)
    if at < 0 or at > data.find(_DETAILS):
        return index
    start = at + len(_CASE_SEQ)
    return int(data[start : data.index(b",", start)])


def build_bundle(session: Session, *, export: Export, origin: str) -> bytes:
    """The bundle of a recorded export as JSON bytes, read in `session` (read-only is enough).

    Built as text: the stored entries are canonical JSON already, and parsing and re-encoding
    ten thousand of them would cost more than everything else the export does.
    """
    size = export.seq + 1
    rows = ledger_store.case_entries(session, export.case_id, below=size)
    entries: list[bytes] = []
    if export.audience.owner:
        # Every entry disclosed: the stored bytes go out as they are, nothing parsed.
        entries = [b'{"entry":%s,"seq":%d}' % (_without_case_prev(r.data), r.seq) for r in rows]
    else:
        views = [_decision_view(r) for r in rows]
        shown = disclosed(views, owner_agency=export.owner_agency, audience=export.audience)
        for index, (row, show) in enumerate(zip(rows, shown, strict=True)):
            if show:
                entries.append(b'{"entry":%s,"seq":%d}' % (_without_case_prev(row.data), row.seq))
            else:
                entries.append(
                    b'{"case_seq":%d,"leaf_hash":"%s","seq":%d}'
                    % (
                        _case_seq(row.data, index),
                        _b64(merkle.leaf_hash(row.data)).encode(),
                        row.seq,
                    )
                )
    sealed_ids = [
        r.package_id for r in rows if r.action == Action.PACKAGE_SEALED and r.package_id is not None
    ]
    sealed = {
        p.id: p
        for p in session.exec(select(PackageRow).where(col(PackageRow.id).in_(sealed_ids))).all()
    }
    packages = [
        {
            "package_id": pid,
            "manifest": parse_json(sealed[pid].manifest, what="stored manifest"),
            "jws": sealed[pid].jws,
        }
        for pid in dict.fromkeys(sealed_ids)
        if pid in sealed
    ]
    key_ids = sorted({p.signer_key_id for p in sealed.values()})
    key_entries = [
        {
            "seq": seq,
            "entry": json.loads(data),
            "inclusion": [_b64(h) for h in ledger_store.inclusion_proof(session, seq, size)],
        }
        for seq, data in ledger_store.key_entries(session, key_ids, below=size)
    ]
    head = {
        "format": FORMAT,
        "case_id": export.case_id,
        "origin": origin,
        "tree_size": size,
        "exported_at": export.exported_at.isoformat(),
        "audience": export.audience.to_wire(),
        "checkpoint": export.checkpoint,
        "export_inclusion": [
            _b64(h) for h in ledger_store.inclusion_proof(session, export.seq, size)
        ],
        "key_entries": key_entries,
        "packages": packages,
        "signer_keys": [signer_entry(session, kid) for kid in key_ids],
    }
    text = json.dumps(head, ensure_ascii=False, separators=(",", ":")).encode()
    return text[:-1] + b',"entries":[' + b",".join(entries) + b"]}"


def export_bundle(
    engine: Engine, *, log: LogSigner, principal: Principal, now: datetime, case_id: str
) -> bytes:
    """Record the export (short write), then build its bundle (JSON) in a read-only transaction."""
    with session_scope(engine) as session:
        export = record_export(session, log=log, principal=principal, now=now, case_id=case_id)
    with session_scope(engine, read_only=True) as session:
        return build_bundle(session, export=export, origin=log.origin)

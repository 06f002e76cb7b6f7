"""Cases: open one for the caller's agency, list and read the ones the caller may see."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import Engine
from sqlmodel import Session, col, or_, select

from exchange.errors import InvalidInputError
from exchange.grants import check_scope
from exchange.ledger.entry import Action, NewEntry
from exchange.ledger.signer import LogSigner
from exchange.model import Principal
from exchange.service.access import AnyRow, actor_of, granted_case_ids, readable_case_row
from exchange.storage import ledger_store
from exchange.storage.db import session_scope
from exchange.storage.tables import CaseRow

MAX_TEXT = 500
MAX_CLASSIFICATION = 100


def case_document(case: CaseRow | AnyRow) -> dict[str, Any]:
    """The JSON form of a case (its ORM object, or a row of its columns)."""
    return {
        "case_id": case.id,
        "owner_agency": case.owner_agency,
        "case_ref": case.case_ref,
        "title": case.title,
        "classification": case.classification,
        "created_at": case.created_at.isoformat(),
    }


def _text(name: str, value: str, limit: int) -> str:
    if not value.strip() or len(value) > limit or any(ord(c) < 0x20 for c in value):
        raise InvalidInputError(f"{name} must be 1 to {limit} printable characters, not blank")
    return value


def open_case(
    session: Session,
    *,
    log: LogSigner,
    principal: Principal,
    now: datetime,
    case_ref: str,
    title: str,
    classification: str,
) -> CaseRow:
    """Open a case owned by the caller's agency (ledger `case.opened`)."""
    check_scope(principal, "cases:write")
    case = CaseRow(
        id=str(uuid.uuid4()),
        owner_agency=principal.agency,
        case_ref=_text("case_ref", case_ref, MAX_TEXT),
        title=_text("title", title, MAX_TEXT),
        classification=_text("classification", classification, MAX_CLASSIFICATION),
        created_by=principal.client_id,
        created_at=now,
    )
    session.add(case)
    session.flush()
    ledger_store.append(
        session,
        NewEntry(
            actor=actor_of(principal),
            action=Action.CASE_OPENED,
            case_id=case.id,
            details={"case_ref": case_ref, "title": title, "classification": classification},
        ),
        log=log,
        now=now,
    )
    return case


def list_cases(engine: Engine, *, principal: Principal, now: datetime) -> list[CaseRow]:
    """The cases the caller's agency owns and those a live grant opens to it, oldest first."""
    # Read-only: on SQLite it reads a snapshot instead of queueing for the write lock.
    with session_scope(engine, read_only=True) as session:
        granted = granted_case_ids(
            session, country=principal.country, agency=principal.agency, now=now
        )
        query = select(CaseRow).where(
            or_(CaseRow.owner_agency == principal.agency, col(CaseRow.id).in_(granted))
        )
        return list(session.exec(query.order_by(col(CaseRow.created_at), col(CaseRow.id))).all())


def get_case(engine: Engine, *, principal: Principal, now: datetime, case_id: str) -> AnyRow:
    """One case the caller may see, checked against its live grants; `NotFoundError` otherwise."""
    with session_scope(engine, read_only=True) as session:
        return readable_case_row(session, principal, case_id, now=now)

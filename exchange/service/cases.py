"""Cases: open one for the caller's agency, list and read the ones the caller may see."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, Table, bindparam, or_, select as core_select, tuple_
from sqlmodel import Session

from exchange.errors import InvalidInputError
from exchange.grants import check_scope
from exchange.ledger.entry import Action, NewEntry
from exchange.ledger.signer import LogSigner
from exchange.model import Principal
from exchange.service.access import AnyRow, actor_of, live_grant_exists, readable_case_row
from exchange.signing import b64url, b64url_decode
from exchange.storage import ledger_store
from exchange.storage.db import session_scope
from exchange.storage.tables import CaseRow

MAX_TEXT = 500
MAX_CLASSIFICATION = 100
DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000

_CASE: Table = CaseRow.__table__  # type: ignore[attr-defined]  # SQLModel sets it


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


@dataclass(frozen=True)
class CasePage:
    """One page of the cases a caller may see, and the cursor of the next page (None at the end)."""

    cases: list[AnyRow]
    next_cursor: str | None


def _cursor(row: AnyRow) -> str:
    return b64url(json.dumps([row.created_at.isoformat(), row.id]).encode())


def _after(cursor: str) -> tuple[datetime, str]:
    """The (created_at, id) position a cursor names; `InvalidInputError` if it is not ours."""
    try:
        created, case_id = json.loads(b64url_decode(cursor))
        position = (datetime.fromisoformat(created), case_id)
    except (ValueError, TypeError) as exc:
        raise InvalidInputError("cursor is malformed") from exc
    if position[0].tzinfo is None or not isinstance(case_id, str) or len(case_id) > 36:
        raise InvalidInputError("cursor is malformed")
    return position


def list_cases(
    engine: Engine,
    *,
    principal: Principal,
    now: datetime,
    limit: int = DEFAULT_PAGE_SIZE,
    cursor: str | None = None,
) -> CasePage:
    """The cases the caller's agency owns and those a live grant opens to it, oldest first.

    One page of at most `limit` (1 to `MAX_PAGE_SIZE`) cases after `cursor` (a `next_cursor` of
    an earlier page). Pages are keyed on (created_at, id), so a case opened while a caller pages
    through appears on a later page and none is skipped or repeated. Raises `InvalidInputError`
    for a limit out of range or a malformed cursor.
    """
    if not 1 <= limit <= MAX_PAGE_SIZE:
        raise InvalidInputError(f"limit must be 1 to {MAX_PAGE_SIZE}")
    order = (_CASE.c.created_at, _CASE.c.id)
    query = core_select(_CASE).where(
        or_(
            _CASE.c.owner_agency == principal.agency,
            live_grant_exists(
                _CASE.c.id, country=principal.country, agency=principal.agency, now=now
            ),
        )
    )
    if cursor is not None:
        created, case_id = _after(cursor)
        # Typed binds: the column's own conversion (SQLite keeps times as text in its format).
        position = tuple_(bindparam(None, created, type_=order[0].type), bindparam(None, case_id))
        query = query.where(tuple_(*order) > position)
    # Read-only: on SQLite it reads a snapshot instead of queueing for the write lock.
    with session_scope(engine, read_only=True) as session:
        rows = list(session.connection().execute(query.order_by(*order).limit(limit + 1)))
    more = len(rows) > limit
    rows = rows[:limit]
    return CasePage(cases=rows, next_cursor=_cursor(rows[-1]) if more else None)


def get_case(engine: Engine, *, principal: Principal, now: datetime, case_id: str) -> AnyRow:
    """One case the caller may see, checked against its live grants; `NotFoundError` otherwise."""
    with session_scope(engine, read_only=True) as session:
        return readable_case_row(session, principal, case_id, now=now)

"""Object-level access checked against the database: the case, its grants, and who is acting."""

from __future__ import annotations

from datetime import datetime

from sqlmodel import Session, col, or_, select

from exchange.errors import NotFoundError
from exchange.grants import CaseView, GrantView, check_case_access, check_case_owner, is_grant_live
from exchange.ledger.entry import Actor
from exchange.model import Principal
from exchange.storage.tables import CaseRow, GrantRow


def actor_of(principal: Principal) -> Actor:
    """The ledger actor for a request: the caller's agency, country and client id."""
    return Actor(
        agency=principal.agency, country=principal.country, subject=f"client:{principal.client_id}"
    )


def grant_view(row: GrantRow) -> GrantView:
    """The authorization view of one grant row."""
    return GrantView(
        grant_id=row.id,
        case_id=row.case_id,
        grantee_country=row.grantee_country,
        grantee_agency=row.grantee_agency,
        scope=frozenset(row.scope.split()),
        expires_at=row.expires_at,
        revoked_at=row.revoked_at,
    )


def _view(case: CaseRow) -> CaseView:
    return CaseView(case_id=case.id, owner_agency=case.owner_agency)


def _case_and_grants(
    session: Session, principal: Principal, case_id: str
) -> tuple[CaseRow | None, list[GrantView]]:
    case = session.get(CaseRow, case_id)
    if case is None or case.owner_agency == principal.agency:
        # The owner needs no grant: skip the query on the most common path.
        return case, []
    # Only grants to the caller's country can cover it; the grant rules still decide.
    rows = session.exec(
        select(GrantRow).where(
            GrantRow.case_id == case_id, GrantRow.grantee_country == principal.country
        )
    ).all()
    return case, [grant_view(r) for r in rows]


def readable_case(
    session: Session, principal: Principal, case_id: str, *, now: datetime
) -> CaseRow:
    """The case if the caller's agency owns it or a live grant covers the caller.

    Raises `NotFoundError` for a missing case and for one the caller may not see alike.
    """
    case, grants = _case_and_grants(session, principal, case_id)
    if case is None:
        raise NotFoundError("case not found")
    check_case_access(principal, _view(case), grants, now=now)
    return case


def owned_case(session: Session, principal: Principal, case_id: str, *, now: datetime) -> CaseRow:
    """The case if the caller's agency owns it; `NotFoundError` if invisible, else `ForbiddenError`."""
    case, grants = _case_and_grants(session, principal, case_id)
    if case is None:
        raise NotFoundError("case not found")
    check_case_owner(principal, _view(case), grants, now=now)
    return case


def granted_case_ids(session: Session, *, country: str, agency: str, now: datetime) -> list[str]:
    """Ids of the cases a live grant opens to a country, or to the agency by name."""
    rows = session.exec(
        select(GrantRow).where(
            GrantRow.grantee_country == country,
            or_(col(GrantRow.grantee_agency).is_(None), GrantRow.grantee_agency == agency),
            col(GrantRow.revoked_at).is_(None) | (col(GrantRow.revoked_at) > now),
            col(GrantRow.expires_at) > now,
        )
    ).all()
    views = [grant_view(r) for r in rows]
    return sorted({v.case_id for v in views if is_grant_live(v, now=now) and "read" in v.scope})

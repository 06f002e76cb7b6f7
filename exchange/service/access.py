"""Object-level access checked against the database: the case, its grants, and who is acting."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from types import SimpleNamespace
from typing import Any, Final

from sqlalchemy import (
    ColumnElement,
    Exists,
    Row,
    Select,
    Table,
    and_,
    bindparam,
    exists,
    literal,
    or_,
    select as core_select,
)
from sqlmodel import Session

from exchange.errors import NotFoundError
from exchange.grants import (
    CaseView,
    GrantView,
    authorizing_grant,
    check_case_access,
    check_case_owner,
)
from exchange.ledger.entry import Actor
from exchange.model import Principal
from exchange.storage.tables import CaseRow, GrantRow

# A Core result row of any columns.
AnyRow = Row[*tuple[Any, ...]]


def actor_of(principal: Principal) -> Actor:
    """The ledger actor for a request: the caller's agency, country, client id and the officer
    its token names (`act`), so every entry made with that token records who acted."""
    return Actor(
        agency=principal.agency,
        country=principal.country,
        subject=f"client:{principal.client_id}",
        act=principal.act,
    )


def grant_view(row: GrantRow | AnyRow | SimpleNamespace) -> GrantView:
    """The authorization view of one grant row (ORM object, Core row, or its named columns)."""
    return GrantView(
        grant_id=row.id,
        case_id=row.case_id,
        grantee_country=row.grantee_country,
        grantee_agency=row.grantee_agency,
        scope=frozenset(row.scope.split()),
        expires_at=row.expires_at,
        revoked_at=row.revoked_at,
        legal_basis_type=row.legal_basis_type,
        legal_basis_reference=row.legal_basis_reference,
    )


def grant_detail(grant: GrantView | None) -> dict[str, Any] | None:
    """The `grant` detail of an entry recording a read: the grant's id and legal basis.

    None (recorded as JSON null) when the caller's agency owns the case and needs no grant.
    """
    if grant is None:
        return None
    return {
        "grant_id": grant.grant_id,
        "legal_basis": {"type": grant.legal_basis_type, "reference": grant.legal_basis_reference},
    }


def _view(case: CaseRow) -> CaseView:
    return CaseView(case_id=case.id, owner_agency=case.owner_agency)


_CASE: Table = CaseRow.__table__  # type: ignore[attr-defined]  # SQLModel sets it
_GRANT: Table = GrantRow.__table__  # type: ignore[attr-defined]

# The per-request reads as Core statements, built once: no ORM objects, identity map or
# statement building per request (about a fifth of the cost of the ORM forms here).
_CASE_BY_ID = core_select(_CASE).where(_CASE.c.id == bindparam("case_id"))
# Only grants to the caller's country can cover it; the grant rules still decide.
_GRANTS_TO_COUNTRY = core_select(
    _GRANT.c.id,
    _GRANT.c.case_id,
    _GRANT.c.grantee_country,
    _GRANT.c.grantee_agency,
    _GRANT.c.scope,
    _GRANT.c.expires_at,
    _GRANT.c.revoked_at,
    _GRANT.c.legal_basis_type,
    _GRANT.c.legal_basis_reference,
).where(_GRANT.c.case_id == bindparam("case_id"), _GRANT.c.grantee_country == bindparam("country"))


# The grant columns under names of their own, to read beside a case (or file) row: see
# `with_grants_to_country`.
_GRANT_LABELS: Final = tuple(
    c.label(f"grant_{c.name}") for c in _GRANTS_TO_COUNTRY.selected_columns
)


def with_grants_to_country(query: Select[Any]) -> Select[Any]:
    """`query` (which selects from `evidence_case`) with the case's grants to the country bound
    as ``country`` joined on, one row per grant (one row with null grant columns if none).

    The owner's and the partner's reads then cost one round trip alike; the join probes the
    grant index (case_id, grantee_country), so the country's other grants are never read.
    """
    on = and_(_GRANT.c.case_id == _CASE.c.id, _GRANT.c.grantee_country == bindparam("country"))
    return query.add_columns(*_GRANT_LABELS).outerjoin(_GRANT, on)


def check_joined(
    principal: Principal, case: CaseView, rows: Sequence[AnyRow], *, now: datetime
) -> GrantView | None:
    """`readable_case` on rows read with `with_grants_to_country`: the grant the caller reads
    under (`authorizing_grant`), None for the owner. Raises `NotFoundError` if the caller may
    not see the case."""
    if case.owner_agency == principal.agency:
        return None
    grants = joined_grants(rows)
    check_case_access(principal, case, grants, now=now)
    return authorizing_grant(principal, case, grants, now=now)


def joined_grants(rows: Sequence[AnyRow]) -> list[GrantView]:
    """The grants of rows read with `with_grants_to_country`."""
    return [
        grant_view(SimpleNamespace(**{c.element.name: r._mapping[c.name] for c in _GRANT_LABELS}))
        for r in rows
        if r.grant_id is not None
    ]


# A case and its grants to the caller's country, in one round trip.
_CASE_WITH_GRANTS = with_grants_to_country(_CASE_BY_ID)


def _grants_for(session: Session, principal: Principal, case_id: str) -> list[GrantView]:
    rows = session.connection().execute(
        _GRANTS_TO_COUNTRY, {"case_id": case_id, "country": principal.country}
    )
    return [grant_view(r) for r in rows]


def _case_and_grants(
    session: Session, principal: Principal, case_id: str
) -> tuple[CaseRow | None, list[GrantView]]:
    case = session.get(CaseRow, case_id)
    if case is None or case.owner_agency == principal.agency:
        # The owner needs no grant: skip the query on the most common path.
        return case, []
    return case, _grants_for(session, principal, case_id)


def check_readable(
    session: Session, principal: Principal, case: CaseView, *, now: datetime
) -> GrantView | None:
    """`readable_case` for a case already read: its live grants are read now, unless owned.

    Returns the grant the caller reads under (`authorizing_grant`), None for the owner. Raises
    `NotFoundError` if the caller may not see the case.
    """
    if case.owner_agency == principal.agency:
        return None
    grants = _grants_for(session, principal, case.case_id)
    check_case_access(principal, case, grants, now=now)
    return authorizing_grant(principal, case, grants, now=now)


def readable_case_and_grant(
    session: Session, principal: Principal, case_id: str, *, now: datetime
) -> tuple[CaseRow, GrantView | None]:
    """`readable_case`, and the grant the caller reads it under (None for the owner)."""
    case, grants = _case_and_grants(session, principal, case_id)
    if case is None:
        raise NotFoundError("case not found")
    view = _view(case)
    check_case_access(principal, view, grants, now=now)
    return case, authorizing_grant(principal, view, grants, now=now)


def readable_case(
    session: Session, principal: Principal, case_id: str, *, now: datetime
) -> CaseRow:
    """The case if the caller's agency owns it or a live grant covers the caller.

    Raises `NotFoundError` for a missing case and for one the caller may not see alike.
    """
    return readable_case_and_grant(session, principal, case_id, now=now)[0]


def readable_case_row(
    session: Session, principal: Principal, case_id: str, *, now: datetime
) -> AnyRow:
    """`readable_case` read as a plain row of the case's columns (nothing to write back)."""
    rows = (
        session.connection()
        .execute(_CASE_WITH_GRANTS, {"case_id": case_id, "country": principal.country})
        .all()
    )
    if not rows:
        raise NotFoundError("case not found")
    row = rows[0]
    check_case_access(
        principal,
        CaseView(case_id=row.id, owner_agency=row.owner_agency),
        joined_grants(rows),
        now=now,
    )
    return row


def owned_case(session: Session, principal: Principal, case_id: str, *, now: datetime) -> CaseRow:
    """The case if the caller's agency owns it; `NotFoundError` if invisible, else `ForbiddenError`."""
    case, grants = _case_and_grants(session, principal, case_id)
    if case is None:
        raise NotFoundError("case not found")
    check_case_owner(principal, _view(case), grants, now=now)
    return case


def live_grant_exists(
    case_id: ColumnElement[str], *, country: str, agency: str, now: datetime
) -> Exists:
    """SQL for "a live read grant on `case_id` opens it to this country, or to the agency by
    name": `grants.can_read_case` for non-owners, as a correlated EXISTS.

    Never a list of granted ids bound as parameters (PostgreSQL's driver refuses more than
    65,535 of them, and each id would go through Python). Correlated, so a listing walks the
    cases in page order and probes the grant index (case_id, grantee_country) per case: a page
    costs its own rows when most cases are granted, and at worst one pass over the cases when
    few are.
    """
    padded_scope = literal(" ") + _GRANT.c.scope + literal(" ")
    return exists().where(
        _GRANT.c.case_id == case_id,
        _GRANT.c.grantee_country == country,
        or_(_GRANT.c.grantee_agency.is_(None), _GRANT.c.grantee_agency == agency),
        or_(_GRANT.c.revoked_at.is_(None), _GRANT.c.revoked_at > now),
        _GRANT.c.expires_at > now,
        padded_scope.like("% read %"),
    )

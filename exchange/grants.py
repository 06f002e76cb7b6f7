"""Object-level authorization: who may see a case, and whether a new grant is acceptable (pure).

A case is visible to its owning agency and to callers covered by a live grant (not expired, not
revoked) for their country, or for their agency when the grant names one. The service checks
this against the database on every request, so a revocation bites on the next request even
while an older token still names the case. A case the caller may not see is answered exactly as
a case that does not exist (`NotFoundError`): no existence oracle.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final

from exchange.errors import ForbiddenError, InvalidInputError, NotFoundError
from exchange.model import LegalBasisType, Principal

GRANT_SCOPES: Final = frozenset({"read"})
MAX_GRANT_DURATION: Final = timedelta(days=365)
MAX_REFERENCE_LENGTH: Final = 500

_COUNTRY = re.compile(r"^[A-Z]{2}\Z")
_AGENCY = re.compile(r"^[A-Z]{2}-[A-Z0-9][A-Z0-9-]{0,62}\Z")


@dataclass(frozen=True)
class GrantView:
    """What authorization needs to know of one grant row."""

    grant_id: str
    case_id: str
    grantee_country: str
    grantee_agency: str | None
    scope: frozenset[str]
    expires_at: datetime
    revoked_at: datetime | None = None
    # The authority a fetch or read under this grant is recorded with (`authorizing_grant`).
    legal_basis_type: str | None = None
    legal_basis_reference: str | None = None


@dataclass(frozen=True)
class CaseView:
    """What authorization needs to know of one case row."""

    case_id: str
    owner_agency: str


def is_grant_live(grant: GrantView, *, now: datetime) -> bool:
    """Whether the grant is neither revoked (at or before `now`) nor expired at `now`."""
    if grant.revoked_at is not None and grant.revoked_at <= now:
        return False
    return now < grant.expires_at


def grant_covers(grant: GrantView, principal: Principal, *, scope: str = "read") -> bool:
    """Whether the grant gives `scope` to the principal's country, and agency if it names one."""
    if scope not in grant.scope or grant.grantee_country != principal.country:
        return False
    return grant.grantee_agency is None or grant.grantee_agency == principal.agency


def is_case_owner(principal: Principal, case: CaseView) -> bool:
    """Whether the principal belongs to the agency that owns the case."""
    return principal.agency == case.owner_agency


def can_read_case(
    principal: Principal, case: CaseView, grants: Iterable[GrantView], *, now: datetime
) -> bool:
    """Owner agency, or a live grant on this very case that covers the principal."""
    if is_case_owner(principal, case):
        return True
    return any(
        g.case_id == case.case_id and is_grant_live(g, now=now) and grant_covers(g, principal)
        for g in grants
    )


def authorizing_grant(
    principal: Principal, case: CaseView, grants: Iterable[GrantView], *, now: datetime
) -> GrantView | None:
    """The live grant under which a non-owner reads `case`; None for the owner or if none covers.

    When several cover the caller, the one naming its agency is chosen over a country-wide one
    (the narrower authority), then the one that lasts longest, then the lowest id: the same
    grant for the same set of grants, whatever order the database returned them in.
    """
    if is_case_owner(principal, case):
        return None
    covering = [
        g
        for g in grants
        if g.case_id == case.case_id and is_grant_live(g, now=now) and grant_covers(g, principal)
    ]
    if not covering:
        return None
    return min(
        covering,
        key=lambda g: (g.grantee_agency is None, -g.expires_at.timestamp(), g.grant_id),
    )


def check_case_access(
    principal: Principal, case: CaseView | None, grants: Iterable[GrantView], *, now: datetime
) -> CaseView:
    """Return the case if the principal may read it; `NotFoundError` if absent or not visible.

    Pass `case=None` when no such case exists: the answer is then the same as for a hidden one.
    """
    if case is None or not can_read_case(principal, case, grants, now=now):
        raise NotFoundError("case not found")
    return case


def check_case_owner(
    principal: Principal, case: CaseView | None, grants: Iterable[GrantView], *, now: datetime
) -> CaseView:
    """Return the case if the principal's agency owns it.

    `NotFoundError` if the case is absent or invisible to the principal; `ForbiddenError` if
    the principal may read it under a grant but is not of the owning agency.
    """
    case = check_case_access(principal, case, grants, now=now)
    if not is_case_owner(principal, case):
        raise ForbiddenError("only the owning agency may do this")
    return case


def check_scope(principal: Principal, scope: str) -> None:
    """Raise `ForbiddenError` unless the principal's token carries `scope`."""
    if not principal.has_scope(scope):
        raise ForbiddenError(f"this requires the {scope} scope")


def check_new_grant(
    *,
    case: CaseView,
    grantee_country: str,
    grantee_agency: str | None,
    scope: Sequence[str],
    legal_basis_type: str,
    legal_basis_reference: str,
    expires_at: datetime,
    now: datetime,
    max_duration: timedelta = MAX_GRANT_DURATION,
) -> None:
    """Validate a grant request on `case`; raise `InvalidInputError` naming the first problem."""
    if not _COUNTRY.match(grantee_country):
        raise InvalidInputError("grantee_country must be an ISO 3166-1 alpha-2 code, e.g. PH")
    if grantee_agency is not None:
        if not _AGENCY.match(grantee_agency):
            raise InvalidInputError("grantee_agency must be an agency id, e.g. PH-NBI")
        if not grantee_agency.startswith(grantee_country + "-"):
            raise InvalidInputError("grantee_agency must belong to grantee_country")
        if grantee_agency == case.owner_agency:
            raise InvalidInputError("grantee_agency already owns the case")
    if isinstance(scope, str) or not scope:
        raise InvalidInputError('scope must be a non-empty list, e.g. ["read"]')
    if len(set(scope)) != len(scope):
        raise InvalidInputError("scope must not repeat an entry")
    if not set(scope) <= GRANT_SCOPES:
        raise InvalidInputError('scope may only hold "read"')
    if legal_basis_type not in {t.value for t in LegalBasisType}:
        allowed = ", ".join(t.value for t in LegalBasisType)
        raise InvalidInputError(f"legal_basis.type must be one of: {allowed}")
    if not legal_basis_reference.strip() or len(legal_basis_reference) > MAX_REFERENCE_LENGTH:
        raise InvalidInputError("legal_basis.reference must be 1 to 500 characters, not blank")
    if expires_at.tzinfo is None:
        raise InvalidInputError("expires_at must carry a UTC offset")
    if expires_at <= now:
        raise InvalidInputError("expires_at must be in the future")
    if expires_at - now > max_duration:
        raise InvalidInputError(f"expires_at must be at most {max_duration.days} days from now")

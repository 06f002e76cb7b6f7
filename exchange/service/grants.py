"""Grants: the owning agency opens a case to a partner country (or one agency), and revokes it."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlmodel import Session, col, select

from exchange.errors import ConflictError, NotFoundError
from exchange.grants import CaseView, check_new_grant, check_scope, is_grant_live
from exchange.ledger.entry import Action, NewEntry
from exchange.ledger.signer import LogSigner
from exchange.model import Principal
from exchange.service.access import actor_of, grant_view, owned_case
from exchange.storage import ledger_store
from exchange.storage.tables import GrantRow


def grant_document(row: GrantRow, *, now: datetime) -> dict[str, Any]:
    """The JSON form of a grant."""
    return {
        "grant_id": row.id,
        "case_id": row.case_id,
        "grantee_country": row.grantee_country,
        "grantee_agency": row.grantee_agency,
        "scope": row.scope.split(),
        "legal_basis": {"type": row.legal_basis_type, "reference": row.legal_basis_reference},
        "expires_at": row.expires_at.isoformat(),
        "issued_by": row.issued_by,
        "created_at": row.created_at.isoformat(),
        "revoked_at": row.revoked_at.isoformat() if row.revoked_at else None,
        "live": is_grant_live(grant_view(row), now=now),
    }


def issue_grant(
    session: Session,
    *,
    log: LogSigner,
    principal: Principal,
    now: datetime,
    case_id: str,
    grantee_country: str,
    grantee_agency: str | None,
    scope: Sequence[str],
    legal_basis_type: str,
    legal_basis_reference: str,
    expires_at: datetime,
) -> GrantRow:
    """Grant read access to a case the caller's agency owns (ledger `grant.issued`)."""
    case = owned_case(session, principal, case_id, now=now)
    check_scope(principal, "grants:manage")
    check_new_grant(
        case=CaseView(case_id=case.id, owner_agency=case.owner_agency),
        grantee_country=grantee_country,
        grantee_agency=grantee_agency,
        scope=scope,
        legal_basis_type=legal_basis_type,
        legal_basis_reference=legal_basis_reference,
        expires_at=expires_at,
        now=now,
    )
    row = GrantRow(
        id=str(uuid.uuid4()),
        case_id=case.id,
        grantee_country=grantee_country,
        grantee_agency=grantee_agency,
        scope=" ".join(sorted(scope)),
        legal_basis_type=legal_basis_type,
        legal_basis_reference=legal_basis_reference,
        expires_at=expires_at,
        issued_by=principal.client_id,
        created_at=now,
    )
    session.add(row)
    session.flush()
    details: dict[str, Any] = {
        "grant_id": row.id,
        "grantee_country": grantee_country,
        "scope": sorted(scope),
        "legal_basis": {"type": legal_basis_type, "reference": legal_basis_reference},
        "expires_at": row.expires_at.isoformat(),
    }
    if grantee_agency is not None:
        details["grantee_agency"] = grantee_agency
    ledger_store.append(
        session,
        NewEntry(
            actor=actor_of(principal), action=Action.GRANT_ISSUED, case_id=case.id, details=details
        ),
        log=log,
        now=now,
    )
    return row


def revoke_grant(
    session: Session,
    *,
    log: LogSigner,
    principal: Principal,
    now: datetime,
    case_id: str,
    grant_id: str,
) -> GrantRow:
    """Revoke a grant from `now` on (ledger `grant.revoked`); `ConflictError` if already revoked."""
    case = owned_case(session, principal, case_id, now=now)
    check_scope(principal, "grants:manage")
    row = session.get(GrantRow, grant_id)
    if row is None or row.case_id != case.id:
        raise NotFoundError("grant not found")
    if row.revoked_at is not None:
        raise ConflictError(f"grant {grant_id} was already revoked")
    row.revoked_at = now
    row.revoked_by = principal.client_id
    session.add(row)
    session.flush()
    ledger_store.append(
        session,
        NewEntry(
            actor=actor_of(principal),
            action=Action.GRANT_REVOKED,
            case_id=case.id,
            details={"grant_id": row.id},
        ),
        log=log,
        now=now,
    )
    return row


def list_grants(
    session: Session, *, principal: Principal, now: datetime, case_id: str
) -> Sequence[GrantRow]:
    """Every grant of a case the caller's agency owns, oldest first."""
    case = owned_case(session, principal, case_id, now=now)
    check_scope(principal, "grants:manage")
    return session.exec(
        select(GrantRow)
        .where(GrantRow.case_id == case.id)
        .order_by(col(GrantRow.created_at), col(GrantRow.id))
    ).all()

"""Grants of a case: issue, revoke, list (the owning agency only)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from pydantic import AwareDatetime, BaseModel, ConfigDict

from exchange.api.deps import ContextDep, NowDep, PrincipalDep, SessionDep
from exchange.api.documents import GrantDocument, GrantList
from exchange.api.openapi import AUTHENTICATED, BACKEND, JSON_BODY, declare
from exchange.service import grants

router = APIRouter(prefix="/v1/cases/{case_id}/grants", tags=["grants"])


class LegalBasisIn(BaseModel):
    """The legal instrument a grant rests on."""

    model_config = ConfigDict(extra="forbid")

    type: str
    reference: str


class NewGrant(BaseModel):
    """Body of POST /v1/cases/{id}/grants."""

    model_config = ConfigDict(extra="forbid")

    grantee_country: str
    grantee_agency: str | None = None
    scope: list[str]
    legal_basis: LegalBasisIn
    expires_at: AwareDatetime


@router.post(
    "",
    status_code=201,
    response_model=None,
    responses=declare(GrantDocument, *AUTHENTICATED, *JSON_BODY, *BACKEND, 404, ok=(201,)),
)
def create_grant(
    case_id: str,
    body: NewGrant,
    context: ContextDep,
    session: SessionDep,
    principal: PrincipalDep,
    now: NowDep,
) -> JSONResponse:
    """Let a partner country (or one agency of it) read the case until `expires_at`."""
    row = grants.issue_grant(
        session,
        log=context.log,
        principal=principal,
        now=now,
        case_id=case_id,
        grantee_country=body.grantee_country,
        grantee_agency=body.grantee_agency,
        scope=list(body.scope),
        legal_basis_type=body.legal_basis.type,
        legal_basis_reference=body.legal_basis.reference,
        expires_at=body.expires_at,
    )
    return JSONResponse(grants.grant_document(row, now=now), status_code=201)


@router.delete(
    "/{grant_id}",
    response_model=None,
    responses=declare(GrantDocument, *AUTHENTICATED, *BACKEND, 404, 409, 422),
)
def delete_grant(
    case_id: str,
    grant_id: str,
    context: ContextDep,
    session: SessionDep,
    principal: PrincipalDep,
    now: NowDep,
) -> dict[str, Any]:
    """Revoke a grant; it stops opening the case on the very next request."""
    row = grants.revoke_grant(
        session, log=context.log, principal=principal, now=now, case_id=case_id, grant_id=grant_id
    )
    return grants.grant_document(row, now=now)


@router.get("", response_model=None, responses=declare(GrantList, *AUTHENTICATED, 404, 422))
def list_grants(
    case_id: str, session: SessionDep, principal: PrincipalDep, now: NowDep
) -> dict[str, Any]:
    """Every grant of the case, live or not."""
    rows = grants.list_grants(session, principal=principal, now=now, case_id=case_id)
    return {"grants": [grants.grant_document(r, now=now) for r in rows]}

"""The custody bundle of a case."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from exchange.api.deps import ContextDep, NowDep, PrincipalDep, SessionDep
from exchange.service import custody

router = APIRouter(prefix="/v1/cases/{case_id}", tags=["custody"])


@router.get("/custody")
def get_custody(
    case_id: str, context: ContextDep, session: SessionDep, principal: PrincipalDep, now: NowDep
) -> dict[str, Any]:
    """Every ledger entry of the case with proofs under one checkpoint, manifests, signer keys."""
    return custody.custody_bundle(
        session, log=context.log, principal=principal, now=now, case_id=case_id
    )

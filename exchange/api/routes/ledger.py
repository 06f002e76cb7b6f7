"""The custody ledger for auditors: key, checkpoint, entries with proofs, consistency."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query

from exchange.api.deps import ContextDep, NowDep, PrincipalDep, SessionDep
from exchange.api.documents import CheckpointDocument, ConsistencyDocument, LedgerKey, ProofDocument
from exchange.api.openapi import AUTHENTICATED, DATABASE, UNEXPECTED, declare
from exchange.service import ledger

router = APIRouter(prefix="/v1/ledger", tags=["ledger"])

# Sizes and seqs are stored as 64-bit integers; a larger number is a bad request, not a crash.
MAX_INDEX = 2**63 - 1


@router.get("/key", response_model=None, responses=declare(LedgerKey, *UNEXPECTED))
def get_ledger_key(context: ContextDep) -> dict[str, str]:
    """The ledger's public key (PEM), C2SP verifier key and fingerprint: pin it to verify offline."""
    return ledger.ledger_key(context.log)


@router.get(
    "/checkpoint", response_model=None, responses=declare(CheckpointDocument, *DATABASE, 404)
)
def get_checkpoint(session: SessionDep) -> dict[str, Any]:
    """The latest signed checkpoint."""
    return ledger.checkpoint(session)


@router.get(
    "/entries/{seq}",
    response_model=None,
    responses=declare(ProofDocument, *AUTHENTICATED, 404, 422),
)
def get_entry(
    seq: Annotated[int, Path(ge=0, le=MAX_INDEX)],
    session: SessionDep,
    principal: PrincipalDep,
    now: NowDep,
) -> dict[str, Any]:
    """One entry with its inclusion proof (schemas/proof.v1.json)."""
    return ledger.entry_proof(session, principal=principal, now=now, seq=seq)


@router.get(
    "/consistency",
    response_model=None,
    responses=declare(ConsistencyDocument, *DATABASE, 404, 422),
)
def get_consistency(
    session: SessionDep,
    old: Annotated[int, Query(ge=1, le=MAX_INDEX)],
    new: Annotated[int | None, Query(ge=1, le=MAX_INDEX)] = None,
) -> dict[str, Any]:
    """The consistency proof from tree size `old` to `new` (default: the latest checkpoint)."""
    return ledger.consistency(session, old=old, new=new)

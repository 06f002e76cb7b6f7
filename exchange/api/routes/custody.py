"""The custody bundle of a case."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from exchange.api.deps import ContextDep, NowDep, PrincipalDep
from exchange.api.documents import CustodyBundle
from exchange.api.openapi import AUTHENTICATED, BACKEND, declare
from exchange.service import custody

router = APIRouter(prefix="/v1/cases/{case_id}", tags=["custody"])


@router.get(
    "/custody",
    response_model=None,
    responses=declare(CustodyBundle, *AUTHENTICATED, *BACKEND, 404, 422),
)
async def get_custody(
    case_id: str, context: ContextDep, principal: PrincipalDep, now: NowDep
) -> Response:
    """The case's custody bundle v2 for the caller: complete, redacted for a partner, with proofs."""
    # No request-wide transaction: the export entry commits in a short write of its own and
    # the bundle is read in a read-only one, so no upload or fetch waits for a large export.
    # The service returns the JSON text itself: encoding a 10,000-entry bundle through the
    # framework's generic encoder would take longer than building it.
    body = await run_in_threadpool(
        custody.export_bundle,
        context.engine,
        log=context.log,
        principal=principal,
        now=now,
        case_id=case_id,
    )
    return Response(content=body, media_type="application/json")

"""Cases: open, list, read."""

from __future__ import annotations

from typing import Annotated, Any, Final
from urllib.parse import urlencode

from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict

from exchange.api.deps import ContextDep, NowDep, PrincipalDep, SessionDep
from exchange.api.documents import CaseDocument, CaseList
from exchange.api.openapi import AUTHENTICATED, BACKEND, JSON_BODY, declare
from exchange.service import cases

router = APIRouter(prefix="/v1/cases", tags=["cases"])

# A cursor is base64url of [created_at, case id]: about 110 characters.
MAX_CURSOR_LENGTH: Final = 200


class NewCase(BaseModel):
    """Body of POST /v1/cases."""

    model_config = ConfigDict(extra="forbid")

    case_ref: str
    title: str
    classification: str


@router.post(
    "",
    status_code=201,
    response_model=None,
    responses=declare(CaseDocument, *AUTHENTICATED, *JSON_BODY, *BACKEND, ok=(201,)),
)
def create_case(
    body: NewCase, context: ContextDep, session: SessionDep, principal: PrincipalDep, now: NowDep
) -> JSONResponse:
    """Open a case owned by the caller's agency."""
    case = cases.open_case(
        session, log=context.log, principal=principal, now=now, **body.model_dump()
    )
    document = cases.case_document(case)
    return JSONResponse(document, status_code=201, headers={"Location": f"/v1/cases/{case.id}"})


# The reads open their own read-only transaction inside the endpoint's one thread-pool hop,
# instead of a SessionDep, whose enter and exit would each be a hop of their own.


@router.get("", response_model=None, responses=declare(CaseList, *AUTHENTICATED, 422))
def list_cases(
    context: ContextDep,
    principal: PrincipalDep,
    now: NowDep,
    limit: Annotated[int, Query(ge=1, le=cases.MAX_PAGE_SIZE)] = cases.DEFAULT_PAGE_SIZE,
    cursor: Annotated[str | None, Query(min_length=1, max_length=MAX_CURSOR_LENGTH)] = None,
) -> JSONResponse:
    """The cases the caller may see, oldest first, one page at a time.

    `next` is the URL of the next page (also sent as an RFC 8288 `Link: rel="next"`), or null
    after the last page.
    """
    page = cases.list_cases(
        context.engine, principal=principal, now=now, limit=limit, cursor=cursor
    )
    next_url = (
        None
        if page.next_cursor is None
        else f"{router.prefix}?{urlencode({'limit': limit, 'cursor': page.next_cursor})}"
    )
    body = {"cases": [cases.case_document(r) for r in page.cases], "next": next_url}
    headers = {} if next_url is None else {"Link": f'<{next_url}>; rel="next"'}
    return JSONResponse(body, headers=headers)


@router.get(
    "/{case_id}", response_model=None, responses=declare(CaseDocument, *AUTHENTICATED, 404, 422)
)
def get_case(
    case_id: str, context: ContextDep, principal: PrincipalDep, now: NowDep
) -> dict[str, Any]:
    """One case (404 if it does not exist or the caller may not see it)."""
    return cases.case_document(
        cases.get_case(context.engine, principal=principal, now=now, case_id=case_id)
    )

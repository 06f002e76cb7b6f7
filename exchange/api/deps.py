"""Typed dependencies of the routes: the app context, a transaction, the caller, the time."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlmodel import Session

from exchange.api.context import AppContext
from exchange.api.dpop import authorization, check_resource_proof
from exchange.errors import CredentialsMissingError, DPoPRequiredError, UnauthenticatedError
from exchange.model import Principal
from exchange.storage.db import session_scope

_bearer = HTTPBearer(auto_error=False, description="Access token from POST /v1/token")


# The dependencies that neither block nor take long are `async def`: FastAPI runs a plain `def`
# dependency in the thread pool, and a hop there and back costs more than these take.


async def get_context(request: Request) -> AppContext:
    """The app's context, built by the lifespan."""
    context: AppContext = request.app.state.context
    return context


ContextDep = Annotated[AppContext, Depends(get_context)]


def get_session(context: ContextDep) -> Iterator[Session]:
    """One transaction per request: committed before the response is sent, rolled back on error."""
    with session_scope(context.engine) as session:
        yield session


# scope="function": the transaction commits (or fails) before the answer goes out, so a client
# never sees success for a change that did not commit.
SessionDep = Annotated[Session, Depends(get_session, scope="function")]


async def utc_now() -> datetime:
    """The request's time (one value per request)."""
    return datetime.now(UTC)


NowDep = Annotated[datetime, Depends(utc_now)]


async def get_principal(
    request: Request,
    context: ContextDep,
    now: NowDep,
    _credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    """The caller, from a verified access token (and, for a DPoP-bound one, a valid proof of
    its key, RFC 9449); `UnauthenticatedError` otherwise.

    `_credentials` only declares the scheme in OpenAPI: HTTPBearer reads `Bearer` alone, and
    the header is parsed here for `DPoP` too.
    """
    given = authorization(request)
    if given is None or given[0] not in ("bearer", "dpop"):
        raise CredentialsMissingError("a bearer access token is required")
    scheme, token = given
    # On the event loop: a token seen before is a dictionary hit, a new one one Ed25519 check.
    principal = context.verifier.verify(token, now=now)
    if principal.dpop_jkt is None:
        if scheme == "dpop":
            raise UnauthenticatedError("invalid access token: it is not bound to a DPoP key")
        if not context.settings.bearer_tokens_allowed:
            raise DPoPRequiredError(
                "invalid access token: bearer tokens are refused here; log in with DPoP"
            )
        return principal
    if scheme != "dpop":
        # A stolen bound token replayed as a plain bearer token.
        raise DPoPRequiredError(
            "invalid access token: a DPoP-bound token needs the DPoP scheme and a DPoP proof"
        )
    await check_resource_proof(
        request, context, access_token=token, bound_jkt=principal.dpop_jkt, now=now
    )
    return principal


PrincipalDep = Annotated[Principal, Depends(get_principal)]

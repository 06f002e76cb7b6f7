"""Typed dependencies of the routes: the app context, a transaction, the caller, the time."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlmodel import Session

from exchange.api.context import AppContext
from exchange.errors import CredentialsMissingError
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
    context: ContextDep,
    now: NowDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    """The caller, from a verified bearer access token; `UnauthenticatedError` otherwise."""
    # On the event loop: a token seen before is a dictionary hit, a new one one Ed25519 check.
    if credentials is None:
        raise CredentialsMissingError("a bearer access token is required")
    return context.verifier.verify(credentials.credentials, now=now)


PrincipalDep = Annotated[Principal, Depends(get_principal)]

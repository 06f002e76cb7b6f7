"""POST /v1/token (OAuth 2.0 client credentials with a private_key_jwt assertion) and the JWKS."""

from __future__ import annotations

from typing import Annotated, Any, Final

from fastapi import APIRouter, Form
from fastapi.responses import JSONResponse

from exchange.api.deps import ContextDep, NowDep, SessionDep
from exchange.errors import UnauthenticatedError
from exchange.service import tokens

router = APIRouter(tags=["token"])

ASSERTION_TYPE: Final = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
_NO_STORE: Final = {"Cache-Control": "no-store", "Pragma": "no-cache"}


def oauth_error(status: int, error: str, description: str) -> JSONResponse:
    """An RFC 6749 §5.2 error answer."""
    body = {"error": error, "error_description": description}
    return JSONResponse(body, status_code=status, headers=_NO_STORE)


def _request_problem(
    grant_type: str | None, assertion_type: str | None, assertion: str | None
) -> JSONResponse | None:
    if grant_type != "client_credentials":
        return oauth_error(400, "unsupported_grant_type", "grant_type must be client_credentials")
    if assertion_type != ASSERTION_TYPE or not assertion:
        return oauth_error(
            400, "invalid_request", f"client_assertion_type must be {ASSERTION_TYPE}"
        )
    return None


@router.post("/v1/token", response_model=None)
def post_token(
    context: ContextDep,
    session: SessionDep,
    now: NowDep,
    grant_type: Annotated[str | None, Form()] = None,
    client_assertion_type: Annotated[str | None, Form()] = None,
    client_assertion: Annotated[str | None, Form()] = None,
    client_id: Annotated[str | None, Form()] = None,
) -> JSONResponse:
    """Exchange a signed client assertion (RFC 7523) for an access token (RFC 9068)."""
    refused = _request_problem(grant_type, client_assertion_type, client_assertion)
    if refused is not None or client_assertion is None:
        return refused or oauth_error(400, "invalid_request", "client_assertion is required")
    try:
        issued = tokens.issue_token(
            session,
            issuer=context.issuer,
            verifier=context.verifier,
            assertion=client_assertion,
            token_endpoint=context.token_endpoint,
            now=now,
            client_id=client_id,
        )
    except UnauthenticatedError as exc:
        return oauth_error(401, "invalid_client", exc.message)
    body = {
        "access_token": issued.access_token,
        "token_type": "Bearer",
        "expires_in": issued.expires_in,
        "scope": issued.scope,
    }
    return JSONResponse(body, headers=_NO_STORE)


@router.get("/.well-known/jwks.json")
def get_jwks(context: ContextDep) -> dict[str, Any]:
    """The public keys access tokens are signed with (RFC 7517)."""
    return context.issuer.jwks()

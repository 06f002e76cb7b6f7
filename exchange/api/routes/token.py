"""OAuth 2.0: POST /v1/token (client credentials with a private_key_jwt assertion), the JWKS,
and the authorization server metadata (RFC 8414) that names both."""

from __future__ import annotations

from datetime import datetime
from functools import partial
from typing import Annotated, Any, Final

from fastapi import APIRouter, Form, Request
from fastapi.responses import JSONResponse

from exchange.api.context import AppContext
from exchange.api.deps import ContextDep, NowDep, SessionDep
from exchange.api.documents import AuthorizationServerMetadata, JsonWebKeySet, TokenResponse
from exchange.api.dpop import DPOP_HEADER, NONCE_HEADER, single_proof
from exchange.api.openapi import DATABASE, UNEXPECTED, declare, oauth_errors
from exchange.auth import ROLE_SCOPES
from exchange.dpop import DPOP_ALGS, verify_proof
from exchange.errors import DPoPNonceRequiredError, InvalidDPoPProofError, UnauthenticatedError
from exchange.service import tokens
from exchange.signing import ALGORITHMS

router = APIRouter(tags=["token"])

ASSERTION_TYPE: Final = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
_NO_STORE: Final = {"Cache-Control": "no-store", "Pragma": "no-cache"}


def oauth_error(
    status: int, error: str, description: str, *, nonce: str | None = None
) -> JSONResponse:
    """An RFC 6749 §5.2 error answer; with `nonce`, the DPoP-Nonce to use (RFC 9449 §8)."""
    body = {"error": error, "error_description": description}
    headers = dict(_NO_STORE)
    if nonce is not None:
        headers[NONCE_HEADER] = nonce
    return JSONResponse(body, status_code=status, headers=headers)


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


def _proven_key(request: Request, context: AppContext, now: datetime) -> str | JSONResponse | None:
    """The thumbprint of the key a DPoP proof proves (RFC 9449 §5), None without a proof where
    bearer tokens are allowed, or the error answer (400, RFC 9449 §5 and §8)."""
    if not request.headers.getlist(DPOP_HEADER):
        if context.settings.bearer_tokens_allowed:
            return None
        return oauth_error(
            400, "invalid_dpop_proof", "a DPoP proof is required: this exchange binds every token"
        )
    try:
        proof = verify_proof(
            single_proof(request),
            htm="POST",
            htu=context.token_endpoint,
            now=now,
            nonces=context.nonces if context.settings.dpop_nonce else None,
            remember_jti=partial(context.proofs.remember, now=now),
        )
    except DPoPNonceRequiredError as exc:
        return oauth_error(400, "use_dpop_nonce", exc.message, nonce=exc.nonce)
    except InvalidDPoPProofError as exc:
        return oauth_error(400, "invalid_dpop_proof", exc.message)
    return proof.jkt


@router.post(
    "/v1/token",
    response_model=None,
    responses={**declare(TokenResponse, 413, *DATABASE), **oauth_errors(400, 401)},
)
def post_token(
    request: Request,
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
    # The proof first: a client told to fetch a nonce retries with the same, unspent assertion.
    jkt = _proven_key(request, context, now)
    if isinstance(jkt, JSONResponse):
        return jkt
    try:
        issued = tokens.issue_token(
            session,
            issuer=context.issuer,
            verifier=context.verifier,
            assertion=client_assertion,
            token_endpoint=context.token_endpoint,
            now=now,
            client_id=client_id,
            dpop_jkt=jkt,
        )
    except UnauthenticatedError as exc:
        return oauth_error(401, "invalid_client", exc.message)
    body = {
        "access_token": issued.access_token,
        "token_type": "Bearer" if jkt is None else "DPoP",
        "expires_in": issued.expires_in,
        "scope": issued.scope,
    }
    return JSONResponse(body, headers=_NO_STORE)


class JwkSetResponse(JSONResponse):
    """A JWK Set, with its registered media type (RFC 7517 §8.5.1)."""

    media_type = "application/jwk-set+json"


@router.get(
    "/.well-known/jwks.json",
    response_model=None,
    response_class=JwkSetResponse,
    responses=declare(JsonWebKeySet, *UNEXPECTED),
)
def get_jwks(context: ContextDep) -> dict[str, Any]:
    """The public keys access tokens are signed with (RFC 7517)."""
    return context.issuer.jwks()


@router.get(
    "/.well-known/oauth-authorization-server",
    response_model=None,
    responses=declare(AuthorizationServerMetadata, *UNEXPECTED),
)
def get_authorization_server_metadata(context: ContextDep) -> dict[str, Any]:
    """Where and how clients get access tokens (RFC 8414): issuer, token endpoint, JWKS."""
    issuer = context.settings.public_url.rstrip("/")
    return {
        "issuer": issuer,
        "token_endpoint": context.token_endpoint,
        "jwks_uri": f"{issuer}/.well-known/jwks.json",
        "grant_types_supported": ["client_credentials"],
        "token_endpoint_auth_methods_supported": ["private_key_jwt"],
        # The client's registered key decides the algorithm; these are the ones a key can have.
        "token_endpoint_auth_signing_alg_values_supported": list(ALGORITHMS),
        # No authorization endpoint: clients authenticate as themselves, never for a user.
        "response_types_supported": [],
        "scopes_supported": sorted({s for scopes in ROLE_SCOPES.values() for s in scopes}),
        # RFC 9449 §5.1: the algorithms DPoP proofs may be signed with.
        "dpop_signing_alg_values_supported": list(DPOP_ALGS),
    }

"""DPoP (RFC 9449) at the HTTP edge: the Authorization header, a request's proof, and nonces.

The checks themselves are `exchange.dpop`'s; this module feeds them the request as the client
addressed it (the node's public URL, not whatever host the proxy forwarded) and the node's
nonce source and replay cache.
"""

from __future__ import annotations

from datetime import UTC, datetime
from functools import partial
from typing import Final

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from exchange.api.context import AppContext
from exchange.dpop import verify_proof
from exchange.errors import InvalidDPoPProofError

DPOP_HEADER: Final = "dpop"
NONCE_HEADER: Final = "DPoP-Nonce"


def authorization(request: Request) -> tuple[str, str] | None:
    """The Authorization header as (scheme in lowercase, token), or None if absent or not of
    the form ``<scheme> <token>``."""
    value = request.headers.get("authorization")
    if not value:
        return None
    scheme, _, token = value.partition(" ")
    token = token.strip()
    if not scheme or not token or " " in token:
        return None
    return scheme.lower(), token


def request_htu(context: AppContext, scope: Scope) -> str:
    """The URL of this request as the client addressed it: the public URL plus the raw path."""
    raw = scope.get("raw_path")
    path = raw.decode("latin-1") if isinstance(raw, bytes) else str(scope.get("path", "/"))
    return context.public_url + path


def single_proof(request: Request) -> str:
    """The request's one DPoP header; `InvalidDPoPProofError` if there is none or several."""
    proofs = request.headers.getlist(DPOP_HEADER)
    if not proofs:
        raise InvalidDPoPProofError("invalid DPoP proof: the DPoP header is missing")
    if len(proofs) > 1:
        raise InvalidDPoPProofError("invalid DPoP proof: more than one DPoP header")
    return proofs[0]


async def check_resource_proof(
    request: Request, context: AppContext, *, access_token: str, bound_jkt: str, now: datetime
) -> None:
    """Check the proof a request with a DPoP-bound token must carry (RFC 9449 §7).

    The signature check and the replay-cache insert run in a worker thread: the insert is a
    database write that every replica sees. Raises `InvalidDPoPProofError` (or its nonce kind).
    """
    proof = single_proof(request)
    await run_in_threadpool(
        partial(
            verify_proof,
            proof,
            htm=request.method,
            htu=request_htu(context, request.scope),
            now=now,
            access_token=access_token,
            bound_jkt=bound_jkt,
            nonces=context.nonces if context.settings.dpop_nonce else None,
            remember_jti=partial(context.proofs.remember, now=now),
        )
    )


class DPoPNonceMiddleware:
    """Hands out the current nonce (`DPoP-Nonce`) on every answer to a request with a proof.

    RFC 9449 §8.2 lets a server send a fresh nonce with any response, so a client that talks
    regularly always holds a valid one and never needs the `use_dpop_nonce` round trip, which
    a streamed upload could not simply repeat. An answer that already names a nonce (the
    `use_dpop_nonce` error) keeps its own.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not any(
            name == b"dpop" for name, _ in scope.get("headers", ())
        ):
            await self.app(scope, receive, send)
            return
        context: AppContext | None = getattr(scope["app"].state, "context", None)
        if context is None or not context.settings.dpop_nonce:
            await self.app(scope, receive, send)
            return

        async def send_with_nonce(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                if not any(name.lower() == b"dpop-nonce" for name, _ in headers):
                    nonce = context.nonces.current(datetime.now(UTC))
                    headers.append((b"dpop-nonce", nonce.encode("ascii")))
                    message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_nonce)

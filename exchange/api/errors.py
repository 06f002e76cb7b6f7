"""The ONE mapping from domain errors to HTTP: RFC 9457 problem documents with a stable `type`.

Routes never raise HTTPException for business rules; they let `ExchangeError`s through and the
handlers here answer. Unknown exceptions stay 500s and are logged with their traceback.

Server-side failures (5xx) never show their message to the caller: it may name hosts, ports,
buckets or carry a driver's text. Their body has the stable `type`, a fixed plain `detail` per
kind of failure and an `incident` id; the server log line carrying the same id holds the
message and the whole chain of causes. A database failure answers the same wherever it happens
(inside a ledger append or not): 503 `database_unavailable` when the database does not answer,
500 `internal_error` for any other database error.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any, Final

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from exchange.dpop import DPOP_ALGS
from exchange.errors import (
    BlobNotFoundError,
    ConflictError,
    CredentialsMissingError,
    DatabaseUnavailableError,
    DPoPNonceRequiredError,
    DPoPRequiredError,
    ExchangeError,
    ForbiddenError,
    IntegrityFailureError,
    InvalidDPoPProofError,
    InvalidInputError,
    NotFoundError,
    PayloadTooLargeError,
    StorageError,
    StorageUnavailableError,
    StoredObjectCorruptError,
    UnauthenticatedError,
    UnavailableError,
    VerificationError,
)
from exchange.storage.db import is_transient

logger = logging.getLogger("exchange.api")

PROBLEM_BASE: Final = "https://evidence-exchange.example/problems/"
PROBLEM_MEDIA_TYPE: Final = "application/problem+json"
DB_RETRY_AFTER: Final = 5

# Every ExchangeError subclass, by class (a meta-test checks that none is missing).
STATUS: Final[dict[type[ExchangeError], int]] = {
    ExchangeError: 500,
    InvalidInputError: 422,
    PayloadTooLargeError: 413,
    NotFoundError: 404,
    BlobNotFoundError: 404,
    ConflictError: 409,
    UnauthenticatedError: 401,
    CredentialsMissingError: 401,
    InvalidDPoPProofError: 401,
    DPoPNonceRequiredError: 401,
    DPoPRequiredError: 401,
    ForbiddenError: 403,
    VerificationError: 422,
    IntegrityFailureError: 502,  # our stored bytes went bad: a server-side fault, never the caller's
    StoredObjectCorruptError: 502,
    UnavailableError: 503,
    DatabaseUnavailableError: 503,
    StorageUnavailableError: 503,
    StorageError: 502,
}

# The `detail` a caller sees for a server-side failure (nearest class); the message stays in the
# log. VerificationError subclasses (integrity failures) keep their own message: the exchange
# composes it from its own records (path, reason), never from a driver's text.
PLAIN_DETAIL: Final[dict[type[ExchangeError], str]] = {
    ExchangeError: "an unexpected error occurred",
    UnavailableError: "the service is busy or a backend is unavailable; retry later",
    DatabaseUnavailableError: "the database is unavailable or busy; retry later",
    StorageUnavailableError: "the evidence store is not answering; retry later",
    StorageError: "the evidence store failed",
}
INTERNAL_ERROR_DETAIL: Final = "an unexpected error occurred"

_HTTP_CODES: Final = {404: "not_found", 405: "method_not_allowed", 401: "unauthenticated"}


def status_for(exc: ExchangeError) -> int:
    """The HTTP status of a domain error (its nearest mapped class)."""
    for cls in type(exc).__mro__:
        if cls in STATUS:
            return STATUS[cls]
    return 500


def plain_detail(exc: ExchangeError) -> str:
    """What a caller may read about `exc`: its message for a 4xx (or an integrity failure),
    else the fixed text of its kind of server-side failure."""
    if status_for(exc) < 500 or isinstance(exc, VerificationError):
        return exc.message
    for cls in type(exc).__mro__:
        if cls in PLAIN_DETAIL:
            return PLAIN_DETAIL[cls]
    return INTERNAL_ERROR_DETAIL


def new_incident() -> str:
    """A fresh incident id: shown to the caller, and logged next to the full cause."""
    return str(uuid.uuid4())


def causes(exc: BaseException) -> str:
    """`exc` and every exception it was raised from, as one log-friendly line."""
    parts: list[str] = []
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        text = " ".join(str(current).split())  # drivers' messages span lines; a log line doesn't
        parts.append(f"{type(current).__module__}.{type(current).__qualname__}: {text}")
        current = current.__cause__ or current.__context__
    return " <- caused by ".join(parts)


def problem_type(code: str) -> str:
    """The stable problem `type` URI of an error code."""
    return PROBLEM_BASE + code


def problem(
    status: int,
    code: str,
    title: str,
    detail: str,
    *,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> JSONResponse:
    """An RFC 9457 problem response; `code` is also given as a member for simple clients."""
    body = {
        "type": problem_type(code),
        "title": title,
        "status": status,
        "detail": detail,
        "code": code,
        **{k: v for k, v in extra.items() if v is not None},
    }
    return JSONResponse(body, status_code=status, headers=headers, media_type=PROBLEM_MEDIA_TYPE)


def _title(cls: type[BaseException]) -> str:
    doc = (cls.__doc__ or cls.__name__).strip()
    return doc.splitlines()[0].rstrip(".")


def www_authenticate(exc: UnauthenticatedError) -> str:
    """The challenge of a 401: RFC 6750 Bearer, or RFC 9449 §7.1 DPoP where DPoP is at fault."""
    algs = " ".join(DPOP_ALGS)
    if isinstance(exc, CredentialsMissingError):
        # RFC 6750 §3.1: a request without any token gets the challenge, not an error code.
        return "Bearer"
    if isinstance(exc, InvalidDPoPProofError):  # invalid_dpop_proof or use_dpop_nonce
        return f'DPoP error="{exc.code}", algs="{algs}"'
    if isinstance(exc, DPoPRequiredError):
        return f'DPoP error="invalid_token", algs="{algs}"'
    return 'Bearer error="invalid_token"'


def exchange_error_response(exc: ExchangeError) -> JSONResponse:
    """The problem response for a domain error."""
    status = status_for(exc)
    headers: dict[str, str] = {}
    extra: dict[str, Any] = {}
    if isinstance(exc, UnavailableError):
        headers["Retry-After"] = str(exc.retry_after)
        extra["retry_after"] = exc.retry_after
    if isinstance(exc, UnauthenticatedError):
        headers["WWW-Authenticate"] = www_authenticate(exc)
    if isinstance(exc, DPoPNonceRequiredError):
        headers["DPoP-Nonce"] = exc.nonce
    if isinstance(exc, VerificationError):
        extra["reason"] = exc.reason
        extra["path"] = exc.path
    if status >= 500:
        extra["incident"] = incident = new_incident()
        if isinstance(exc, UnavailableError | VerificationError):
            # An outage, or stored bytes found bad (already recorded in the ledger), is an
            # expected event of operations, not a bug: one line, no traceback.
            logger.warning("incident %s: %s %s: %s", incident, status, exc.code, causes(exc))
        else:
            logger.error(
                "incident %s: %s %s: %s", incident, status, exc.code, causes(exc), exc_info=exc
            )
    return problem(status, exc.code, _title(type(exc)), plain_detail(exc), headers=headers, **extra)


async def _on_exchange_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ExchangeError)  # noqa: S101  # registered for ExchangeError only
    return exchange_error_response(exc)


async def _on_validation_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)  # noqa: S101  # registered for it only
    errors = exc.errors()
    first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
    where = "/".join(str(p) for p in first.get("loc", ()))
    return problem(
        422,
        InvalidInputError.code,
        _title(InvalidInputError),
        f"{where}: {first.get('msg', 'invalid')}",
    )


async def _on_http_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)  # noqa: S101  # registered for it only
    code = _HTTP_CODES.get(exc.status_code, f"http_{exc.status_code}")
    headers = dict(exc.headers) if exc.headers else None
    return problem(exc.status_code, code, str(exc.detail), str(exc.detail), headers=headers)


async def _on_database_down(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, OperationalError)  # noqa: S101  # registered for it only
    if not is_transient(exc):
        # A bug the driver files as "operational" (too many parameters, a syntax error):
        # retrying cannot help, so it is no 503.
        return await _on_unknown(request, exc)
    # The same answer as an OperationalError translated inside a ledger append.
    translated = DatabaseUnavailableError(
        "the database is unavailable or busy", retry_after=DB_RETRY_AFTER
    )
    translated.__cause__ = exc
    return exchange_error_response(translated)


async def _on_client_gone(_request: Request, _exc: Exception) -> JSONResponse:
    # The caller hung up mid-body: nothing was stored (the blob stores clean up), and nobody
    # is left to read an answer; not a server fault worth a traceback.
    logger.info("client disconnected before its request body was complete")
    return problem(
        400, "client_disconnected", "Client disconnected", "the request body ended early"
    )


async def _on_unknown(_request: Request, exc: Exception) -> JSONResponse:
    # Starlette re-raises after answering, so the server logs the traceback as well.
    incident = new_incident()
    logger.error(
        "incident %s: 500 internal_error: unhandled %s", incident, causes(exc), exc_info=exc
    )
    return problem(
        500, "internal_error", "Internal server error", INTERNAL_ERROR_DETAIL, incident=incident
    )


def install(app: FastAPI) -> None:
    """Register every handler on `app`."""
    app.add_exception_handler(ExchangeError, _on_exchange_error)
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(StarletteHTTPException, _on_http_error)
    app.add_exception_handler(OperationalError, _on_database_down)
    app.add_exception_handler(ClientDisconnect, _on_client_gone)
    app.add_exception_handler(Exception, _on_unknown)

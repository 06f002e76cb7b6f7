"""The ONE mapping from domain errors to HTTP: RFC 9457 problem documents with a stable `type`.

Routes never raise HTTPException for business rules; they let `ExchangeError`s through and the
handlers here answer. Unknown exceptions stay 500s and are logged with their traceback.
"""

from __future__ import annotations

import logging
from typing import Any, Final

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from exchange.errors import (
    BlobNotFoundError,
    ConflictError,
    CredentialsMissingError,
    ExchangeError,
    ForbiddenError,
    IntegrityFailureError,
    InvalidInputError,
    NotFoundError,
    PayloadTooLargeError,
    StorageError,
    StoredObjectCorruptError,
    UnauthenticatedError,
    UnavailableError,
    VerificationError,
)

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
    ForbiddenError: 403,
    VerificationError: 422,
    IntegrityFailureError: 502,  # our stored bytes went bad: a server-side fault, never the caller's
    StoredObjectCorruptError: 502,
    UnavailableError: 503,
    StorageError: 502,
}

_HTTP_CODES: Final = {404: "not_found", 405: "method_not_allowed", 401: "unauthenticated"}


def status_for(exc: ExchangeError) -> int:
    """The HTTP status of a domain error (its nearest mapped class)."""
    for cls in type(exc).__mro__:
        if cls in STATUS:
            return STATUS[cls]
    return 500


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


def exchange_error_response(exc: ExchangeError) -> JSONResponse:
    """The problem response for a domain error."""
    status = status_for(exc)
    headers: dict[str, str] = {}
    extra: dict[str, Any] = {}
    if isinstance(exc, UnavailableError):
        headers["Retry-After"] = str(exc.retry_after)
        extra["retry_after"] = exc.retry_after
    if isinstance(exc, CredentialsMissingError):
        # RFC 6750 §3.1: a request without any token gets the challenge, not an error code.
        headers["WWW-Authenticate"] = "Bearer"
    elif isinstance(exc, UnauthenticatedError):
        headers["WWW-Authenticate"] = 'Bearer error="invalid_token"'
    if isinstance(exc, VerificationError):
        extra["reason"] = exc.reason
        extra["path"] = exc.path
    if status >= 500:
        logger.warning("%s: %s", type(exc).__name__, exc.message)
    return problem(status, exc.code, _title(type(exc)), exc.message, headers=headers, **extra)


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


async def _on_database_down(_request: Request, exc: Exception) -> JSONResponse:
    logger.warning("database unavailable: %s", exc)
    return exchange_error_response(
        UnavailableError("the database is unavailable; retry later", retry_after=DB_RETRY_AFTER)
    )


async def _on_client_gone(_request: Request, _exc: Exception) -> JSONResponse:
    # The caller hung up mid-body: nothing was stored (the blob stores clean up), and nobody
    # is left to read an answer; not a server fault worth a traceback.
    logger.info("client disconnected before its request body was complete")
    return problem(
        400, "client_disconnected", "Client disconnected", "the request body ended early"
    )


async def _on_unknown(_request: Request, exc: Exception) -> JSONResponse:
    # Starlette re-raises after answering, so the server logs the traceback as well.
    logger.error("unhandled %s", type(exc).__name__, exc_info=exc)
    return problem(500, "internal_error", "Internal server error", "an unexpected error occurred")


def install(app: FastAPI) -> None:
    """Register every handler on `app`."""
    app.add_exception_handler(ExchangeError, _on_exchange_error)
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(StarletteHTTPException, _on_http_error)
    app.add_exception_handler(OperationalError, _on_database_down)
    app.add_exception_handler(ClientDisconnect, _on_client_gone)
    app.add_exception_handler(Exception, _on_unknown)

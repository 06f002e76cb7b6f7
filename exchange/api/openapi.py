"""What /openapi.json declares about answers: typed documents and RFC 9457 problems per status.

Routes declare their answers with `declare(Model, *problem_statuses)`. Every error answer of the
API is a problem document (`application/problem+json`, `documents.Problem`), except the token
endpoint's, which follow RFC 6749 §5.2. `install` makes the published document match what the
server sends where FastAPI's defaults do not: FastAPI declares its own 422 body
(`HTTPValidationError`), but `api.errors` answers every request validation error with a problem.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Final

from fastapi import FastAPI
from pydantic import BaseModel

from exchange.api.documents import OAuthError, Problem
from exchange.api.errors import PROBLEM_MEDIA_TYPE

COMPONENTS: Final = "#/components/schemas/"

# The statuses a route answers, in groups. Every route can fail unexpectedly (500); every route
# that reads the database can find it down (503 with Retry-After).
UNEXPECTED: Final = (500,)
DATABASE: Final = (500, 503)
# Calls with an access token: a bad one is 401, a token without the scope or role 403.
AUTHENTICATED: Final = (401, 403, *DATABASE)
# A JSON body: cut off (400), too large (413), off its schema or a semantic rule (422).
JSON_BODY: Final = (400, 413, 422)
# Writes that append to the custody ledger, or touch the object store: a backend that failed
# in an unexpected way, or stored bytes that no longer match their record (502).
BACKEND: Final = (502, 503)

_DESCRIPTIONS: Final = {
    400: "The request could not be read (e.g. its body ended early).",
    401: "The access token is missing, malformed, expired or not valid here.",
    403: "The caller is known but may not do this (scope or role).",
    404: "No such resource, or the caller may not know that it exists.",
    405: "The method is not allowed on this resource.",
    409: "The request conflicts with the current state.",
    413: "A body, file or count exceeds a limit of this exchange.",
    422: "The request fails a schema or semantic check, or a signature or digest does not hold.",
    500: "An unexpected error; the server logs it.",
    502: "A backend failed, or bytes held by the exchange no longer match their record.",
    503: "A backend (database, object store) is unavailable; retry after `Retry-After` seconds.",
}

_HEADERS: Final[dict[int, dict[str, Any]]] = {
    401: {
        "WWW-Authenticate": {
            "description": "The authentication scheme and, for a rejected token, the error "
            "(RFC 6750 §3).",
            "required": True,
            "schema": {"type": "string"},
        }
    },
    503: {
        "Retry-After": {
            "description": "Seconds to wait before retrying.",
            "required": True,
            "schema": {"type": "integer", "minimum": 0},
        }
    },
}


def problem_response(status: int) -> dict[str, Any]:
    """The OpenAPI response object of a problem answer with `status`."""
    response: dict[str, Any] = {
        "description": _DESCRIPTIONS.get(status, "A problem (RFC 9457)."),
        "content": {PROBLEM_MEDIA_TYPE: {"schema": {"$ref": COMPONENTS + Problem.__name__}}},
    }
    if status in _HEADERS:
        response["headers"] = _HEADERS[status]
    return response


def declare(
    model: type[BaseModel] | None,
    *problems: int,
    ok: Sequence[int] = (200,),
) -> dict[int | str, dict[str, Any]]:
    """The `responses=` of a route: `model` for each status in `ok`, a problem for `problems`.

    With `model=None` (and `ok=()`) the route declares its success content itself.
    """
    responses: dict[int | str, dict[str, Any]] = {}
    for status in ok:
        if model is not None:
            responses[status] = {"model": model, "description": (model.__doc__ or "").strip()}
    for status in sorted(set(problems)):
        responses[status] = problem_response(status)
    return responses


def oauth_errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """`responses=` entries for the token endpoint's RFC 6749 §5.2 error answers."""
    return {
        status: {"model": OAuthError, "description": f"OAuth 2.0 error (RFC 6749 §5.2), {status}."}
        for status in statuses
    }


def _replace_default_validation_errors(document: dict[str, Any]) -> None:
    # FastAPI adds a 422 with its own body to every operation with parameters that does not
    # declare one; the server answers those with a problem, so say that instead.
    default = COMPONENTS + "HTTPValidationError"
    for operations in document.get("paths", {}).values():
        for operation in operations.values():
            answers = operation.get("responses", {})
            declared = answers.get("422", {}).get("content", {})
            if declared.get("application/json", {}).get("schema", {}).get("$ref") == default:
                answers["422"] = problem_response(422)
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)
    schemas[Problem.__name__] = Problem.model_json_schema(
        ref_template=COMPONENTS + "{model}", mode="serialization"
    )


def install(app: FastAPI) -> None:
    """Make `app.openapi()` publish the problem responses and the Problem schema."""
    build: Callable[[], dict[str, Any]] = app.openapi

    def openapi() -> dict[str, Any]:
        fresh = app.openapi_schema is None
        document = build()  # FastAPI caches it: the fix-up runs once
        if fresh:
            _replace_default_validation_errors(document)
        return document

    app.openapi = openapi  # type: ignore[method-assign]  # FastAPI's documented override point

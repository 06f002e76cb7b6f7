"""Packages: register a signed manifest, stream files in, seal; list, read, stream files out."""

from __future__ import annotations

import base64
from functools import partial
from typing import Any, Final

import anyio.to_thread
from fastapi import APIRouter, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, ValidationError

from exchange.api.bodies import read_body_in_thread, read_counting_items
from exchange.api.deps import ContextDep, NowDep, PrincipalDep, SessionDep
from exchange.api.documents import (
    FileDocument,
    PackageDocument,
    PackageList,
    PackageRegistration,
    PackageSummary,
)
from exchange.api.openapi import AUTHENTICATED, BACKEND, JSON_BODY, declare
from exchange.api.streams import VerifiedStreamingResponse
from exchange.errors import InvalidInputError, PayloadTooLargeError
from exchange.service import fetch, packages
from exchange.storage.blobstore import Readable
from exchange.storage.db import session_scope

router = APIRouter(prefix="/v1/cases/{case_id}/packages", tags=["packages"])


class NewPackage(BaseModel):
    """Body of POST /v1/cases/{id}/packages: the manifest object and its detached JWS."""

    model_config = ConfigDict(extra="forbid")

    manifest: dict[str, Any]
    jws: str


def content_length(request: Request) -> int | None:
    """The declared body length, if any; `InvalidInputError` if malformed."""
    raw = request.headers.get("content-length")
    if raw is None:
        return None
    if not raw.isdigit():
        raise InvalidInputError("Content-Length is not a number")
    return int(raw)


# The body is read and parsed by the route itself (below), so OpenAPI is told its schema here.
_NEW_PACKAGE_BODY: Final[dict[str, Any]] = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": NewPackage.model_json_schema()}},
    }
}


def read_new_package(body: Readable, *, max_files: int) -> bytes:
    """The registration body, refused (413) past `max_files` files while it is still arriving."""
    raw = read_counting_items(body, prefix="manifest.files", limit=max_files)
    if raw is None:
        raise PayloadTooLargeError(
            f"package has more than {max_files} files; this exchange takes at most {max_files}"
        )
    return raw


def parse_new_package(raw: bytes) -> NewPackage:
    """The registration body; `RequestValidationError` as FastAPI's own parsing would raise."""
    try:
        return NewPackage.model_validate_json(raw)
    except ValidationError as exc:
        raise RequestValidationError(
            [{**e, "loc": ("body", *e["loc"])} for e in exc.errors(include_url=False)]
        ) from None


@router.post(
    "",
    status_code=201,
    response_model=None,
    responses=declare(
        PackageRegistration, *AUTHENTICATED, *JSON_BODY, *BACKEND, 404, 409, ok=(201, 200)
    ),
    openapi_extra=_NEW_PACKAGE_BODY,
)
async def register_package(
    case_id: str,
    request: Request,
    context: ContextDep,
    principal: PrincipalDep,
    now: NowDep,
) -> JSONResponse:
    """Register a signed package; answers the files still expected (201, or 200 on a retry)."""
    # The body (bounded by its route's limit, JsonBodyLimitMiddleware) is counted while it
    # arrives; parsing, schema and signature checks cost CPU in proportion to its size, so they
    # run in worker threads, a bounded number at once, and the event loop keeps answering.
    max_files = context.limits.max_files_per_package
    raw = await read_body_in_thread(
        request.stream(), partial(read_new_package, max_files=max_files)
    )

    def register() -> packages.Registration:
        body = parse_new_package(raw)
        with session_scope(context.engine) as session:
            return packages.register_package(
                session,
                store=context.store,
                log=context.log,
                principal=principal,
                now=now,
                case_id=case_id,
                manifest=body.manifest,
                jws=body.jws,
                limits=context.limits,
            )

    registration = await anyio.to_thread.run_sync(register, limiter=context.validation)
    status = 201 if registration.created else 200
    return JSONResponse(packages.registration_document(registration), status_code=status)


_FILE_BYTES: Final = (
    "The file's bytes, re-hashed on the way out; the stream aborts if they no longer match."
)
# The media type is the one the signed manifest gives the file.
_ANY_BYTES: Final[dict[str, Any]] = {"*/*": {}}
_FILE_HEADERS: Final = {
    "Content-Length": {"required": True, "schema": {"type": "integer", "minimum": 0}},
    "Repr-Digest": {
        "description": "SHA-256 of the file as sealed (RFC 9530).",
        "required": True,
        "schema": {"type": "string", "pattern": "^sha-256=:[A-Za-z0-9+/]{43}=:$"},
    },
}

_RAW_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
    }
}


@router.put(
    "/{package_id}/files/{path:path}",
    response_model=None,
    openapi_extra=_RAW_BODY,
    responses=declare(
        FileDocument, *AUTHENTICATED, *BACKEND, 400, 404, 409, 413, 422, ok=(201, 200)
    ),
)
async def put_file(
    case_id: str,
    package_id: str,
    path: str,
    request: Request,
    context: ContextDep,
    principal: PrincipalDep,
    now: NowDep,
) -> JSONResponse:
    """Stream one file's bytes into storage (201 stored, 200 already stored)."""
    upload = partial(
        packages.upload_file,
        context.engine,
        store=context.store,
        principal=principal,
        now=now,
        case_id=case_id,
        package_id=package_id,
        path=path,
        content_length=content_length(request),
        limits=context.limits,
    )
    row, stored = await read_body_in_thread(request.stream(), lambda body: upload(body=body))
    if stored:
        context.metrics.evidence_bytes.labels("in").inc(row.size)
    return JSONResponse(packages.file_document(row), status_code=201 if stored else 200)


@router.post(
    "/{package_id}/seal",
    response_model=None,
    responses=declare(PackageSummary, *AUTHENTICATED, *BACKEND, 404, 409, 422),
)
def seal_package(
    case_id: str,
    package_id: str,
    context: ContextDep,
    session: SessionDep,
    principal: PrincipalDep,
    now: NowDep,
) -> dict[str, Any]:
    """Seal a package whose every file is stored."""
    row = packages.seal_package(
        session,
        store=context.store,
        log=context.log,
        principal=principal,
        now=now,
        case_id=case_id,
        package_id=package_id,
    )
    return packages.package_summary(row)


@router.get("", response_model=None, responses=declare(PackageList, *AUTHENTICATED, 404, 422))
def list_packages(
    case_id: str, context: ContextDep, principal: PrincipalDep, now: NowDep
) -> dict[str, Any]:
    """The packages of a case the caller may see (unsealed ones only to their uploader); a
    partner's listing is recorded in the ledger (`package.viewed`)."""
    # Read-only snapshot, then (partners only) a short write: no SessionDep (see cases.py).
    summaries = packages.list_packages(
        context.engine, log=context.log, principal=principal, now=now, case_id=case_id
    )
    return {"packages": summaries}


@router.get(
    "/{package_id}",
    response_model=None,
    responses=declare(PackageDocument, *AUTHENTICATED, 404, 422),
)
def get_package(
    case_id: str,
    package_id: str,
    context: ContextDep,
    principal: PrincipalDep,
    now: NowDep,
) -> dict[str, Any]:
    """One package: manifest, JWS, signer key and files; a partner's read is recorded in the
    ledger (`package.viewed`)."""
    return packages.get_package(
        context.engine,
        log=context.log,
        principal=principal,
        now=now,
        case_id=case_id,
        package_id=package_id,
    )


@router.get(
    "/{package_id}/files/{path:path}",
    response_model=None,
    response_class=VerifiedStreamingResponse,
    responses={
        **declare(None, *AUTHENTICATED, *BACKEND, 404, 422, ok=()),
        200: {"description": _FILE_BYTES, "content": _ANY_BYTES, "headers": _FILE_HEADERS},
    },
)
async def get_file(
    case_id: str,
    package_id: str,
    path: str,
    context: ContextDep,
    principal: PrincipalDep,
    now: NowDep,
) -> VerifiedStreamingResponse:
    """Stream one file of a sealed package, re-hashed on the way; aborted if it no longer matches."""
    opening = partial(
        fetch.open_file,
        context.engine,
        store=context.store,
        log=context.log,
        principal=principal,
        now=now,
        case_id=case_id,
        package_id=package_id,
        path=path,
    )
    download = await anyio.to_thread.run_sync(opening)
    file = download.file
    context.metrics.evidence_bytes.labels("out").inc(file.size)
    digest = base64.b64encode(bytes.fromhex(file.sha256)).decode()
    headers = {"Content-Length": str(file.size), "Repr-Digest": f"sha-256=:{digest}:"}
    return VerifiedStreamingResponse(download.chunks, media_type=file.media_type, headers=headers)

"""Evidence packages: register a signed manifest, stream each file into storage, seal; read.

Upload is three steps so that multi-gigabyte files stream and can be retried one by one. A
package stays invisible to everyone but its uploader's agency until it is sealed.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Engine
from sqlmodel import Session, col, select

from exchange.errors import (
    ConflictError,
    NotFoundError,
    PayloadTooLargeError,
    VerificationError,
)
from exchange.grants import CaseView, check_scope, is_case_owner
from exchange.ledger.entry import Action, NewEntry
from exchange.ledger.signer import LogSigner
from exchange.model import Manifest, Principal, canonical_bytes, parse_json
from exchange.package import check_path, load_manifest, verify_manifest
from exchange.service.access import (
    actor_of,
    check_readable,
    grant_detail,
    owned_case,
    readable_case,
)
from exchange.service.agencies import trust_store, trusted_key
from exchange.storage import ledger_store
from exchange.storage.blobstore import BlobStore, Readable
from exchange.storage.db import session_scope
from exchange.storage.tables import AgencyKeyRow, AgencyRow, CaseRow, PackageFileRow, PackageRow

REGISTERED = "registered"
SEALED = "sealed"


@dataclass(frozen=True)
class Limits:
    """Size limits from the node's settings."""

    max_file_bytes: int
    max_files_per_package: int


@dataclass(frozen=True)
class Registration:
    """A registered package and whether this call created it (False: an identical retry)."""

    package: PackageRow
    files: list[PackageFileRow]
    created: bool


def file_document(row: PackageFileRow) -> dict[str, Any]:
    """The JSON form of one package file."""
    return {
        "path": row.path,
        "size": row.size,
        "sha256": row.sha256,
        "media_type": row.media_type,
        "stored": row.stored,
    }


def package_summary(row: PackageRow) -> dict[str, Any]:
    """The JSON form of a package without its manifest."""
    return {
        "package_id": row.id,
        "case_id": row.case_id,
        "state": row.state,
        "agency": row.uploader_agency,
        "manifest_sha256": row.manifest_sha256,
        "signer_key_id": row.signer_key_id,
        "file_count": row.file_count,
        "total_bytes": row.total_bytes,
        "created_at": row.created_at.isoformat(),
        "sealed_at": row.sealed_at.isoformat() if row.sealed_at else None,
    }


def registration_document(reg: Registration) -> dict[str, Any]:
    """The answer to a registration: the package and the files still expected."""
    return {
        **package_summary(reg.package),
        "expected_files": [file_document(f) for f in reg.files if not f.stored],
    }


def _files(session: Session, package_id: str) -> list[PackageFileRow]:
    return list(
        session.exec(
            select(PackageFileRow)
            .where(PackageFileRow.package_id == package_id)
            .order_by(col(PackageFileRow.path))
        ).all()
    )


def visible_package(
    session: Session, principal: Principal, case: CaseRow, package_id: str
) -> PackageRow:
    """A package of `case` the caller may see: sealed, or unsealed from the caller's agency."""
    row = session.get(PackageRow, package_id)
    if row is None or row.case_id != case.id:
        raise NotFoundError("package not found")
    if row.state != SEALED and row.uploader_agency != principal.agency:
        raise NotFoundError("package not found")
    return row


def _check_limits(manifest: Manifest, limits: Limits) -> None:
    if len(manifest.files) > limits.max_files_per_package:
        raise PayloadTooLargeError(
            f"package has {len(manifest.files)} files; this exchange takes at most "
            f"{limits.max_files_per_package}"
        )
    for entry in manifest.files:
        if entry.size > limits.max_file_bytes:
            raise PayloadTooLargeError(
                f"file {entry.path} has {entry.size} bytes; this exchange takes at most "
                f"{limits.max_file_bytes} per file"
            )


def register_package(
    session: Session,
    *,
    store: BlobStore,
    log: LogSigner,
    principal: Principal,
    now: datetime,
    case_id: str,
    manifest: object,
    jws: str,
    limits: Limits,
) -> Registration:
    """Check a signed manifest and register its package in a case the caller's agency owns.

    Checks schema, signature against the registered key of the caller's agency, paths and
    limits; ledger `package.registered`. Raises `VerificationError` (422), `PayloadTooLargeError`
    (413), `ConflictError` if the package id exists with another manifest or is sealed.
    """
    case = owned_case(session, principal, case_id, now=now)
    check_scope(principal, "evidence:upload")
    canonical = canonical_bytes(manifest)
    parsed = load_manifest(canonical)
    if parsed.agency != principal.agency:
        raise VerificationError(
            f"manifest is from agency {parsed.agency}; you upload for {principal.agency}",
            reason="agency_mismatch",
        )
    _check_limits(parsed, limits)
    signed = verify_manifest(parsed, jws, trust=trust_store(session), now=now)
    existing = session.get(PackageRow, parsed.package_id)
    if existing is not None:
        if (
            existing.state == REGISTERED
            and existing.case_id == case.id
            and existing.uploader_agency == principal.agency
            and existing.manifest_sha256 == signed.digest
        ):
            return Registration(existing, _files(session, existing.id), created=False)
        raise ConflictError(f"package {parsed.package_id} already exists ({existing.state})")
    row = PackageRow(
        id=parsed.package_id,
        case_id=case.id,
        state=REGISTERED,
        manifest=canonical,
        jws=signed.jws,
        manifest_sha256=signed.digest,
        signer_key_id=signed.key.key_id,
        uploader_client=principal.client_id,
        uploader_agency=principal.agency,
        file_count=len(parsed.files),
        total_bytes=parsed.total_bytes,
        created_at=now,
    )
    session.add(row)
    session.flush()
    files = [
        PackageFileRow(
            package_id=row.id,
            path=f.path,
            size=f.size,
            sha256=f.sha256,
            media_type=f.media_type,
            blob_key=store.key_for(f.sha256),
            stored=False,
        )
        for f in parsed.files
    ]
    session.add_all(files)
    session.flush()
    ledger_store.append(
        session,
        NewEntry(
            actor=actor_of(principal),
            action=Action.PACKAGE_REGISTERED,
            case_id=case.id,
            package_id=row.id,
            details={
                "manifest_sha256": signed.digest,
                "signer_key_id": signed.key.key_id,
                "file_count": row.file_count,
                "bytes": row.total_bytes,
            },
        ),
        log=log,
        now=now,
    )
    return Registration(row, sorted(files, key=lambda f: f.path), created=True)


def _uploadable_file(
    session: Session, principal: Principal, now: datetime, case_id: str, package_id: str, path: str
) -> tuple[PackageRow, PackageFileRow]:
    case = readable_case(session, principal, case_id, now=now)
    package = visible_package(session, principal, case, package_id)
    if package.uploader_agency != principal.agency:
        raise NotFoundError("package not found")
    check_scope(principal, "evidence:upload")
    check_path(path)
    row = session.get(PackageFileRow, (package.id, path))
    if row is None:
        raise NotFoundError(f"package {package.id} has no file {path!r} in its manifest")
    return package, row


class _BoundedBody:
    """Passes a request body through, refusing bytes past the file's size or the node's limit."""

    def __init__(self, body: Readable, *, path: str, expected: int, limit: int) -> None:
        self._body = body
        self._path = path
        self._expected = expected
        self._limit = limit
        self.received = 0

    def read(self, n: int = -1) -> bytes:
        chunk = self._body.read(n)
        self.received += len(chunk)
        if self.received > self._limit:
            raise PayloadTooLargeError(
                f"body of {self._path} is larger than this exchange's limit of {self._limit} bytes"
            )
        if self.received > self._expected:
            raise VerificationError(
                f"size mismatch for {self._path}: the manifest says {self._expected} bytes, "
                "the body is longer",
                reason="size_mismatch",
                path=self._path,
            )
        return chunk


def upload_file(
    engine: Engine,
    *,
    store: BlobStore,
    principal: Principal,
    now: datetime,
    case_id: str,
    package_id: str,
    path: str,
    body: Readable,
    content_length: int | None,
    limits: Limits,
) -> tuple[PackageFileRow, bool]:
    """Stream one file of a registered package into the blob store while hashing it.

    Holds no database transaction while the bytes flow. Returns the file row and whether this
    call stored it (False: it was already stored, an idempotent retry). Raises
    `VerificationError` (size or hash mismatch; nothing stored), `PayloadTooLargeError`.
    """
    with session_scope(engine) as session:
        package, row = _uploadable_file(session, principal, now, case_id, package_id, path)
        if row.stored:
            return row, False
        if package.state != REGISTERED:
            raise ConflictError(f"package {package.id} is {package.state}")
    if content_length is not None and content_length > limits.max_file_bytes:
        raise PayloadTooLargeError(
            f"body of {content_length} bytes is larger than this exchange's limit of "
            f"{limits.max_file_bytes}"
        )
    if content_length is not None and content_length != row.size:
        raise VerificationError(
            f"size mismatch for {path}: the manifest says {row.size} bytes, the body has "
            f"{content_length}",
            reason="size_mismatch",
            path=path,
        )
    bounded = _BoundedBody(body, path=path, expected=row.size, limit=limits.max_file_bytes)
    # The store verifies size and digest while streaming and keeps nothing that failed.
    store.put(bounded, sha256=row.sha256, size=row.size)
    with session_scope(engine) as session:
        package, row = _uploadable_file(session, principal, now, case_id, package_id, path)
        if not row.stored:
            row.stored = True
            session.add(row)
    return row, True


def seal_package(
    session: Session,
    *,
    store: BlobStore,
    log: LogSigner,
    principal: Principal,
    now: datetime,
    case_id: str,
    package_id: str,
) -> PackageRow:
    """Seal a package whose every file is stored (ledger `package.sealed`).

    Raises `ConflictError` if already sealed or a file is missing from storage,
    `VerificationError` if the signer's key was revoked since registration.
    """
    case = readable_case(session, principal, case_id, now=now)
    package = visible_package(session, principal, case, package_id)
    if package.uploader_agency != principal.agency:
        raise NotFoundError("package not found")
    check_scope(principal, "evidence:upload")
    if package.state != REGISTERED:
        raise ConflictError(f"package {package.id} is already {package.state}")
    # The signer's key must still stand at sealing time: the ledger's seal is what offline
    # verifiers check the signature against.
    verify_manifest(
        load_manifest(package.manifest), package.jws, trust=trust_store(session), now=now
    )
    files = _files(session, package.id)
    missing = [f.path for f in files if not f.stored or store.stat(f.blob_key) != f.size]
    if missing:
        shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
        raise ConflictError(f"cannot seal: {len(missing)} file(s) not uploaded yet: {shown}")
    package.state = SEALED
    package.sealed_at = now
    session.add(package)
    session.flush()
    ledger_store.append(
        session,
        NewEntry(
            actor=actor_of(principal),
            action=Action.PACKAGE_SEALED,
            case_id=case.id,
            package_id=package.id,
            details={
                "manifest_sha256": package.manifest_sha256,
                "signer_key_id": package.signer_key_id,
                "file_count": package.file_count,
                "bytes": package.total_bytes,
            },
        ),
        log=log,
        now=now,
    )
    return package


def record_partner_view(
    engine: Engine,
    *,
    log: LogSigner,
    principal: Principal,
    now: datetime,
    case: CaseView,
    details: dict[str, Any],
    package_id: str | None = None,
) -> None:
    """Append `package.viewed` for a read by a caller outside the owning agency (owners' reads
    are not recorded), naming the grant it was made under.

    A short write transaction of its own, after the read's read-only snapshot, so that building
    the answer never holds the write lock. Access is checked again in it, so an entry never
    names a grant revoked before it: a grant revoked since the snapshot answers `NotFoundError`
    and records nothing. The caller sends its answer only once this returned (committed).
    """
    if is_case_owner(principal, case):
        return
    with session_scope(engine) as session:
        grant = check_readable(session, principal, case, now=now)
        ledger_store.append(
            session,
            NewEntry(
                actor=actor_of(principal),
                action=Action.PACKAGE_VIEWED,
                case_id=case.case_id,
                package_id=package_id,
                details={**details, "grant": grant_detail(grant)},
            ),
            log=log,
            now=now,
        )


def _visible_rows(session: Session, principal: Principal, case: CaseRow) -> list[PackageRow]:
    rows = session.exec(
        select(PackageRow)
        .where(PackageRow.case_id == case.id)
        .order_by(col(PackageRow.created_at), col(PackageRow.id))
    ).all()
    return [r for r in rows if r.state == SEALED or r.uploader_agency == principal.agency]


def list_packages(
    engine: Engine, *, log: LogSigner, principal: Principal, now: datetime, case_id: str
) -> list[dict[str, Any]]:
    """The summaries of the packages of a case the caller may see, read in a read-only
    snapshot; a partner's listing is recorded (`record_partner_view`)."""
    with session_scope(engine, read_only=True) as session:
        case = readable_case(session, principal, case_id, now=now)
        summaries = [package_summary(r) for r in _visible_rows(session, principal, case)]
    record_partner_view(
        engine,
        log=log,
        principal=principal,
        now=now,
        case=CaseView(case.id, case.owner_agency),
        details={"view": "list", "package_count": len(summaries)},
    )
    return summaries


def signer_entry(session: Session, key_id: str) -> dict[str, Any]:
    """The trust-store entry (schemas/trust-agency.v1.json) of a registered signer key."""
    key = session.get(AgencyKeyRow, key_id)
    agency = session.get(AgencyRow, key.agency_id) if key else None
    if key is None or agency is None:
        raise NotFoundError(f"signer key {key_id} is not registered")
    return trusted_key(key, agency.country).to_entry()


def package_document(session: Session, row: PackageRow) -> dict[str, Any]:
    """The full JSON form of a package: summary, manifest, JWS, signer key and files."""
    return {
        **package_summary(row),
        "manifest": parse_json(row.manifest, what="stored manifest"),
        "jws": row.jws,
        "signer_key": signer_entry(session, row.signer_key_id),
        "files": [file_document(f) for f in _files(session, row.id)],
    }


def get_package(
    engine: Engine,
    *,
    log: LogSigner,
    principal: Principal,
    now: datetime,
    case_id: str,
    package_id: str,
) -> dict[str, Any]:
    """One package the caller may see, with manifest, JWS and signer key, read in a read-only
    snapshot; a partner's read is recorded (`record_partner_view`)."""
    with session_scope(engine, read_only=True) as session:
        case = readable_case(session, principal, case_id, now=now)
        row = visible_package(session, principal, case, package_id)
        document = package_document(session, row)
    record_partner_view(
        engine,
        log=log,
        principal=principal,
        now=now,
        case=CaseView(case.id, case.owner_agency),
        package_id=row.id,
        details={"view": "manifest", "manifest_sha256": row.manifest_sha256},
    )
    return document

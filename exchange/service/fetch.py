"""Fetching evidence: authorize, record `bundle.fetched` before the first byte, stream re-hashing.

The entry names the grant the fetch was made under (id and legal basis), or `"grant": null`
when the caller's agency owns the case.

The stored object is checked before anything is recorded or sent: its size always, and a small
object (up to `HELD_MAX_BYTES`) is read and hashed whole, so a corrupt one is refused with a
problem answer and no byte of it leaves. A larger object is hashed while streaming, holding
back the last chunk until the digest matches, so a client never receives a complete wrong
body. Every mismatch writes `integrity.failure` in a transaction of its own.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Engine, Table, bindparam, select
from sqlmodel import Session

from exchange.errors import BlobNotFoundError, NotFoundError, StoredObjectCorruptError
from exchange.grants import CaseView, GrantView, check_scope
from exchange.ledger.entry import Action, NewEntry
from exchange.ledger.signer import LogSigner
from exchange.model import Principal
from exchange.package import check_path
from exchange.service.access import (
    actor_of,
    check_joined,
    grant_detail,
    readable_case_and_grant,
    with_grants_to_country,
)
from exchange.service.packages import SEALED, visible_package
from exchange.storage import ledger_store
from exchange.storage.blobstore import BlobReader, BlobStore
from exchange.storage.db import session_scope
from exchange.storage.tables import CaseRow, PackageFileRow, PackageRow

CHUNK_SIZE = 1024 * 1024


@dataclass(frozen=True)
class StoredFile:
    """A sealed file as the manifest states it, and where its bytes are stored."""

    case_id: str
    package_id: str
    path: str
    size: int
    sha256: str
    media_type: str
    blob_key: str
    # The grant the caller fetches under; None when its agency owns the case.
    grant: GrantView | None = None


# Files up to this size are read and verified whole in the worker thread that opened them.
HELD_MAX_BYTES = 256 * 1024


@dataclass(frozen=True)
class FileDownload:
    """One file on its way out: what it should be, and the verified byte stream."""

    file: StoredFile
    chunks: Iterable[bytes]


class HeldChunks:
    """A small file's bytes, already read and verified.

    Iterable, and async-iterable so that an ASGI server sends it from the event loop without a
    thread-pool hop per chunk.
    """

    def __init__(self, data: bytes) -> None:
        """The verified bytes to yield."""
        self._data = data

    def __iter__(self) -> Iterator[bytes]:
        if self._data:
            yield self._data

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for chunk in self:
            yield chunk


class _StoredObjectMismatchError(Exception):
    def __init__(self, reason: str, found: str, expected: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.found = found
        self.expected = expected


_CASE: Table = CaseRow.__table__  # type: ignore[attr-defined]  # SQLModel sets it
_PACKAGE: Table = PackageRow.__table__  # type: ignore[attr-defined]
_FILE: Table = PackageFileRow.__table__  # type: ignore[attr-defined]

# The file, its package, its case and the case's grants to the caller's country in one round
# trip (Core, no ORM objects), for a fetch.
_TARGET = with_grants_to_country(
    select(
        _CASE.c.owner_agency,
        _PACKAGE.c.state,
        _FILE.c.path,
        _FILE.c.size,
        _FILE.c.sha256,
        _FILE.c.media_type,
        _FILE.c.blob_key,
    )
    .select_from(
        _FILE.join(_PACKAGE, _PACKAGE.c.id == _FILE.c.package_id).join(
            _CASE, _CASE.c.id == _PACKAGE.c.case_id
        )
    )
    .where(
        _FILE.c.package_id == bindparam("package_id"),
        _FILE.c.path == bindparam("path"),
        _PACKAGE.c.case_id == bindparam("case_id"),
    )
)


def _fetchable(
    session: Session, principal: Principal, now: datetime, case_id: str, package_id: str, path: str
) -> StoredFile:
    rows = (
        session.connection()
        .execute(
            _TARGET,
            {
                "case_id": case_id,
                "package_id": package_id,
                "path": path,
                "country": principal.country,
            },
        )
        .all()
    )
    found = rows[0] if rows else None
    if found is None or found.state != SEALED:
        # Nothing to serve: the step-by-step checks say which answer the caller gets.
        return _fetchable_stepwise(session, principal, now, case_id, package_id, path)
    # The checks of `_fetchable_stepwise`, in its order, on the row read at once: a sealed
    # package is visible to whoever may read its case.
    grant = check_joined(principal, CaseView(case_id, found.owner_agency), rows, now=now)
    check_scope(principal, "evidence:read")
    check_path(path)
    return StoredFile(
        case_id=case_id,
        package_id=package_id,
        path=found.path,
        size=found.size,
        sha256=found.sha256,
        media_type=found.media_type,
        blob_key=found.blob_key,
        grant=grant,
    )


def _fetchable_stepwise(
    session: Session, principal: Principal, now: datetime, case_id: str, package_id: str, path: str
) -> StoredFile:
    case, grant = readable_case_and_grant(session, principal, case_id, now=now)
    package = visible_package(session, principal, case, package_id)
    if package.state != SEALED:
        raise NotFoundError("package not found")
    check_scope(principal, "evidence:read")
    check_path(path)
    row = session.get(PackageFileRow, (package.id, path))
    if row is None:
        raise NotFoundError(f"package {package.id} has no file {path!r}")
    return StoredFile(
        case_id=case.id,
        package_id=package.id,
        path=row.path,
        size=row.size,
        sha256=row.sha256,
        media_type=row.media_type,
        blob_key=row.blob_key,
        grant=grant,
    )


def record_integrity_failure(
    engine: Engine,
    *,
    log: LogSigner,
    principal: Principal,
    now: datetime,
    case_id: str,
    package_id: str,
    path: str,
    reason: str,
    expected: str,
    found: str,
) -> None:
    """Write `integrity.failure` in a transaction of its own, committed at once."""
    with session_scope(engine) as session:
        ledger_store.append(
            session,
            NewEntry(
                actor=actor_of(principal),
                action=Action.INTEGRITY_FAILURE,
                case_id=case_id,
                package_id=package_id,
                details={"path": path, "reason": reason, "expected": expected, "found": found},
            ),
            log=log,
            now=now,
        )


def open_file(
    engine: Engine,
    *,
    store: BlobStore,
    log: LogSigner,
    principal: Principal,
    now: datetime,
    case_id: str,
    package_id: str,
    path: str,
) -> FileDownload:
    """Authorize a fetch, check the stored object, commit `bundle.fetched`, open the stream.

    Raises `NotFoundError` for anything the caller may not see, `StoredObjectCorruptError`
    (after recording it, and with no `bundle.fetched`) when the stored object is missing, of
    another size, or (small objects) of another hash. A larger object's stream raises
    `StoredObjectCorruptError` after recording it, before its last chunk, if its hash differs.
    """
    reader: BlobReader | None = None
    held: HeldChunks | None = None
    try:
        with session_scope(engine) as session:
            target = _fetchable(session, principal, now, case_id, package_id, path)
            try:
                stored = store.stat(target.blob_key)
            except BlobNotFoundError:
                raise _StoredObjectMismatchError("object_missing", "no object") from None
            if stored != target.size:
                raise _StoredObjectMismatchError("size_mismatch", f"{stored} bytes")
            # Opened before the entry commits: a store that fails here records no fetch.
            reader = store.open(target.blob_key)
            if target.size <= HELD_MAX_BYTES:
                # Small: read and verified whole before anything is recorded or sent, so a
                # corrupt object is answered with a problem, never with 200 and cut bytes.
                held = HeldChunks(b"".join(_checked_chunks(reader, target)))
            ledger_store.append(
                session,
                NewEntry(
                    actor=actor_of(principal),
                    action=Action.BUNDLE_FETCHED,
                    case_id=target.case_id,
                    package_id=target.package_id,
                    details={
                        "files": [target.path],
                        "file_count": 1,
                        "bytes": target.size,
                        "grant": grant_detail(target.grant),
                    },
                ),
                log=log,
                now=now,
            )
    except _StoredObjectMismatchError as exc:
        if reader is not None:
            reader.close()
        expected = exc.expected or f"{target.size} bytes"
        raise _failure(
            engine, log, principal, now, target, exc.reason, expected, exc.found
        ) from None
    except BaseException:
        if reader is not None:
            reader.close()
        raise
    if held is not None:
        return FileDownload(file=target, chunks=held)

    def streamed() -> Iterator[bytes]:
        try:
            yield from _checked_chunks(reader, target)
        except _StoredObjectMismatchError as exc:
            expected = exc.expected or f"{target.size} bytes"
            raise _failure(
                engine, log, principal, now, target, exc.reason, expected, exc.found
            ) from None

    return FileDownload(file=target, chunks=streamed())


def _failure(
    engine: Engine,
    log: LogSigner,
    principal: Principal,
    now: datetime,
    target: StoredFile,
    reason: str,
    expected: str,
    found: str,
) -> StoredObjectCorruptError:
    record_integrity_failure(
        engine,
        log=log,
        principal=principal,
        now=now,
        case_id=target.case_id,
        package_id=target.package_id,
        path=target.path,
        reason=reason,
        expected=expected,
        found=found,
    )
    return StoredObjectCorruptError(
        f"the exchange's stored copy of {target.path} is corrupt: it no longer matches the "
        f"sealed manifest ({reason}); the fetch was refused and recorded in the ledger as "
        "integrity.failure",
        reason=reason,
        path=target.path,
    )


def _checked_chunks(reader: BlobReader, target: StoredFile) -> Iterator[bytes]:
    """The stored bytes, closing `reader` at the end; `_StoredObjectMismatchError` on a mismatch.

    The last chunk is held back until the whole object hashed to the sealed digest.
    """
    digest = hashlib.sha256()
    total = 0
    pending = b""
    with reader:
        while chunk := reader.read(CHUNK_SIZE):
            total += len(chunk)
            if total > target.size:
                raise _StoredObjectMismatchError("size_mismatch", f"more than {target.size}")
            digest.update(chunk)
            if pending:
                yield pending
            pending = chunk
    if total != target.size:
        raise _StoredObjectMismatchError("size_mismatch", f"{total} bytes")
    if digest.hexdigest() != target.sha256:
        raise _StoredObjectMismatchError("hash_mismatch", digest.hexdigest(), target.sha256)
    if pending:
        yield pending

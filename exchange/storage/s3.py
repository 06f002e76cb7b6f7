"""`S3BlobStore`: evidence files in any S3 server, through the `minio` SDK (the only module that
imports it).

Nothing here is MinIO-specific: plain S3 calls (PUT, multipart upload, HEAD, GET, DELETE of a
version, PutObjectRetention), so Ceph RGW, Garage or AWS S3 can stand in.

Upload design (a bad body must never become readable under its key, where a COMPLIANCE lock
would make it undeletable), written once, straight to its final key:

1. HEAD ``sha256/<hex>``: if the blob is already there, the body is still read and verified (a
   lying client still gets its `VerificationError`), nothing is written, and a missing retention
   is re-applied (heals a crash between steps 2 and 3).
2. A body of at most one part is read whole through `VerifyingReader` and verified (size, an
   extra byte, digest) before one PUT sends it. A larger body goes up as a multipart upload to
   the final key (`part_size` parts, one part in memory at a time, no upload threads); the
   reader checks size and digest when it hands out the last byte, before the SDK sends the last
   part, so a bad body fails before CompleteMultipartUpload and the SDK aborts the upload. An
   upload in progress or aborted is not an object: nothing is readable until the verified
   whole is completed, atomically. Both carry the COMPLIANCE retention headers when object lock
   is on, so the object is locked from its first instant on servers that honour them (AWS,
   MinIO). A server that refuses lock parameters on a PUT without a body checksum (moto does,
   AWS words it as "Content-MD5 OR x-amz-checksum- HTTP header is required") gets the PUT again
   with ``x-amz-sdk-checksum-algorithm: SHA256`` and ``x-amz-checksum-sha256``: the verified
   digest of the blob itself, which such a server checks once more; the store remembers that
   and sends them from then on. Servers that do not ask never see these headers.
3. When object lock is on, HEAD the new version and, if it carries no retention (moto drops
   lock headers on multipart uploads), apply it with PutObjectRetention; if it still has none,
   `StorageError`. On such a server a verified blob is unlocked for that moment.

Writing once matters: the former design (a staging object, then a server-side copy to the key)
made the S3 server write every byte twice; writing once raised the upload rate against moto by
a third to a half (docs/performance.md). Recommended on the bucket: a lifecycle rule aborting incomplete multipart
uploads after a day, for uploads cut off by a crash or an outage (they hold storage, never a
readable object).

Outages: the client's urllib3 pool has short connect/read timeouts and few retries (urllib3's
`Retry`, never a hand loop; POSTs are not retried after a read timeout, since they may have
happened), so a dead or frozen endpoint raises `StorageUnavailableError` within
(connect + read timeout) x (retries + 1) seconds, about 20 s with the defaults of
`exchange.settings`; the same store works again once the server is back. A frozen server
accepts connections (the kernel completes the handshake) and then never answers, so it is the
read timeout that ends each attempt.

A bucket that vanished (the store came back empty) is created again, with Object Lock when it
is configured, by the next call that meets ``NoSuchBucket``: reads then find no object (a fetch
records the missing evidence as an integrity failure) and uploads work again, with no restart.
A call whose body was already streaming cannot be repeated: it answers `StorageUnavailableError`
and its retry succeeds. If the bucket cannot be created (no permission), every call answers
`StorageUnavailableError` until an operator creates it. docs/operations.md says what to do.

Messages of the errors raised here are plain: the driver's exception (hosts, ports, bucket,
S3 error text) is their ``__cause__``, for the server log. The `Minio` client is thread-safe:
one store may serve every request thread.
"""

from __future__ import annotations

import base64
import io
import logging
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, NoReturn, TypeVar

import certifi
import urllib3
from minio import Minio
from minio.commonconfig import COMPLIANCE
from minio.datatypes import Object
from minio.error import InvalidResponseError, S3Error, ServerError
from minio.helpers import ObjectWriteResult
from minio.retention import Retention
from urllib3.exceptions import HTTPError as Urllib3Error

from exchange.errors import (
    BlobNotFoundError,
    IntegrityFailureError,
    StorageError,
    StorageUnavailableError,
)
from exchange.storage.blobstore import (
    CHUNK_SIZE,
    BlobInfo,
    Readable,
    VerifyingReader,
    digest_of_key,
    key_for,
)

logger = logging.getLogger(__name__)

MIB = 1024 * 1024
MIN_PART_SIZE = 5 * MIB  # S3's minimum for every part but the last
MAX_PART_SIZE = 5 * 1024 * MIB  # S3's maximum for one part
MAX_PARTS = 10_000  # S3's maximum number of parts: larger bodies get larger parts
# One part is held in memory (plus the SDK's copies while it signs and sends it): the S3
# minimum keeps the server's peak RSS lowest; measured in docs/performance.md.
DEFAULT_PART_SIZE = MIN_PART_SIZE
_RETRYABLE_CODES = {"SlowDown", "ServiceUnavailable", "RequestTimeout", "InternalError"}
_RETRYABLE_STATUS = (500, 502, 503, 504)
# Defaults of the transport; `exchange.settings` carries the same values as EXCHANGE_S3_*.
DEFAULT_CONNECT_TIMEOUT = 2.0
DEFAULT_READ_TIMEOUT = 10.0
DEFAULT_RETRIES = 1

_T = TypeVar("_T")


def _bucket_missing(exc: StorageUnavailableError) -> bool:
    """True if the server answered NoSuchBucket: it came back empty, or the bucket was removed."""
    cause = exc.__cause__
    return isinstance(cause, S3Error) and cause.code == "NoSuchBucket"


def _utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class ObjectRetention:
    """The Object Lock retention a stored version carries."""

    mode: str
    retain_until: datetime


class S3BlobReader:
    """A stored object being streamed from S3; errors mid-stream raise `StorageUnavailableError`."""

    def __init__(self, response: urllib3.BaseHTTPResponse, key: str) -> None:
        self._response = response
        self._key = key

    def read(self, n: int = CHUNK_SIZE, /) -> bytes:
        """Up to `n` bytes (stored bytes as they are: no content decoding); b"" at the end."""
        try:
            data: bytes = self._response.read(n, decode_content=False)
        except (Urllib3Error, OSError) as exc:
            raise StorageUnavailableError(
                f"object store connection lost reading {self._key}"
            ) from exc
        return data

    def __iter__(self) -> Iterator[bytes]:
        while chunk := self.read(CHUNK_SIZE):
            yield chunk

    def close(self) -> None:
        """Close the response and give its connection back to the pool."""
        self._response.close()
        self._response.release_conn()

    def __enter__(self) -> S3BlobReader:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class _VerifiedToTheEnd:
    """Hands the SDK a body, raising `VerificationError` before the read that would complete it.

    The check (an extra byte, the digest) runs when the last declared byte has been read and
    before it is returned, so the SDK never sends the last part of a bad body and never
    completes its multipart upload.
    """

    def __init__(self, body: VerifyingReader) -> None:
        self._body = body

    def read(self, n: int = CHUNK_SIZE, /) -> bytes:
        """Up to `n` bytes of the verified body."""
        data = self._body.read(n)
        if self._body.bytes_read == self._body.size:
            self._body.finish()
        return data


class S3BlobStore:
    """Content-addressed blobs in one S3 bucket; see the module docstring for the design."""

    def __init__(
        self,
        endpoint: str,
        access_key: str,
        secret_key: str,
        bucket: str,
        secure: bool,
        region: str | None = None,
        object_lock: bool = False,
        retention_days: int = 3650,
        part_size: int = DEFAULT_PART_SIZE,
        *,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        read_timeout: float = DEFAULT_READ_TIMEOUT,
        retries: int = DEFAULT_RETRIES,
        pool_size: int = 16,
        clock: Callable[[], datetime] = _utc_now,
    ) -> None:
        if not MIN_PART_SIZE <= part_size <= MAX_PART_SIZE:
            raise ValueError(f"part_size must be between {MIN_PART_SIZE} and {MAX_PART_SIZE} bytes")
        if retention_days < 1:
            raise ValueError("retention_days must be at least 1")
        self.bucket = bucket
        self.region = region
        self.object_lock = object_lock
        self.retention_days = retention_days
        self.part_size = part_size
        self._clock = clock
        self._lock_needs_checksum = False
        self._endpoint = endpoint
        self._bucket_lock = threading.Lock()
        http = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=connect_timeout, read=read_timeout),
            maxsize=pool_size,
            cert_reqs="CERT_REQUIRED",
            ca_certs=os.environ.get("SSL_CERT_FILE") or certifi.where(),
            retries=urllib3.Retry(
                total=retries,
                connect=retries,
                read=retries,
                status=retries,
                backoff_factor=0.2,
                backoff_max=2.0,
                status_forcelist=_RETRYABLE_STATUS,
                raise_on_status=False,  # hand the last 5xx to the SDK, which parses its error
                respect_retry_after_header=False,  # never sleep a server-chosen time in a request
            ),
        )
        self._client = Minio(
            endpoint,
            access_key=access_key,
            secret_key=secret_key,
            secure=secure,
            region=region,
            http_client=http,
        )

    # -- the BlobStore contract -------------------------------------------------------------

    def key_for(self, sha256: str) -> str:
        """The content address ``sha256/<hex>``."""
        return key_for(sha256)

    def put(self, stream: Readable, *, sha256: str, size: int) -> BlobInfo:
        """Stream a body to its key, verified before it can complete; locked when configured."""
        body = VerifyingReader(stream, sha256=sha256, size=size)
        info = BlobInfo(key=self.key_for(sha256), sha256=sha256, size=size)
        existing = self._head(info.key)
        if existing is not None:
            body.drain()
            body.finish()
            self._accept_existing(info, existing)
            return info
        part_size = self._part_size_for(size)
        # A failed upload leaves nothing to delete: the SDK aborted the multipart upload, or the
        # single PUT was never sent.
        if size <= part_size:
            data = body.read(size) if size else b""
            body.finish()  # verified in memory before anything is sent
            result = self._with_bucket(info.key, lambda: self._put_whole(info, data))
        else:
            try:
                with self._translated(info.key):
                    result = self._client.put_object(
                        self.bucket,
                        info.key,
                        _VerifiedToTheEnd(body),  # type: ignore[arg-type]  # the SDK only calls read(n)
                        length=size,
                        part_size=part_size,
                        num_parallel_uploads=1,  # one part in memory at a time
                        retention=self._retention() if self.object_lock else None,
                    )
            except StorageUnavailableError as exc:
                if _bucket_missing(exc):
                    # The body has been read in part: it cannot be sent again from here, but
                    # the caller's retry finds the bucket back.
                    self._recreate_bucket()
                raise
        if self.object_lock:
            self._lock(info.key, _real_version(result.version_id))
        return info

    def open(self, key: str) -> S3BlobReader:
        """The stored object, streaming."""
        digest_of_key(key)
        response = self._with_bucket(key, lambda: self._client.get_object(self.bucket, key))
        return S3BlobReader(response, key)

    def exists(self, key: str) -> bool:
        """True if an object is stored under `key` (its latest version is not a delete marker)."""
        return self._head(key) is not None

    def stat(self, key: str) -> int:
        """The stored size in bytes."""
        found = self._head(key)
        if found is None:
            raise BlobNotFoundError(f"no blob stored under {key}")
        return int(found.size or 0)

    def delete(self, key: str) -> None:
        """Remove every version of `key`; `StorageError` if the server refuses (object lock)."""
        digest_of_key(key)
        versions = self._versions(key)
        if not versions:
            raise BlobNotFoundError(f"no blob stored under {key}")
        for version in versions:
            try:
                with self._translated(key):
                    self._client.remove_object(self.bucket, key, version_id=version)
            except StorageError as exc:
                raise StorageError(
                    f"the object store refused to delete {key} version {version} "
                    "(under object-lock retention?)"
                ) from exc

    def check(self) -> None:
        """Raise `StorageUnavailableError` unless the server answers and the bucket exists.

        A missing bucket is created again first (see the module docstring).
        """
        with self._translated(None):
            found = self._client.bucket_exists(self.bucket)
        if not found:
            self._recreate_bucket()

    # -- S3-specific operations -------------------------------------------------------------

    def ensure_bucket(self) -> None:
        """Create the bucket (with Object Lock when enabled) if missing; check an existing one."""
        with self._translated(None):
            if not self._client.bucket_exists(self.bucket):
                try:
                    self._client.make_bucket(self.bucket, self.region, object_lock=self.object_lock)
                except S3Error as exc:
                    if exc.code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                        raise
            if self.object_lock:
                self._check_lock_config()

    def retention_of(self, key: str) -> ObjectRetention | None:
        """The retention of the latest version of `key`, read from its HEAD response headers."""
        found = self._head(key)
        if found is None:
            raise BlobNotFoundError(f"no blob stored under {key}")
        return _retention_in(found)

    def set_retention(self, key: str, retain_until: datetime) -> None:
        """Set a COMPLIANCE retention on the latest version (servers refuse to shorten one)."""
        digest_of_key(key)
        with self._translated(key):
            self._client.set_object_retention(
                self.bucket, key, Retention(COMPLIANCE, retain_until.astimezone(UTC))
            )

    def stored_names(self, prefix: str = "") -> list[str]:
        """Names of every object version and delete marker under `prefix` (for audits and tests)."""
        with self._translated(None):
            return [
                str(found.object_name)
                for found in self._client.list_objects(
                    self.bucket, prefix=prefix, recursive=True, include_version=True
                )
            ]

    # -- internals ----------------------------------------------------------------------------

    def _head(self, key: str) -> Object | None:
        digest_of_key(key)
        try:
            return self._with_bucket(key, lambda: self._client.stat_object(self.bucket, key))
        except BlobNotFoundError:
            return None

    def _with_bucket(self, key: str | None, call: Callable[[], _T]) -> _T:
        """`call()`, translated; once more after creating the bucket again if it vanished."""
        try:
            with self._translated(key):
                return call()
        except StorageUnavailableError as exc:
            if not _bucket_missing(exc):
                raise
            self._recreate_bucket()
        with self._translated(key):
            return call()

    def _recreate_bucket(self) -> None:
        """Create the vanished bucket again (with Object Lock when configured), once.

        Raises `StorageUnavailableError` if it cannot be created: the operator must create it,
        and the store works again as soon as it exists.
        """
        with self._bucket_lock:  # one request recreates it; the others find it there
            try:
                with self._translated(None):
                    if self._client.bucket_exists(self.bucket):
                        return
                self.ensure_bucket()
            except StorageError as exc:
                logger.error(
                    "bucket %r on %s is missing and could not be created: create it%s; "
                    "until then every storage call answers 503",
                    self.bucket,
                    self._endpoint,
                    " with Object Lock" if self.object_lock else "",
                    exc_info=exc,
                )
                raise StorageUnavailableError(
                    "the bucket is missing and cannot be created"
                ) from exc
        logger.error(
            "bucket %r on %s was missing: created it again%s. Objects stored before are gone "
            "unless the store is restored; fetches of them are recorded as integrity failures",
            self.bucket,
            self._endpoint,
            " with Object Lock" if self.object_lock else "",
        )

    def _accept_existing(self, info: BlobInfo, existing: Object) -> None:
        if existing.size != info.size:
            raise IntegrityFailureError(
                f"stored blob {info.key} has {existing.size} bytes, the manifest says {info.size}",
                reason="stored_size_mismatch",
            )
        if self.object_lock and _retention_in(existing) is None:
            self._lock(info.key, _real_version(existing.version_id))

    def _part_size_for(self, size: int) -> int:
        """`part_size`, or the smallest whole MiB that fits `size` into S3's 10,000 parts."""
        needed = -(-size // MAX_PARTS)
        return max(self.part_size, -(-needed // MIB) * MIB)

    def _put_whole(self, info: BlobInfo, data: bytes) -> ObjectWriteResult:
        """One PUT of a verified body, locked from its first instant when object lock is on."""
        if not self.object_lock:
            return self._client.put_object(self.bucket, info.key, io.BytesIO(data), len(data))
        retention = self._retention()
        if not self._lock_needs_checksum:
            try:
                return self._client.put_object(
                    self.bucket, info.key, io.BytesIO(data), len(data), retention=retention
                )
            except S3Error as exc:
                if not _asks_for_checksum(exc):
                    raise
            # Learned once per store: this server wants a checksum next to lock parameters.
            self._lock_needs_checksum = True
        checksum = {
            "x-amz-sdk-checksum-algorithm": "SHA256",
            "x-amz-checksum-sha256": base64.b64encode(bytes.fromhex(info.sha256)).decode(),
        }
        return self._client.put_object(
            self.bucket,
            info.key,
            io.BytesIO(data),
            len(data),
            metadata=checksum,  # type: ignore[arg-type]  # plain headers, as the SDK sends them
            retention=retention,
        )

    def _lock(self, key: str, version: str | None) -> None:
        """Make sure this version carries a retention; apply one if the server dropped it."""
        with self._translated(key):
            if _retention_in(self._client.stat_object(self.bucket, key, version_id=version)):
                return
            logger.info("applying retention to %s after the upload (server did not keep it)", key)
            self._client.set_object_retention(
                self.bucket, key, self._retention(), version_id=version
            )
            if _retention_in(self._client.stat_object(self.bucket, key, version_id=version)):
                return
        raise StorageError(f"the object store did not keep a retention on {key}")

    def _retention(self) -> Retention:
        return Retention(COMPLIANCE, self._clock() + timedelta(days=self.retention_days))

    def _versions(self, key: str) -> list[str | None]:
        with self._translated(key):
            return [
                _real_version(found.version_id)
                for found in self._client.list_objects(
                    self.bucket, prefix=key, recursive=True, include_version=True
                )
                if found.object_name == key
            ]

    def _check_lock_config(self) -> None:
        try:
            config = self._client.get_object_lock_config(self.bucket)
        except S3Error as exc:
            if exc.code == "ObjectLockConfigurationNotFoundError":
                raise StorageError(
                    f"bucket {self.bucket!r} exists without Object Lock, which cannot be added "
                    "later on every S3 server: use a new bucket"
                ) from exc
            raise
        if config.mode is not None:
            raise StorageError(
                f"bucket {self.bucket!r} has a default retention rule ({config.mode}); it would lock "
                "objects by a rule the exchange does not set: remove it (the exchange locks each "
                "verified object itself)"
            )

    @contextmanager
    def _translated(self, key: str | None) -> Iterator[None]:
        """Turn SDK and transport errors into the exchange's storage errors."""
        try:
            yield
        except S3Error as exc:
            _raise_s3_error(exc, key, self.bucket)
        except ServerError as exc:
            status = exc.status_code
            if status in _RETRYABLE_STATUS:
                raise StorageUnavailableError(f"object store answered HTTP {status}") from exc
            raise StorageError(f"object store answered HTTP {status}") from exc
        except InvalidResponseError as exc:
            # A non-S3 answer (e.g. a proxy's HTML 502 page) while the server behind is down.
            raise StorageUnavailableError("object store gave an invalid response") from exc
        except (Urllib3Error, OSError) as exc:
            # Timeouts (connect or read, after the retries) and refused connections alike.
            raise StorageUnavailableError("object store unreachable or not answering") from exc


def _raise_s3_error(exc: S3Error, key: str | None, bucket: str) -> NoReturn:
    code = exc.code or ""
    if code in ("NoSuchKey", "NoSuchVersion") and key is not None:
        raise BlobNotFoundError(f"no blob stored under {key}") from exc
    if code == "NoSuchBucket":
        raise StorageUnavailableError(f"bucket {bucket!r} does not exist") from exc
    if code in _RETRYABLE_CODES:
        raise StorageUnavailableError(f"object store is busy or failing ({code})") from exc
    where = f" on {key}" if key else ""
    raise StorageError(f"object store refused a request{where} ({code})") from exc


def _asks_for_checksum(exc: S3Error) -> bool:
    """True for the refusals of lock parameters without a body checksum (moto, AWS wording)."""
    message = (exc.message or "").lower()
    return exc.code == "MissingUploadObjectWithObjectLockHeaders" or (
        exc.code == "InvalidRequest" and ("content-md5" in message or "checksum" in message)
    )


def _real_version(version: str | None) -> str | None:
    """A version id to pin, or None: "null" (unversioned bucket) is pinned by asking for none."""
    return None if version in (None, "", "null") else version


def _retention_in(found: Object) -> ObjectRetention | None:
    headers: dict[str, Any] = {k.lower(): v for k, v in (found.metadata or {}).items()}
    mode = headers.get("x-amz-object-lock-mode")
    until = headers.get("x-amz-object-lock-retain-until-date")
    if not mode or not until:
        return None
    return ObjectRetention(mode=str(mode), retain_until=datetime.fromisoformat(str(until)))

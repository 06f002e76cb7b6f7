"""The `BlobStore` contract, and the checks every store runs on an incoming body.

A blob is one evidence file, stored under its content address ``sha256/<hex>``. The caller
always knows the expected digest and size from the signed manifest, so a store verifies the
body while streaming it (`VerifyingReader`) and only makes it readable under its key once it
matched. Errors (all from `exchange.errors`):

- `VerificationError` with ``reason="size_mismatch"`` or ``reason="hash_mismatch"``: the body
  was not what the manifest promised; nothing was stored.
- `BlobNotFoundError`: no object under that key.
- `StorageUnavailableError`: the backend is down or timed out; retry later (HTTP 503).
- `StorageError`: any other backend failure.
- `InvalidInputError`: a malformed digest or key (a programming error, never a lookup).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

from exchange.errors import InvalidInputError, VerificationError

CHUNK_SIZE = 1024 * 1024
# Incoming bodies move in larger pieces: each piece crosses from the event loop to the worker
# thread once, and fewer, larger writes and hash updates cost less per byte (measured in
# docs/performance.md); 2 MiB keeps the few pieces in flight within the memory budget.
BODY_CHUNK_SIZE = 2 * 1024 * 1024
KEY_PREFIX = "sha256/"
_HEX64 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class BlobInfo:
    """Where a verified blob is stored, and what it is."""

    key: str
    sha256: str
    size: int


class Readable(Protocol):
    """Anything with `read(n)` returning at most n bytes, and b"" at the end."""

    def read(self, n: int, /) -> bytes: ...


class BlobReader(Protocol):
    """An open stored blob: read it in chunks or iterate over it; close it when done."""

    def read(self, n: int = CHUNK_SIZE, /) -> bytes: ...

    def __iter__(self) -> Iterator[bytes]: ...

    def close(self) -> None: ...

    def __enter__(self) -> BlobReader: ...

    def __exit__(self, *exc_info: object) -> None: ...


class BlobStore(Protocol):
    """Content-addressed storage of evidence files (local directory or S3)."""

    def key_for(self, sha256: str) -> str:
        """The content address ``sha256/<hex>`` of a digest."""
        ...

    def put(self, stream: Readable, *, sha256: str, size: int) -> BlobInfo:
        """Stream `stream` in, verifying `size` and `sha256`; idempotent for stored content."""
        ...

    def open(self, key: str) -> BlobReader:
        """A reader over the stored blob; `BlobNotFoundError` if there is none."""
        ...

    def exists(self, key: str) -> bool:
        """True if a blob is stored under `key`."""
        ...

    def stat(self, key: str) -> int:
        """The stored size in bytes; `BlobNotFoundError` if there is none."""
        ...

    def delete(self, key: str) -> None:
        """Remove the blob (admin and test cleanup); may be refused under object lock."""
        ...

    def check(self) -> None:
        """Raise `StorageUnavailableError` (or `StorageError`) unless the store can serve requests."""
        ...


def key_for(sha256: str) -> str:
    """The content address of a lowercase hex SHA-256 digest."""
    return KEY_PREFIX + check_digest(sha256)


def check_digest(sha256: str) -> str:
    """Return `sha256` if it is 64 lowercase hex characters, else raise `InvalidInputError`."""
    if not _HEX64.fullmatch(sha256):
        raise InvalidInputError(f"not a lowercase hex SHA-256 digest: {sha256[:80]!r}")
    return sha256


def digest_of_key(key: str) -> str:
    """The digest in a content address; `InvalidInputError` if `key` is not one."""
    if not key.startswith(KEY_PREFIX) or not _HEX64.fullmatch(key[len(KEY_PREFIX) :]):
        raise InvalidInputError(f"not a blob key (sha256/<hex>): {key[:100]!r}")
    return key[len(KEY_PREFIX) :]


class VerifyingReader:
    """Reads exactly the declared number of bytes from a stream, hashing them on the way.

    `read` pulls at most `BODY_CHUNK_SIZE` bytes per call from the source and never more than
    the declared size in total; a source that ends early raises ``size_mismatch`` at once. After
    the body has been stored somewhere temporary, `finish` probes for one extra byte (a longer
    body is ``size_mismatch``) and compares the digest (``hash_mismatch``).
    """

    def __init__(self, stream: Readable, *, sha256: str, size: int) -> None:
        if size < 0:
            raise InvalidInputError(f"size must not be negative: {size}")
        self._stream = stream
        self.expected_sha256 = check_digest(sha256)
        self.size = size
        self.bytes_read = 0
        self._hash = hashlib.sha256()

    def read(self, n: int = CHUNK_SIZE, /) -> bytes:
        """Up to `n` bytes of the body (fewer only at its declared end); b"" once all are read."""
        want = self.size - self.bytes_read if n < 0 else min(n, self.size - self.bytes_read)
        chunks: list[bytes] = []
        while want > 0:
            chunk = self._read_one(min(want, BODY_CHUNK_SIZE))
            want -= len(chunk)
            chunks.append(chunk)
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def read_some(self, n: int = BODY_CHUNK_SIZE, /) -> bytes:
        """What one read of the source gives, at most `n` bytes; b"" once all are read.

        For writers that take any chunk size: no joining, so memory holds one source chunk.
        """
        want = min(n, self.size - self.bytes_read)
        if want <= 0:
            return b""
        return self._read_one(min(want, BODY_CHUNK_SIZE))

    def _read_one(self, want: int) -> bytes:
        chunk = self._stream.read(want)
        if not chunk:
            raise VerificationError(
                f"body is shorter than the declared {self.size} bytes "
                f"(ended after {self.bytes_read})",
                reason="size_mismatch",
            )
        if len(chunk) > want:  # a source that ignores n must not make us read past the end
            raise VerificationError(
                f"body is longer than the declared {self.size} bytes",
                reason="size_mismatch",
            )
        self._hash.update(chunk)
        self.bytes_read += len(chunk)
        return chunk

    def drain(self) -> None:
        """Read (and hash) the rest of the declared body without keeping it."""
        while self.read_some(BODY_CHUNK_SIZE):
            pass

    def finish(self) -> None:
        """Raise `VerificationError` unless the whole body was read, ended there, and matched."""
        if self.bytes_read != self.size:
            raise VerificationError(
                f"body was read only up to byte {self.bytes_read} of {self.size}",
                reason="size_mismatch",
            )
        if self._stream.read(1):
            raise VerificationError(
                f"body is longer than the declared {self.size} bytes",
                reason="size_mismatch",
            )
        actual = self._hash.hexdigest()
        if actual != self.expected_sha256:
            raise VerificationError(
                f"body SHA-256 {actual} does not match the declared {self.expected_sha256}",
                reason="hash_mismatch",
            )

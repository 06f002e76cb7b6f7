"""`LocalBlobStore`: evidence files in a local directory, the embedded default.

Layout under `root`::

    sha256/<first 2 hex>/<hex>    verified blobs, mode 0444
    staging/<hex[:16]>.<random>.part  bodies being written (removed on success and on failure)

A body is written to a temp file in `staging/` (same file system, so publishing is atomic),
fsynced (every `SYNC_EVERY` bytes and at the end, its pages dropped from the page cache once
synced), verified, then hard-linked to its final name and the directory fsynced. `os.link`
refuses to replace an existing name, so a blob once published is never overwritten, not even
by a concurrent upload of the same content. A full disk (ENOSPC/EDQUOT) raises
`StorageUnavailableError` (HTTP 503: the upload may be retried once an operator made room); other
OS errors raise `StorageError`. A process killed mid-write can leave a ``*.part`` file in
`staging/`, never a partial blob.
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from exchange.errors import (
    BlobNotFoundError,
    IntegrityFailureError,
    StorageError,
    StorageUnavailableError,
)
from exchange.storage.blobstore import (
    BODY_CHUNK_SIZE,
    CHUNK_SIZE,
    BlobInfo,
    Readable,
    VerifyingReader,
    digest_of_key,
    key_for,
)

BLOB_MODE = 0o444
_DISK_FULL = {errno.ENOSPC, errno.EDQUOT}
DISK_FULL_RETRY_AFTER = 60
# Bytes written between two fdatasyncs of an incoming body, and read between two drops of a
# blob from the page cache.
SYNC_EVERY = 32 * 1024 * 1024


class FileBlobReader:
    """A stored blob opened for reading, dropping from the page cache what it has read.

    Evidence files are large and read once per fetch: keeping them cached would evict more
    useful pages, and recycling a few MiB of cache pages is much faster than having new ones
    allocated for every byte (see `_write_through`).
    """

    def __init__(self, file: BinaryIO) -> None:
        self._file = file
        self._read = 0
        self._dropped = 0

    def read(self, n: int = CHUNK_SIZE, /) -> bytes:
        """Up to `n` bytes; b"" at the end."""
        data = self._file.read(n)
        self._read += len(data)
        if self._read - self._dropped >= SYNC_EVERY:
            _drop_cached(self._file.fileno(), self._dropped, self._read - self._dropped)
            self._dropped = self._read
        return data

    def __iter__(self) -> Iterator[bytes]:
        while chunk := self.read(CHUNK_SIZE):
            yield chunk

    def close(self) -> None:
        """Close the file."""
        if not self._file.closed and self._read > self._dropped:
            _drop_cached(self._file.fileno(), self._dropped, self._read - self._dropped)
        self._file.close()

    def __enter__(self) -> FileBlobReader:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class LocalBlobStore:
    """Content-addressed blobs in a directory tree; see the module docstring for the layout."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.staging_dir = root / "staging"
        self._blob_dir = root / "sha256"
        for folder in (self.staging_dir, self._blob_dir):
            folder.mkdir(parents=True, exist_ok=True)

    def key_for(self, sha256: str) -> str:
        """The content address ``sha256/<hex>``."""
        return key_for(sha256)

    def path_for(self, key: str) -> Path:
        """The file that holds (or would hold) the blob under `key`."""
        digest = digest_of_key(key)
        return self._blob_dir / digest[:2] / digest

    def put(self, stream: Readable, *, sha256: str, size: int) -> BlobInfo:
        """Stream a body to a temp file, verify it, then publish it read-only under its key."""
        body = VerifyingReader(stream, sha256=sha256, size=size)
        info = BlobInfo(key=self.key_for(sha256), sha256=sha256, size=size)
        final = self.path_for(info.key)
        if final.is_file():
            body.drain()
            body.finish()
            self._check_stored_size(info)
            return info
        try:
            fd, tmp_name = tempfile.mkstemp(
                dir=self.staging_dir, prefix=f"{sha256[:16]}.", suffix=".part"
            )
        except OSError as exc:
            raise _translated(exc, info.key) from exc
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as out:
                _write_through(body, out)
                os.fchmod(out.fileno(), BLOB_MODE)
            body.finish()
            self._publish(tmp, final)
        except OSError as exc:
            raise _translated(exc, info.key) from exc
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        return info

    def open(self, key: str) -> FileBlobReader:
        """The stored blob, open for reading."""
        try:
            return FileBlobReader(self.path_for(key).open("rb"))
        except FileNotFoundError:
            raise BlobNotFoundError(f"no blob stored under {key}") from None
        except OSError as exc:
            raise _translated(exc, key) from exc

    def exists(self, key: str) -> bool:
        """True if a blob is stored under `key`."""
        return self.path_for(key).is_file()

    def stat(self, key: str) -> int:
        """The stored size in bytes."""
        try:
            return self.path_for(key).stat().st_size
        except FileNotFoundError:
            raise BlobNotFoundError(f"no blob stored under {key}") from None
        except OSError as exc:
            raise _translated(exc, key) from exc

    def delete(self, key: str) -> None:
        """Remove the blob (admin and test cleanup)."""
        try:
            self.path_for(key).unlink()
        except FileNotFoundError:
            raise BlobNotFoundError(f"no blob stored under {key}") from None
        except OSError as exc:
            raise _translated(exc, key) from exc

    def check(self) -> None:
        """Raise unless the blob directories exist and can be written."""
        for folder in (self.staging_dir, self._blob_dir):
            if not folder.is_dir():
                raise StorageUnavailableError(
                    f"blob directory {folder} is missing (volume not mounted?)"
                )
            if not os.access(folder, os.W_OK | os.X_OK):
                raise StorageError(f"blob directory {folder} is not writable")

    def _publish(self, tmp: Path, final: Path) -> None:
        if not final.parent.is_dir():
            final.parent.mkdir(exist_ok=True)
            _fsync_dir(self._blob_dir)
        # A concurrent upload of the same verified content may have won: then nothing to do.
        with contextlib.suppress(FileExistsError):
            os.link(tmp, final)
        _fsync_dir(final.parent)

    def _check_stored_size(self, info: BlobInfo) -> None:
        stored = self.stat(info.key)
        if stored != info.size:
            raise IntegrityFailureError(
                f"stored blob {info.key} has {stored} bytes, the manifest says {info.size}",
                reason="stored_size_mismatch",
            )


def _write_through(body: VerifyingReader, out: BinaryIO) -> None:
    """Copy the body to `out` and fsync it, flushing and dropping the cache every few MiB.

    Syncing as it goes keeps the page cache this upload holds to `SYNC_EVERY` bytes, and the
    pages dropped are reused for the next ones: allocating a fresh page-cache page for every
    byte of a multi-GB file is what limited the writes (3-4x slower on the measured VM; see
    docs/performance.md). The final fsync still covers everything.
    """
    fd = out.fileno()
    written = synced = 0
    while chunk := body.read_some(BODY_CHUNK_SIZE):
        out.write(chunk)
        written += len(chunk)
        if written - synced >= SYNC_EVERY:
            out.flush()
            os.fdatasync(fd)
            _drop_cached(fd, synced, written - synced)
            synced = written
    out.flush()
    os.fsync(fd)
    _drop_cached(fd, synced, 0)  # 0: to the end of the file


def _drop_cached(fd: int, offset: int, length: int) -> None:
    # Only clean (already synced) pages are dropped; where fadvise is missing, nothing is.
    if hasattr(os, "posix_fadvise"):
        os.posix_fadvise(fd, offset, length, os.POSIX_FADV_DONTNEED)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _translated(exc: OSError, key: str) -> StorageError | StorageUnavailableError:
    if exc.errno in _DISK_FULL:
        return StorageUnavailableError(
            f"no space left to store {key}: {exc.strerror}", retry_after=DISK_FULL_RETRY_AFTER
        )
    # The OS's text (paths, errno) stays in the cause the caller chains, for the server log.
    return StorageError(f"local blob store failed on {key}")

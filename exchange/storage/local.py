"""`LocalBlobStore`: evidence files in a local directory, the embedded default.

Layout under `root`::

    sha256/<first 2 hex>/<hex>    verified blobs, mode 0444
    staging/<hex[:16]>.<random>.part  bodies being written (removed on success and on failure)

A body is written to a temp file in `staging/` (same file system, so publishing is atomic),
fsynced, verified, then hard-linked to its final name and the directory fsynced. `os.link`
refuses to replace an existing name, so a blob once published is never overwritten, not even
by a concurrent upload of the same content. A full disk (ENOSPC/EDQUOT) raises
`UnavailableError` (HTTP 503: the upload may be retried once an operator made room); other
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
    UnavailableError,
)
from exchange.storage.blobstore import (
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


class FileBlobReader:
    """A stored blob opened for reading."""

    def __init__(self, file: BinaryIO) -> None:
        self._file = file

    def read(self, n: int = CHUNK_SIZE, /) -> bytes:
        """Up to `n` bytes; b"" at the end."""
        return self._file.read(n)

    def __iter__(self) -> Iterator[bytes]:
        while chunk := self._file.read(CHUNK_SIZE):
            yield chunk

    def close(self) -> None:
        """Close the file."""
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
                while chunk := body.read(CHUNK_SIZE):
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
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
                raise UnavailableError(f"blob directory {folder} is missing (volume not mounted?)")
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


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _translated(exc: OSError, key: str) -> StorageError | UnavailableError:
    if exc.errno in _DISK_FULL:
        return UnavailableError(
            f"no space left to store {key}: {exc.strerror}", retry_after=DISK_FULL_RETRY_AFTER
        )
    return StorageError(f"local blob store failed on {key}: {exc}")

"""Streaming SHA-256 in constant memory."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import BinaryIO

CHUNK_SIZE = 1024 * 1024

ProgressCallback = Callable[[int], None]


def hash_stream(
    stream: BinaryIO, *, on_bytes: ProgressCallback | None = None, sink: BinaryIO | None = None
) -> tuple[str, int]:
    """SHA-256 hex digest and byte count of everything `stream` yields.

    When `sink` is given each chunk is also written there, so a copy and its hash take one read.
    """
    digest = hashlib.sha256()
    size = 0
    buffer = bytearray(CHUNK_SIZE)
    view = memoryview(buffer)
    while True:
        n = stream.readinto(view)  # type: ignore[attr-defined]  # BinaryIO lacks readinto in typeshed
        if not n:
            break
        chunk = view[:n]
        digest.update(chunk)
        if sink is not None:
            sink.write(chunk)
        size += n
        if on_bytes is not None:
            on_bytes(n)
    return digest.hexdigest(), size


class HashingReader:
    """A read-only file wrapper that hashes what passes through it (for tarfile.addfile)."""

    def __init__(self, stream: BinaryIO, on_bytes: ProgressCallback | None = None) -> None:
        self._stream = stream
        self._on_bytes = on_bytes
        self._digest = hashlib.sha256()
        self.size = 0

    def read(self, n: int = -1) -> bytes:
        """Read like the wrapped stream, hashing the bytes returned."""
        data = self._stream.read(n)
        self._digest.update(data)
        self.size += len(data)
        if self._on_bytes is not None and data:
            self._on_bytes(len(data))
        return data

    def hexdigest(self) -> str:
        """SHA-256 of everything read so far."""
        return self._digest.hexdigest()

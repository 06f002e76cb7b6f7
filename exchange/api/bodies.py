"""Request bodies: streamed into synchronous code from a worker thread, and bounded when JSON."""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import anyio
import anyio.from_thread
import anyio.to_thread
import ijson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from exchange.api.errors import exchange_error_response
from exchange.errors import PayloadTooLargeError
from exchange.storage.blobstore import BODY_CHUNK_SIZE, Readable

T = TypeVar("T")


class ThreadedBodyReader:
    """A sync `read(n)` over an ASGI request body, for code running in an anyio worker thread.

    `pump` runs on the event loop and gathers the body into pieces of `piece_size` bytes, one
    piece ahead of the reader, so receiving overlaps the thread's hashing and writing and the
    thread crosses to the loop once per piece instead of once per ASGI message (~64 KiB).
    Memory stays bounded: one piece being read, one handed over or being gathered. Errors of the
    body stream (a client disconnect) reach the reader as they were raised.
    """

    def __init__(self, stream: AsyncIterator[bytes], piece_size: int = BODY_CHUNK_SIZE) -> None:
        if piece_size < 1:
            raise ValueError("piece_size must be positive")
        self._stream = stream
        self._piece_size = piece_size
        self._send, self._receive = anyio.create_memory_object_stream[bytes | Exception](0)
        self._piece = b""
        self._offset = 0
        self._done = False

    async def pump(self) -> None:
        """Feed the body to the reader in exact pieces; run it beside the reading thread."""
        parts: list[bytes | memoryview] = []
        held = 0
        try:
            async for chunk in self._stream:
                if not chunk:
                    continue
                parts.append(chunk)
                held += len(chunk)
                while held >= self._piece_size:
                    # Split the last message so every piece but the last has the exact size:
                    # a reader asking for `piece_size` then takes each piece without a copy.
                    last = memoryview(parts[-1])
                    keep = held - self._piece_size
                    parts[-1] = last[: len(last) - keep]
                    await self._send.send(b"".join(parts))
                    parts = [last[len(last) - keep :]] if keep else []
                    held = keep
            if parts:
                await self._send.send(b"".join(parts))
        except Exception as exc:  # the reader re-raises it in its thread
            with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
                await self._send.send(exc)
        finally:
            self._send.close()

    def _fill(self) -> bool:
        """Make sure a piece with unread bytes is at hand; False at the end of the body."""
        while self._offset >= len(self._piece):
            if self._done:
                return False
            item = anyio.from_thread.run(self._next)
            if item is None or isinstance(item, Exception):
                self._done = True
                if item is not None:
                    raise item
                return False
            self._piece, self._offset = item, 0
        return True

    async def _next(self) -> bytes | Exception | None:
        try:
            return await self._receive.receive()
        except anyio.EndOfStream:
            return None

    def read(self, n: int = -1) -> bytes:
        """Up to `n` bytes, at most one piece's worth (all that is left when `n` < 0).

        b"" only at the end of the body. Asked for a whole piece, it hands the piece on as it is.
        """
        if n < 0:
            return b"".join(iter(lambda: self.read(self._piece_size), b""))
        if n == 0 or not self._fill():
            return b""
        if self._offset == 0 and n >= len(self._piece):
            piece, self._piece = self._piece, b""
            return piece
        end = min(self._offset + n, len(self._piece))
        out = self._piece[self._offset : end]
        self._offset = end
        return out


async def read_body_in_thread(
    stream: AsyncIterator[bytes], work: Callable[[Readable], T], piece_size: int = BODY_CHUNK_SIZE
) -> T:
    """Run `work(body)` in a worker thread while the event loop pumps the request body into it."""
    reader = ThreadedBodyReader(stream, piece_size)
    failure: Exception | None = None
    async with anyio.create_task_group() as pumping:
        pumping.start_soon(reader.pump)
        try:
            result = await anyio.to_thread.run_sync(work, reader)
        except Exception as exc:  # raised below as it was, not wrapped in an ExceptionGroup
            failure = exc
        finally:
            pumping.cancel_scope.cancel()  # the thread may stop early (refused body)
    if failure is not None:
        raise failure
    return result


@dataclass(frozen=True)
class BodyLimit:
    """The largest body of the requests with this method whose path `path` is found in."""

    method: str
    path: re.Pattern[str]
    max_bytes: int


class JsonBodyLimitMiddleware:
    """Refuses (413) request bodies over their route's limit, except streamed evidence uploads.

    JSON bodies are read whole before they are parsed, so each is bounded: by the declared
    Content-Length up front and by counting while reading. `limits` name the routes allowed a
    larger body than `max_bytes` (a manifest of 10 000 files is a few MB; a case or grant a few
    hundred bytes).
    """

    def __init__(self, app: ASGIApp, max_bytes: int, limits: Sequence[BodyLimit] = ()) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.limits = tuple(limits)

    def limit_for(self, method: str, path: str) -> int:
        """The body limit of a request."""
        for limit in self.limits:
            if limit.method == method and limit.path.search(path):
                return limit.max_bytes
        return self.max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or (scope["method"] == "PUT" and "/files/" in scope["path"]):
            await self.app(scope, receive, send)
            return
        max_bytes = self.limit_for(scope["method"], scope["path"])
        declared = dict(scope["headers"]).get(b"content-length", b"0")
        if declared.isdigit() and int(declared) > max_bytes:
            refusal = PayloadTooLargeError(f"request body is larger than {max_bytes} bytes")
            await exchange_error_response(refusal)(scope, receive, send)
            return
        seen = 0

        async def counting_receive() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > max_bytes:  # raised inside the route: the error handlers answer
                raise PayloadTooLargeError(f"request body is larger than {max_bytes} bytes")
            return message

        await self.app(scope, counting_receive, send)


class _TooManyItemsError(Exception):
    pass


class _ItemCounter:
    """The target of ijson's push parser: counts the items, stops the parse past `limit`."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.count = 0

    def send(self, _item: object) -> None:
        self.count += 1
        if self.count > self.limit:
            raise _TooManyItemsError


def read_counting_items(body: Readable, *, prefix: str, limit: int) -> bytes | None:
    """The whole of a JSON `body`, or None as soon as the array at `prefix` (ijson's dotted
    path, e.g. ``manifest.files``) holds more than `limit` items.

    Each piece is fed to ijson's C push parser as it arrives, so a 100 000-entry manifest is
    refused after its first tenth has been received and parsed, before any full parse or schema
    check; the rest of it is never read. The parser hands every item to Python, where the
    interpreter may switch threads, so the event loop keeps running beside it. A body that
    stops being JSON is counted no further: the full parse that follows reports it.
    """
    counter = _ItemCounter(limit)
    parser = ijson.items_coro(counter, f"{prefix}.item", use_float=True)
    pieces: list[bytes] = []
    counting = True
    while piece := body.read(BODY_CHUNK_SIZE):
        pieces.append(piece)
        if counting:
            try:
                parser.send(piece)
            except _TooManyItemsError:
                return None
            except ijson.JSONError:
                counting = False
    return b"".join(pieces)

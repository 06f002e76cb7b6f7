"""Request bodies: streamed into synchronous code from a worker thread, and bounded when JSON."""

from __future__ import annotations

from collections.abc import AsyncIterator

import anyio.from_thread
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from exchange.api.errors import exchange_error_response
from exchange.errors import PayloadTooLargeError


class ThreadedBodyReader:
    """A sync `read(n)` over an ASGI request body, for code running in an anyio worker thread.

    Each read pulls chunks from the event loop as needed and keeps at most one chunk beyond
    what was asked for, so memory stays constant however large the body is.
    """

    def __init__(self, stream: AsyncIterator[bytes]) -> None:
        self._stream = stream
        self._buffer = bytearray()
        self._done = False

    async def _next(self) -> bytes | None:
        try:
            return await self._stream.__anext__()
        except StopAsyncIteration:
            return None

    def read(self, n: int = -1) -> bytes:
        """Up to `n` bytes (all that is left when `n` < 0); b"" at the end of the body."""
        while not self._done and (n < 0 or len(self._buffer) < n):
            chunk = anyio.from_thread.run(self._next)
            if chunk is None:
                self._done = True
            else:
                self._buffer += chunk
        size = len(self._buffer) if n < 0 else min(n, len(self._buffer))
        out = bytes(self._buffer[:size])
        del self._buffer[:size]
        return out


class JsonBodyLimitMiddleware:
    """Refuses (413) request bodies over `max_bytes`, except streamed evidence file uploads.

    JSON bodies (a manifest of 100 000 files is some 30 MB) are read whole by the framework, so
    this bounds them by the declared Content-Length up front and by counting while reading.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or (scope["method"] == "PUT" and "/files/" in scope["path"]):
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"0")
        if declared.isdigit() and int(declared) > self.max_bytes:
            refusal = PayloadTooLargeError(f"request body is larger than {self.max_bytes} bytes")
            await exchange_error_response(refusal)(scope, receive, send)
            return
        seen = 0

        async def counting_receive() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:  # raised inside the route: the error handlers answer
                raise PayloadTooLargeError(f"request body is larger than {self.max_bytes} bytes")
            return message

        await self.app(scope, counting_receive, send)

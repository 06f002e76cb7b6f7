"""A streamed evidence download that breaks off without a traceback when its bytes go bad."""

from __future__ import annotations

import logging

from starlette.responses import StreamingResponse
from starlette.types import Send

from exchange.errors import StoredObjectCorruptError

logger = logging.getLogger("exchange.api")


class VerifiedStreamingResponse(StreamingResponse):
    """A `StreamingResponse` whose body iterator may raise `StoredObjectCorruptError` mid-way.

    Once the status line is out no problem answer can follow: raising would end in Starlette's
    "response already started" error with a traceback. Instead the response returns without its
    final body message, so the server closes the connection and the client sees a body shorter
    than its Content-Length. The failure was recorded in the ledger before the error was raised.
    """

    async def stream_response(self, send: Send) -> None:
        """Send the head and the body; stop short, logging one line, on a corrupt object."""
        await send(
            {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
        )
        sent = 0
        try:
            async for chunk in self.body_iterator:
                data = chunk.encode(self.charset) if isinstance(chunk, str) else chunk
                await send({"type": "http.response.body", "body": data, "more_body": True})
                sent += len(data)
        except StoredObjectCorruptError as exc:
            logger.warning("download of %s aborted after %d bytes: %s", exc.path, sent, exc.message)
            return
        await send({"type": "http.response.body", "body": b"", "more_body": False})

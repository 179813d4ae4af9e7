"""The request body limit (`--max-body-mb`), answered as an OpenAI error object with 413.

Starlette's own `RequestBodyLimitMiddleware` counts bytes the same way, but answers a request whose
Content-Length is over the limit with a plain-text 413 in place of whatever the app answers; this
one lets the app's error handler write the error object. A body over the limit is refused at once
from its Content-Length and, without one (chunked) or with a false one, when the count passes the
limit while it is read: it is never held in memory whole.
"""

from __future__ import annotations

from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class BodyTooLarge(HTTPException):
    """Raised while the body is read; FastAPI passes HTTPExceptions through to the error handlers."""

    def __init__(self) -> None:
        super().__init__(status_code=413, detail="request body too large")


class BodyLimit:
    """ASGI middleware: at most `max_bytes` of request body."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = Headers(scope=scope).get("content-length", "")
        declared_too_large = length.isdigit() and int(length) > self.max_bytes
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            if declared_too_large:  # the first read fails: nothing of the body is taken in
                raise BodyTooLarge
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise BodyTooLarge
            return message

        await self.app(scope, limited, send)

"""Request body limits, enforced while the body arrives rather than after it has been read.

Starlette reads a whole multipart body (into a temporary file) before a route sees the upload, and
a whole JSON body into memory, so a size check in the route comes after the damage. This ASGI
middleware sits in front of the app instead:

- a request whose Content-Length is over its path's limit is answered 413 at once, unread;
- a body of unknown length (chunked) is counted as the server hands it over, and the request is
  answered 413 the moment the count passes the limit; the rest is never read.

The 413 carries `Connection: close`, so the server drops the connection instead of reading and
discarding the rest of the body to reuse it. Limits: an image upload may be MAX_UPLOAD_BYTES plus
the multipart framing around it; any other body (a job, with an inline base64 image) MAX_REQUEST_BYTES.
"""

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import error_body
from jobs.settings import Settings

UPLOAD_PATHS = frozenset({"/v1/images"})
# Boundaries, part headers and a file name around the one file field of an upload.
MULTIPART_OVERHEAD_BYTES = 64 * 1024


class BodyTooLarge(Exception):
    """Raised into the app from `receive` when the body passes its limit, so the app stops reading."""


def body_limit(settings: Settings, path: str) -> int:
    """The most bytes a request body to `path` may have."""
    if path.rstrip("/") in UPLOAD_PATHS:
        return settings.MAX_UPLOAD_BYTES + MULTIPART_OVERHEAD_BYTES
    return settings.MAX_REQUEST_BYTES


class LimitRequestBody:
    """Pure ASGI middleware refusing request bodies over `body_limit` with 413 `upload_too_large`."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.settings = settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = body_limit(self.settings, scope["path"])
        if (_declared_length(scope) or 0) > limit:
            await _too_large(limit)(scope, receive, send)
            return
        body = _CountedBody(receive, limit)
        started = False

        async def send_unless_cut_off(message: Message) -> None:
            nonlocal started
            if body.exceeded and not started:
                return  # the app's own answer to a body cut off under it (FastAPI makes it a 400) gives way
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, body.receive, send_unless_cut_off)
        except BodyTooLarge:
            if started:
                raise
        if body.exceeded and not started:
            await _too_large(limit)(scope, receive, send)


class _CountedBody:
    """The request's `receive`, counting body bytes and raising `BodyTooLarge` once they pass `limit`."""

    def __init__(self, receive: Receive, limit: int) -> None:
        self._receive = receive
        self.limit = limit
        self.received = 0
        self.exceeded = False

    async def receive(self) -> Message:
        message = await self._receive()
        if message["type"] == "http.request":
            self.received += len(message.get("body", b""))
            if self.received > self.limit:
                self.exceeded = True
                raise BodyTooLarge(f"request body over {self.limit} bytes")
        return message


def _declared_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            return int(value) if value.isdigit() else None
    return None


def _too_large(limit: int) -> JSONResponse:
    message = f"the request body is over the limit of {limit} bytes"
    return JSONResponse(error_body("upload_too_large", message), status_code=413, headers={"Connection": "close"})

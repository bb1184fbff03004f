"""ASGI middleware: the request id every log line of a request carries, the access log, the headers every
answer carries, the body limit."""

import logging
import random
import re
import time
from collections.abc import Callable

from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from delivery import metrics
from delivery.logs import request_id

logger = logging.getLogger("delivery.access")

#: A client's id is kept when it is short and plain; anything else is replaced, never logged as sent.
_ACCEPTABLE = re.compile(r"[A-Za-z0-9._:-]{1,128}")


#: A response header as ASGI carries it.
Header = tuple[bytes, bytes]


class RequestIdMiddleware:
    """The request id and the access log around every request; on every answer, the request id and the headers
    that `headers_for` gives for the request's path (made once, appended as they are)."""

    def __init__(self, app: ASGIApp, *, headers_for: Callable[[str], tuple[Header, ...]]) -> None:
        self.app = app
        self.headers_for = headers_for

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        sent = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"x-request-id"), "")
        # An id to find a request's lines by, not a secret: 128 random bits without uuid4's system call.
        rid = sent if _ACCEPTABLE.fullmatch(sent) else f"{random.getrandbits(128):032x}"
        token = request_id.set(rid)
        started = time.perf_counter()
        status = 500
        id_header = (b"x-request-id", rid.encode())
        fixed = self.headers_for(scope["path"])

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                # No answer of the app sets these headers itself: appended, not looked for.
                message["headers"] = [*message.get("headers", ()), id_header, *fixed]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            elapsed = time.perf_counter() - started
            route = scope.get("route")
            template = getattr(route, "path", "unmatched")
            metrics.HTTP_REQUESTS.labels(scope["method"], template, str(status)).inc()
            metrics.HOST_REQUESTS.inc()
            metrics.HTTP_LATENCY.labels(scope["method"], template).observe(elapsed)
            logger.info(
                "%s %s status=%s duration_ms=%.1f",
                scope["method"],
                scope["path"],
                status,
                elapsed * 1000,
            )
            request_id.reset(token)


class BodyLimitMiddleware:
    """A request body over `limit` bytes gets 413 before it is parsed, as JSON `{"detail": ...}`.

    Starlette's own limiter (FastAPI's `max_body_size`) sits outside the app's middleware and error handlers:
    its 413 is plain text and carries no request id. This one runs inside `RequestIdMiddleware`.
    """

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit
        self.detail = f"request body over {limit // 1024} KiB"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length", "")
        if declared.isdigit() and int(declared) > self.limit:
            await JSONResponse({"detail": self.detail}, status_code=413)(scope, receive, send)
            return
        received = 0

        async def receive_within_limit() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.limit:
                # A body sent in chunks, without a length: the app's error handlers answer this one.
                raise HTTPException(413, self.detail)
            return message

        await self.app(scope, receive_within_limit, send)

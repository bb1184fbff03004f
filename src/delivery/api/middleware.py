"""ASGI middleware: the request id that every log line of a request carries, and the access log."""

import logging
import re
import time
import uuid

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from delivery import metrics
from delivery.logs import request_id

logger = logging.getLogger("delivery.access")

HEADER = "X-Request-ID"
#: A client's id is kept when it is short and plain; anything else is replaced, never logged as sent.
_ACCEPTABLE = re.compile(r"[A-Za-z0-9._:-]{1,128}")


class RequestIdMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        sent = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"x-request-id"), "")
        rid = sent if _ACCEPTABLE.fullmatch(sent) else uuid.uuid4().hex
        token = request_id.set(rid)
        started = time.perf_counter()
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                MutableHeaders(scope=message)[HEADER] = rid
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            elapsed = time.perf_counter() - started
            route = scope.get("route")
            template = getattr(route, "path", "unmatched")
            metrics.HTTP_REQUESTS.labels(scope["method"], template, str(status)).inc()
            metrics.HTTP_LATENCY.labels(scope["method"], template).observe(elapsed)
            logger.info(
                "%s %s status=%s duration_ms=%.1f",
                scope["method"],
                scope["path"],
                status,
                elapsed * 1000,
            )
            request_id.reset(token)

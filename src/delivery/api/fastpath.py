"""The fast paths: the hot requests answered before FastAPI's middleware stack, routing and dependencies.

FastAPI's way to an endpoint (its middleware layers, the included routers' matching, the dependencies, each a
coroutine, the validation, an ORM session opened and closed) costs more CPU than a read itself, and a third
of accepting a registration. An endpoint may have a fast path (`fast_path`): `FastLane` finds the route of a
request by its method and path, and the fast path answers the common request - the session in the cache,
plain values within their bounds - from the same service functions and encoders. It answers None for anything
else (no session or an unknown one, a value to refuse or to coerce, a parameter repeated, a body to refuse):
then FastAPI answers as it always has, the body the fast path read handed to it again. An exception of a
fast path is answered from the same table as the handlers' (`errors.error_response`): a database or a
broker that went away is a 503 either way.
"""

from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from fastapi import Request, Response
from fastapi.routing import APIRoute
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from delivery.api.errors import error_response

#: An endpoint's fast path: its answer to a plain request, or None for FastAPI's handler to answer.
FastPath = Callable[[Request], Awaitable[Response | None]]
#: The fast path of each endpoint that has one, looked up at each request.
FAST_PATHS: dict[Callable[..., Any], FastPath] = {}


def fast_path(endpoint: Callable[..., Any]) -> Callable[[FastPath], FastPath]:
    """Register the decorated function as `endpoint`'s fast path."""

    def register(fast: FastPath) -> FastPath:
        FAST_PATHS[endpoint] = fast
        return fast

    return register


class FastLane:
    """An ASGI app: a request to a route with a fast path is answered by it when it can; any other, by `full`.

    A route is matched by its method and its path's pattern alone (its path parameters as text); a body is
    taken only when its declared length is within `body_limit` (FastAPI's stack answers a larger one, or one
    without a length).
    """

    def __init__(self, app: Any, routes: Iterable[BaseRoute], full: ASGIApp, *, body_limit: int) -> None:
        self.app = app
        self.full = full
        self.body_limit = body_limit
        self.routes = [
            (method, route)
            for route in routes
            if isinstance(route, APIRoute) and route.endpoint in FAST_PATHS
            for method in sorted(route.methods or ())
        ]

    def _match(self, scope: Scope) -> tuple[APIRoute, dict[str, str]] | None:
        if scope.get("root_path"):
            return None  # served under a prefix: FastAPI's routing knows what to strip
        method, path = scope["method"], scope["path"]
        for route_method, route in self.routes:
            if route_method == method and (found := route.path_regex.match(path)) is not None:
                return route, found.groupdict()
        return None

    def _body_within_limit(self, scope: Scope) -> bool:
        if scope["method"] != "POST":
            return True
        length = next((value for name, value in scope["headers"] if name == b"content-length"), None)
        return length is not None and length.isdigit() and int(length) <= self.body_limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        matched = self._match(scope)
        fast = None if matched is None else FAST_PATHS.get(matched[0].endpoint)
        if matched is None or fast is None or not self._body_within_limit(scope):
            await self.full(scope, receive, send)
            return
        scope["app"], scope["route"], scope["path_params"] = self.app, matched[0], matched[1]
        request = Request(scope, receive)
        try:
            response = await fast(request)
        except Exception as exc:
            response = await error_response(request, exc)
        if response is None:
            await self.full(scope, _unread(request), send)
            return
        await response(scope, receive, send)


def _unread(request: Request) -> Receive:
    """The request's messages as FastAPI must get them: its body again, if the fast path read it."""
    body: bytes | None = getattr(request, "_body", None)
    if body is None:
        return request.receive
    replayed = False

    async def replay() -> Message:
        nonlocal replayed
        if replayed:
            return await request.receive()  # what follows the body: a disconnect
        replayed = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay

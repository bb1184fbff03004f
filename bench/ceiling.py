"""The ceiling: a bare ASGI endpoint served exactly as `delivery serve` serves the API.

`python -m bench.ceiling` reads `HOST`, `PORT`, `BENCH_CEILING_BODY` (a file with the bytes to answer) and
`BENCH_CEILING_KIND`: `starlette` (one Starlette route, the reported ceiling) or `asgi` (a plain ASGI
callable with no framework at all, to tell the server's share from the framework's).
"""

import os
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from delivery.config import get_settings
from delivery.logs import configure_logging

PATH = "/packages/"


def _body() -> bytes:
    return Path(os.environ["BENCH_CEILING_BODY"]).read_bytes()


def starlette_app() -> Starlette:
    body = _body()

    async def endpoint(request: Request) -> Response:
        return Response(body, media_type="application/json")

    return Starlette(routes=[Route(PATH, endpoint)])


class BareApp:
    """The same bytes from a bare ASGI callable."""

    def __init__(self, body: bytes) -> None:
        self.body = body
        self.headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        await send({"type": "http.response.start", "status": 200, "headers": self.headers})
        await send({"type": "http.response.body", "body": self.body})


def asgi_app() -> BareApp:
    return BareApp(_body())


def create_app() -> Any:
    return asgi_app() if os.environ.get("BENCH_CEILING_KIND") == "asgi" else starlette_app()


def main() -> None:
    """`delivery.cli.serve`'s uvicorn.run call (its processes too), with this module's factory."""
    import uvicorn

    configure_logging()
    uvicorn.run(
        "bench.ceiling:create_app",
        factory=True,
        # As many processes as the API's: WEB_CONCURRENCY, or its default (the CPU count).
        workers=get_settings().WEB_CONCURRENCY,
        timeout_worker_healthcheck=30,
        host=os.environ.get("HOST", "127.0.0.1"),
        port=int(os.environ.get("PORT", "8000")),
        log_config=None,
        access_log=False,
        proxy_headers=True,
        timeout_graceful_shutdown=20,
    )


if __name__ == "__main__":
    main()

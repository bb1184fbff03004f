"""The FastAPI application: resources made in `lifespan`, routers, error handlers."""

import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import sqlalchemy.exc
from fastapi import FastAPI
from starlette.types import ASGIApp, Receive, Scope, Send

from delivery import metrics, service
from delivery.api import admin, health, packages, sessions, web
from delivery.api.deps import Resources
from delivery.api.errors import register_exception_handlers
from delivery.api.fastpath import FastLane
from delivery.api.middleware import BodyLimitMiddleware, RequestIdMiddleware
from delivery.broker import amqp_publisher, create_celery
from delivery.config import Settings, get_settings
from delivery.db import create_engine, create_sessionmaker
from delivery.ratelimit import create_limiter
from delivery.store import create_store

logger = logging.getLogger(__name__)

MAX_BODY_SIZE = 64 * 1024


_heap_settled = False


def settle_heap() -> None:
    """Once per process, when the app has started: collect, then freeze what is left (`gc.freeze`).

    What exists then (the modules, routes and schemas, the pools and connections: some 140,000 objects) lives
    as long as the process. Under load the objects of requests in flight outlive young collections, and every
    few hundred requests a full collection scanned all of it: about 70 ms of CPU with the event loop stalled,
    some 0.1 ms per request on average, and the tail of the latency. Frozen objects are left out of the scans;
    they are still freed by reference counting. Collected first, so that no garbage of the start is kept.
    """
    global _heap_settled
    if not _heap_settled:
        _heap_settled = True
        gc.collect()
        gc.freeze()


class DeliveryAPI(FastAPI):
    """FastAPI, with a front for HTTP requests set by `create_app`: the request id and the access log around
    every request, and the fast paths (`FastLane`) before FastAPI's middleware stack."""

    front: ASGIApp | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and self.front is not None:
            await self.front(scope, receive, send)
        else:
            await super().__call__(scope, receive, send)

    async def stack(self, scope: Scope, receive: Receive, send: Send) -> None:
        """FastAPI's own way to an answer: its middleware, routing and handlers."""
        await super().__call__(scope, receive, send)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Each of the API's statements stands alone (reads, and writes of one statement each).
        engine = create_engine(settings, autocommit=True)
        store = create_store(settings)
        celery = create_celery(settings)
        publisher = amqp_publisher(settings)
        limiter = create_limiter(settings)
        app.state.resources = Resources(
            settings=settings,
            engine=engine,
            maker=create_sessionmaker(engine),
            store=store,
            celery=celery,
            publisher=publisher,
            limiter=limiter,
        )
        await _read_type_ids(app.state.resources)
        settle_heap()
        try:
            yield
        finally:
            if publisher is not None:
                await publisher.close()
            if limiter is not None:
                await limiter.close()
            celery.close()
            await store.close()
            await engine.dispose()
            metrics.end_api_process()

    app = DeliveryAPI(
        title="Delivery service",
        summary="Registers parcels asynchronously; prices them at the Central Bank of Russia's USD/RUB rate.",
        version="0.1.0",
        lifespan=lifespan,
        # /docs is one of the pages (`web.docs`), under their policy; ReDoc is not served: it injects its
        # styles inline, which that policy refuses.
        docs_url=None,
        redoc_url=None,
        openapi_tags=[
            {"name": "sessions", "description": "A customer's session, held in a cookie."},
            {"name": "packages", "description": "Registering parcels and reading them back."},
            {"name": "operators", "description": "Guarded by X-Admin-Token."},
            {"name": "operations", "description": "Health, readiness and metrics."},
        ],
    )
    register_exception_handlers(app)
    app.add_middleware(BodyLimitMiddleware, limit=MAX_BODY_SIZE)
    for module in (sessions, packages, admin, health, web):
        app.include_router(module.router)
    # Outside every other layer, fast paths included: each answer carries the request id and the headers that
    # hold browsers to the pages (`web.security_headers`), and reaches the access log.
    app.front = RequestIdMiddleware(
        FastLane(app, packages.router.routes, full=app.stack, body_limit=MAX_BODY_SIZE),
        headers_for=web.security_headers,
    )
    web.mount_static(app)
    _document_type_ids(app)
    return app


async def _read_type_ids(resources: Resources) -> None:
    """For the schema's list of type ids; a database not up yet is read again at the first registration."""
    try:
        async with resources.maker() as db:
            resources.documented_type_ids = await service.type_ids(db)
    except (sqlalchemy.exc.SQLAlchemyError, OSError) as exc:
        logger.warning("parcel types not read at start error=%r", exc)


def _document_type_ids(app: FastAPI) -> None:
    """`type_id` is documented as one of the existing types: any other integer is refused (422)."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        document = generate()  # built once, then the same dict
        resources: Resources | None = getattr(app.state, "resources", None)
        type_id = document["components"]["schemas"]["PackageCreate"]["properties"]["type_id"]
        if resources is not None and resources.documented_type_ids:
            type_id["enum"] = sorted(resources.documented_type_ids)
        return document

    app.openapi = openapi  # type: ignore[method-assign]

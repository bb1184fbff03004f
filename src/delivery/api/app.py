"""The FastAPI application: resources made in `lifespan`, routers, error handlers."""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from delivery.api import admin, health, packages, sessions, web
from delivery.api.deps import Resources
from delivery.api.errors import register_exception_handlers
from delivery.api.middleware import RequestIdMiddleware
from delivery.broker import amqp_publisher, create_celery
from delivery.config import Settings, get_settings
from delivery.db import create_engine, create_sessionmaker
from delivery.store import create_store

MAX_BODY_SIZE = 64 * 1024


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Each of the API's statements stands alone (reads, and writes of one statement each).
        engine = create_engine(settings, autocommit=True)
        store = create_store(settings)
        celery = create_celery(settings)
        publisher = amqp_publisher(settings)
        app.state.resources = Resources(
            settings=settings,
            engine=engine,
            maker=create_sessionmaker(engine),
            store=store,
            celery=celery,
            publisher=publisher,
        )
        try:
            yield
        finally:
            if publisher is not None:
                await publisher.close()
            celery.close()
            await store.close()
            await engine.dispose()

    app = FastAPI(
        title="Delivery service",
        summary="Registers parcels asynchronously; prices them at the Central Bank of Russia's USD/RUB rate.",
        version="0.1.0",
        lifespan=lifespan,
        max_body_size=MAX_BODY_SIZE,
        openapi_tags=[
            {"name": "sessions", "description": "A customer's session, held in a cookie."},
            {"name": "packages", "description": "Registering parcels and reading them back."},
            {"name": "operators", "description": "Guarded by X-Admin-Token."},
            {"name": "operations", "description": "Health, readiness and metrics."},
        ],
    )
    register_exception_handlers(app)
    app.add_middleware(RequestIdMiddleware)
    for module in (sessions, packages, admin, health, web):
        app.include_router(module.router)
    app.mount("/static", web.static, name="static")
    return app

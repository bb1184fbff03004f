import asyncio
from typing import Any

import anyio.to_thread
from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from sqlalchemy import text

from delivery import deadletters, metrics, service
from delivery.api.deps import Resources, ResourcesDep
from delivery.api.errors import RETRY_AFTER
from delivery.db import utcnow

router = APIRouter(tags=["operations"])

CHECK_TIMEOUT = 3.0


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """200 while the process serves."""
    return {"status": "ok"}


@router.get("/readyz", responses={503: {"description": "Names the services that did not answer"}})
async def readyz(resources: ResourcesDep) -> Any:
    """200 when the database, the key-value store and the broker all answer."""
    names = ("database", "store", "broker")
    results = await asyncio.gather(
        *(_check(probe(resources)) for probe in (_database, _store, _broker)), return_exceptions=False
    )
    checks = dict(zip(names, results, strict=True))
    down = [name for name, ok in checks.items() if ok != "ok"]
    if down:
        return JSONResponse(
            {"detail": f"not ready: {', '.join(down)} unavailable", "checks": checks},
            status_code=503,
            headers=RETRY_AFTER,
        )
    return {"status": "ready", "checks": checks}


@router.get("/metrics", response_class=Response)
async def prometheus_metrics(resources: ResourcesDep) -> Response:
    """Prometheus text format: requests, registrations, retries, the bank, the rate cache, the backlog."""
    dead: deadletters.Summary | None = None
    try:
        async with resources.maker() as db:
            awaiting: int | None = await service.count_awaiting_cost(db)
            dead = await deadletters.summary(db)
    except Exception:
        awaiting = None  # the database is down: /readyz says so; the other metrics still serve
    body, content_type = metrics.render(awaiting, dead_letters=_dead_letters(dead))
    return Response(body, media_type=content_type)


def _dead_letters(dead: deadletters.Summary | None) -> tuple[int, float] | None:
    """The dead letters' count and the age of the oldest in seconds (0 with none)."""
    if dead is None:
        return None
    age = 0.0 if dead.oldest_at is None else max((utcnow() - dead.oldest_at).total_seconds(), 0.0)
    return dead.count, age


async def _check(probe: Any) -> str:
    try:
        await asyncio.wait_for(probe, CHECK_TIMEOUT)
    except Exception:
        return "unavailable"
    return "ok"


async def _database(resources: Resources) -> None:
    async with resources.engine.connect() as connection:
        await connection.execute(text("SELECT 1"))


async def _store(resources: Resources) -> None:
    await resources.store.ping()


async def _broker(resources: Resources) -> None:
    def connect() -> None:
        with resources.celery.connection_for_write() as connection:
            connection.ensure_connection(max_retries=1, timeout=int(CHECK_TIMEOUT))

    await anyio.to_thread.run_sync(connect, abandon_on_cancel=True)

"""Helpers for the registration tests: a valid body, following a status, the expected cost, the store."""

import asyncio
import json
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from datetime import date, datetime
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

import diskcache
import httpx
import redis.asyncio as aioredis
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from delivery.config import EMBEDDED_DIR, Settings
from delivery.models import Package
from tests.fakebank import FIXTURES

Json = dict[str, Any]
Maker = async_sessionmaker[AsyncSession]

POLL = 0.05


def valid_body(**overrides: Any) -> Json:
    """The contract's example body, with some fields replaced."""
    return {
        "name": "Winter jacket",
        "weight_kg": "1.25",
        "type_id": 1,
        "content_value_usd": "120",
    } | overrides


async def register(client: httpx.AsyncClient, body: Json | None = None, **headers: str) -> str:
    """POST a registration that must be accepted; its status URL."""
    response = await client.post(
        "/packages/", json=body if body is not None else valid_body(), headers=headers
    )
    assert response.status_code == 202, response.text
    location: str = response.headers["Location"]
    return location


async def wait_done(client: httpx.AsyncClient, location: str, limit: float = 30.0) -> Json:
    """Poll a status URL until the registration is done; its last status."""
    deadline = time.monotonic() + limit
    while True:
        response = await client.get(location)
        assert response.status_code == 200, response.text
        status: Json = response.json()
        if status["done"]:
            return status
        if time.monotonic() > deadline:
            raise AssertionError(f"registration not done after {limit}s: {status}")
        await asyncio.sleep(POLL)


async def wait_all_done(
    client: httpx.AsyncClient, locations: Sequence[str], limit: float = 30.0
) -> list[Json]:
    return list(await asyncio.gather(*(wait_done(client, location, limit) for location in locations)))


async def wait_until(
    check: Callable[[], Awaitable[bool]] | Callable[[], bool], limit: float = 30.0, what: str = "condition"
) -> float:
    """Poll until `check()` is true; the seconds it took."""
    started = time.monotonic()
    while True:
        outcome = check()
        if not isinstance(outcome, bool):
            outcome = await outcome
        if outcome:
            return time.monotonic() - started
        if time.monotonic() - started > limit:
            raise AssertionError(f"{what}: not reached after {limit}s")
        await asyncio.sleep(POLL)


def status_id_of(location: str) -> str:
    return location.rstrip("/").rsplit("/", 1)[-1]


# --- the bank's rate and the expected cost ---


def fixture_rate(fixture: str = "daily_json.js") -> tuple[Decimal, date]:
    """USD/RUB (`Value / Nominal`) and the rate's date, read from the file the fake bank serves."""
    data = json.loads(
        (FIXTURES / fixture).read_text(encoding="utf-8"), parse_float=Decimal, parse_int=Decimal
    )
    usd = data["Valute"]["USD"]
    return Decimal(usd["Value"]) / Decimal(usd["Nominal"]), datetime.fromisoformat(data["Date"]).date()


def expected_cost(weight_kg: str | Decimal, value_usd: str | Decimal, usd_rub: Decimal) -> str:
    """The contract's formula, as the API's string: (weight * 0.5 + value * 0.01) * rate, half-up to 0.01."""
    cost = (Decimal(weight_kg) * Decimal("0.5") + Decimal(value_usd) * Decimal("0.01")) * usd_rub
    return str(cost.quantize(Decimal("0.01"), rounding=ROUND_HALF_UP))


# --- the database and the store, looked at from outside the service ---


async def packages_by_registration(maker: Maker) -> dict[uuid.UUID, list[Package]]:
    """Every package row, grouped by its registration id (a list longer than one is a duplicate)."""
    async with maker() as db:
        rows = (await db.scalars(select(Package).order_by(Package.id))).all()
    grouped: dict[uuid.UUID, list[Package]] = {}
    for row in rows:
        grouped.setdefault(row.registration_id, []).append(row)
    return grouped


async def package_count(maker: Maker) -> int:
    return sum(len(rows) for rows in (await packages_by_registration(maker)).values())


async def store_keys(settings: Settings, prefix: str) -> list[str]:
    """The keys of the status store (Redis or the embedded diskcache) that start with `prefix`."""
    if settings.REDIS_URL is None:

        def scan() -> list[str]:
            cache = diskcache.Cache(str((EMBEDDED_DIR / "store").resolve()))
            try:
                return [key for key in cache.iterkeys() if isinstance(key, str) and key.startswith(prefix)]
            finally:
                cache.close()

        return await asyncio.to_thread(scan)
    client = aioredis.Redis.from_url(str(settings.REDIS_URL), decode_responses=True)
    try:
        return [key async for key in client.scan_iter(match=f"{prefix}*")]
    finally:
        await client.aclose()


def batches_taken(log: str) -> list[tuple[int, set[str]]]:
    """The registration batches a worker's log says its pool processes took: (pid, registration ids)."""
    taken = []
    for line in log.splitlines():
        if "registration batch taken" not in line:
            continue
        fields = dict(part.split("=", 1) for part in line.split() if "=" in part)
        pid = int(fields["pid"].strip('",'))
        taken.append((pid, set(fields["registration_ids"].strip('",').split(","))))
    return taken


def received_ids(log: str) -> set[str]:
    """The registration ids a worker's log says its pool processes took."""
    return {registration_id for _, ids in batches_taken(log) for registration_id in ids}

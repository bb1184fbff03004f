"""A burst of registrations from many clients, as a careful client sends them, and what became of it.

Each registration carries an `Idempotency-Key`; a `503` is retried with the same key (after a shortened pause:
the `Retry-After` the API gives is for people, the burst has a time budget), so every registration is
accepted in the end, exactly once, whatever was down when it was first sent.
"""

import asyncio
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from decimal import Decimal

import httpx

from tests.helpers import Json, Maker, expected_cost, fixture_rate, packages_by_registration, wait_until
from tests.stack import ApiProcess

SIZE = 1000
CONCURRENCY = 32
SESSIONS = 8
#: How long a refused registration waits before it is sent again.
RETRY_PAUSE = 0.2
#: A registration still refused after this long fails the burst.
GIVE_UP_AFTER = 120.0
#: The most a burst may take to be registered after its last 202 (the worker catching up after a fault).
SETTLE_LIMIT = 180.0
STATUS_CONCURRENCY = 16


def body(index: int) -> Json:
    """A distinct parcel per index: weights from 0.001 kg, values with cents, all three types."""
    weight = Decimal(index % 400 * 37 + 1) / 1000
    value = Decimal(index * 7919 % 100_000) / 100
    return {
        "name": f"burst parcel {index}",
        "weight_kg": str(weight),
        "type_id": index % 3 + 1,
        "content_value_usd": str(value),
    }


@dataclass
class Burst:
    """What the API answered: the accepted registrations and every refusal on the way."""

    #: status_id -> (the cookie of the session that sent it, the body sent)
    accepted: dict[str, tuple[str, Json]] = field(default_factory=dict)
    #: Status codes answered, every attempt counted (202 once per registration).
    answers: Counter[int] = field(default_factory=Counter)
    #: Answers a client must never see: a 5xx other than 503, a 503 without Retry-After, a failed connection.
    broken: list[str] = field(default_factory=list)
    #: When the first and the last registration were accepted (monotonic clock).
    first_accepted: float = 0.0
    last_accepted: float = 0.0
    #: Per registration, from its first POST to its 202: the longest wait of a client.
    longest_wait: float = 0.0

    @property
    def refused(self) -> int:
        return self.answers[503]


async def open_sessions(base_url: str, count: int = SESSIONS) -> list[str]:
    """The session cookies of `count` new customers."""
    async with httpx.AsyncClient(base_url=base_url) as client:
        cookies = []
        for _ in range(count):
            response = await client.get("/sessions/new/")
            assert response.status_code == 204, response.text
            cookies.append(response.cookies["session_id"])
        return cookies


async def send_burst(
    base_url: str,
    cookies: list[str],
    *,
    size: int = SIZE,
    concurrency: int = CONCURRENCY,
    on_accepted: Callable[[int], Awaitable[None]] | None = None,
) -> Burst:
    """POST `size` registrations over `concurrency` connections; `on_accepted(n)` awaited after each 202."""
    burst = Burst()
    indexes = iter(range(size))
    # Idle connections are dropped before uvicorn's keep-alive timeout (5 s) can close them under a request.
    limits = httpx.Limits(
        max_connections=concurrency, max_keepalive_connections=concurrency, keepalive_expiry=2.0
    )
    timeout = httpx.Timeout(30.0)

    async def register(client: httpx.AsyncClient, index: int) -> None:
        cookie = cookies[index % len(cookies)]
        payload = body(index)
        headers = {"Idempotency-Key": f"burst-{index}", "Cookie": f"session_id={cookie}"}
        started = time.monotonic()
        while True:
            try:
                response = await client.post("/packages/", json=payload, headers=headers)
            except httpx.TransportError as exc:
                burst.broken.append(f"registration {index}: {exc!r}")
                return
            burst.answers[response.status_code] += 1
            if response.status_code == 202:
                now = time.monotonic()
                burst.accepted[response.json()["status_id"]] = (cookie, payload)
                burst.first_accepted = burst.first_accepted or now
                burst.last_accepted = now
                burst.longest_wait = max(burst.longest_wait, now - started)
                if on_accepted is not None:
                    await on_accepted(len(burst.accepted))
                return
            if response.status_code != 503 or int(response.headers.get("Retry-After", "0")) <= 0:
                burst.broken.append(f"registration {index}: {response.status_code} {response.text[:300]}")
                return
            if time.monotonic() - started > GIVE_UP_AFTER:
                burst.broken.append(f"registration {index}: still 503 after {GIVE_UP_AFTER:.0f}s")
                return
            await asyncio.sleep(RETRY_PAUSE)

    async def connection(client: httpx.AsyncClient) -> None:
        for index in indexes:
            await register(client, index)

    async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=timeout) as client:
        await asyncio.gather(*(connection(client) for _ in range(concurrency)))
    return burst


async def registered_exactly_once(
    burst: Burst,
    api: ApiProcess,
    maker: Maker,
    *,
    priced: bool,
    statuses: bool = True,
    limit: float = SETTLE_LIMIT,
) -> float:
    """Every accepted registration ends `registered`, once, with the exact cost (or none, if not `priced`).

    With `statuses`, each client also reads `registered` and its package id at its status URL.

    Returns the seconds it took, after the burst, for the last row to appear.
    """
    assert not burst.broken, burst.broken[:10]
    unhandled = [
        line
        for line in api.log().splitlines()
        if "unhandled error" in line or "Exception in ASGI application" in line
    ]
    assert not unhandled, unhandled[:3]
    assert len(burst.accepted) == SIZE
    accepted = set(burst.accepted)

    async def all_rows() -> bool:
        return accepted <= {str(r) for r in await packages_by_registration(maker)}

    took = await wait_until(all_rows, limit, "every accepted registration has its package")
    await asyncio.sleep(1.0)  # a duplicate, had there been one on its way, would be in by now
    rows = await packages_by_registration(maker)
    # A registration id is unique in the table: one row per id. A duplicate would be a row whose id was never
    # answered 202 (a refused attempt that reached the queue after all, under an id of its own).
    assert {str(r) for r in rows} == accepted, "a package without an accepted registration"

    rate, rate_date = fixture_rate()
    for registration_id, (package,) in rows.items():
        sent = burst.accepted[str(registration_id)][1]
        assert package.name == sent["name"]
        assert package.weight_kg == Decimal(sent["weight_kg"])
        assert package.type_id == sent["type_id"]
        if priced:
            expected = expected_cost(sent["weight_kg"], sent["content_value_usd"], rate)
            assert str(package.delivery_cost_rub) == expected, (registration_id, sent)
            assert package.usd_rub_rate == rate and package.rate_date == rate_date
        else:
            assert package.delivery_cost_rub is None, (registration_id, sent)

    if statuses:
        await statuses_registered(burst, api, {str(r): group[0].id for r, group in rows.items()})
    return took


async def statuses_registered(burst: Burst, api: ApiProcess, package_ids: dict[str, int]) -> None:
    """What each client sees: its registration's status is `registered`, with its package."""
    gate = asyncio.Semaphore(STATUS_CONCURRENCY)

    async def check(client: httpx.AsyncClient, status_id: str, cookie: str) -> None:
        async with gate:
            response = await client.get(
                f"/packages/status/{status_id}/", headers={"Cookie": f"session_id={cookie}"}
            )
        assert response.status_code == 200, (status_id, response.text)
        status = response.json()
        assert status["state"] == "registered", status
        assert status["package_id"] == package_ids[status_id], status

    async with httpx.AsyncClient(base_url=api.url, timeout=30) as client:
        await asyncio.gather(
            *(check(client, status_id, cookie) for status_id, (cookie, _) in burst.accepted.items())
        )

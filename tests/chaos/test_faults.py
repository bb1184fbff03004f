"""Faults during bursts of 1,000 registrations, on the real MariaDB, Redis and RabbitMQ of this machine.

After each burst: every registration answered 202 is `registered` exactly once (the rows are the accepted
registration ids, no more, no fewer), its cost is exact to the kopeck, and while a service was down the API
answered 503 with Retry-After, never a 500. `make chaos` runs these, one at a time (they restart services).
"""

import asyncio
import time
from collections.abc import Awaitable, Callable
from decimal import Decimal
from pathlib import Path

import httpx
import pytest

from delivery.broker import PUBLISH_TIMEOUT
from delivery.rates import FAILURE_TTL
from realstack import machine
from tests.chaos.burst import SIZE, Burst, open_sessions, send_burst
from tests.fakebank import FakeBank, Mode
from tests.helpers import Maker, expected_cost, fixture_rate, packages_by_registration, wait_until
from tests.stack import ApiProcess, Stack, WorkerProcess

#: The most a burst may take to be registered after its last 202 (the worker catching up after a fault).
SETTLE_LIMIT = 180.0
STATUS_CONCURRENCY = 16


def report(fault: str, burst: Burst, **figures: object) -> None:
    """One line per fault for the log of `make chaos` (the README's reliability table is made of them)."""
    extra = " ".join(f"{key}={value}" for key, value in figures.items())
    accepting = burst.last_accepted - burst.first_accepted
    print(
        f"\nchaos {fault}: accepted={len(burst.accepted)} in {accepting:.1f}s "
        f"refused_503={burst.refused} "
        f"answers={dict(burst.answers)} longest_wait_s={burst.longest_wait:.1f} {extra}"
    )


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


def fault_at(
    count: int, fault: Callable[[], None]
) -> tuple[Callable[[int], Awaitable[None]], list[asyncio.Task[None]]]:
    """An `on_accepted` callback that starts `fault` (in a thread) once `count` registrations are accepted."""
    started: list[asyncio.Task[None]] = []

    async def on_accepted(accepted: int) -> None:
        if accepted == count:
            started.append(asyncio.create_task(asyncio.to_thread(fault)))

    return on_accepted, started


async def burst_with_fault(api: ApiProcess, fault: Callable[[], None], *, at: int = 200) -> Burst:
    cookies = await open_sessions(api.url)
    on_accepted, started = fault_at(at, fault)
    burst = await send_burst(api.url, cookies, on_accepted=on_accepted)
    assert started, "the fault never started"
    await asyncio.gather(*started)
    return burst


# --- a worker dies ---


async def test_worker_killed_mid_burst_and_started_again(
    api: ApiProcess, worker: WorkerProcess, stack: Stack, maker: Maker
) -> None:
    replacement: list[WorkerProcess] = []

    def kill_and_restart() -> None:
        time.sleep(1.0)  # jobs in hand and more queued
        worker.kill()
        time.sleep(1.0)  # down for a moment: the burst keeps coming
        replacement.append(WorkerProcess(stack).start())

    try:
        burst = await burst_with_fault(api, kill_and_restart, at=300)
        assert burst.refused == 0, "the API needs no worker to accept"
        took = await registered_exactly_once(burst, api, maker, priced=True)
    finally:
        for process in replacement:
            process.stop()
    report("worker SIGKILL", burst, settled_after_s=f"{took:.1f}")


# --- a backing service restarts ---


def down_for(stop: Callable[[], None], start: Callable[[], None], seconds: float) -> Callable[[], None]:
    def fault() -> None:
        stop()
        time.sleep(seconds)
        start()

    return fault


SERVICE_FAULTS = {
    "rabbitmq-restart": down_for(machine.stop_rabbitmq, machine.start_rabbitmq, 1.0),
    "redis-restart": down_for(machine.stop_redis, machine.start_redis, 2.0),
    "mariadb-down-5s": down_for(machine.stop_mariadb, machine.start_mariadb, 5.0),
}


@pytest.mark.parametrize("fault", list(SERVICE_FAULTS))
async def test_service_restarted_mid_burst(
    fault: str, api: ApiProcess, worker: WorkerProcess, maker: Maker
) -> None:
    burst = await burst_with_fault(api, SERVICE_FAULTS[fault])
    assert burst.refused > 0, "the burst never met the service down"
    took = await registered_exactly_once(burst, api, maker, priced=True)
    assert worker.alive(), worker.log()[-4000:]
    report(fault, burst, settled_after_s=f"{took:.1f}")


# --- the bank misbehaves for a whole burst, then comes back ---


@pytest.mark.parametrize("mode", ["error", "hang", "html", "truncated", "zero_rate", "no_usd"])
async def test_bank_failing_the_whole_burst(
    mode: Mode,
    api: ApiProcess,
    worker: WorkerProcess,
    bank: FakeBank,
    maker: Maker,
    beat: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """All registered without a cost while the bank fails; the periodic job prices them once it is back."""
    monkeypatch.setattr(bank, "hang_seconds", 6.0)  # past the client's 5 s timeout
    bank.mode = mode
    cookies = await open_sessions(api.url)
    burst = await send_burst(api.url, cookies)
    assert burst.refused == 0
    took = await registered_exactly_once(burst, api, maker, priced=False, statuses=False)
    failed_requests = bank.requests
    assert failed_requests >= 1

    bank.mode = "ok"
    await asyncio.sleep(FAILURE_TTL)

    async def all_priced() -> bool:
        rows = await packages_by_registration(maker)
        return all(group[0].delivery_cost_rub is not None for group in rows.values())

    priced_after = await wait_until(all_priced, 60, "the periodic job priced every package")
    await registered_exactly_once(burst, api, maker, priced=True)
    report(
        f"bank {mode}",
        burst,
        settled_after_s=f"{took:.1f}",
        bank_requests_while_failing=failed_requests,
        priced_after_s=f"{priced_after:.1f}",
    )


async def test_broker_blocking_publishers_is_503_within_the_publish_timeout(
    stack: Stack, api: ApiProcess, worker: WorkerProcess, maker: Maker
) -> None:
    """RabbitMQ's memory alarm blocks publishers: a registration is answered 503 + Retry-After within the
    publish timeout (not left hanging), and is accepted and registered once the alarm clears."""
    (cookie,) = await open_sessions(api.url, 1)
    payload = {"name": "Blocked", "weight_kg": "2.000", "type_id": 1, "content_value_usd": "10.00"}
    async with httpx.AsyncClient(base_url=api.url, cookies={"session_id": cookie}, timeout=60) as client:
        warm = await client.post("/packages/", json=payload)  # the publisher's connection is open
        assert warm.status_code == 202, warm.text
        machine.block_publishers()
        try:
            started = time.monotonic()
            blocked = await client.post("/packages/", json=payload, headers={"Idempotency-Key": "blocked"})
            took = time.monotonic() - started
        finally:
            machine.unblock_publishers()
        print(f"\nchaos publishers blocked: answered {blocked.status_code} in {took:.2f}s")
        assert blocked.status_code == 503, blocked.text
        assert int(blocked.headers["Retry-After"]) > 0
        assert took <= PUBLISH_TIMEOUT + 2.0
        health = await client.get("/healthz")
        assert health.status_code == 200
        again = await client.post("/packages/", json=payload, headers={"Idempotency-Key": "blocked"})
        assert again.status_code == 202, again.text
        locations = [warm.headers["Location"], again.headers["Location"]]
        for location in locations:
            await wait_until(lambda loc=location: _registered(client, loc), 60, "registered after the alarm")
    rows = await packages_by_registration(maker)
    assert sorted(len(group) for group in rows.values()) == [1, 1]


async def _registered(client: httpx.AsyncClient, location: str) -> bool:
    response = await client.get(location)
    return response.status_code == 200 and response.json()["state"] == "registered"

"""Faults during bursts of 1,000 registrations, on the real MariaDB, Redis and RabbitMQ of this machine.

After each burst: every registration answered 202 is `registered` exactly once (the rows are the accepted
registration ids, no more, no fewer), its cost is exact to the kopeck, and while a service was down the API
answered 503 with Retry-After, never a 500. `make chaos` runs these, one at a time (they restart services).
"""

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
import pytest

from delivery.broker import PUBLISH_TIMEOUT
from delivery.rates import FAILURE_TTL
from realstack import machine
from tests.chaos.burst import Burst, open_sessions, registered_exactly_once, send_burst
from tests.fakebank import FakeBank, Mode
from tests.helpers import Maker, packages_by_registration, wait_until
from tests.stack import ApiProcess, Stack, WorkerProcess


def report(fault: str, burst: Burst, **figures: object) -> None:
    """One line per fault for the log of `make chaos` (the README's reliability table is made of them)."""
    extra = " ".join(f"{key}={value}" for key, value in figures.items())
    accepting = burst.last_accepted - burst.first_accepted
    print(
        f"\nchaos {fault}: accepted={len(burst.accepted)} in {accepting:.1f}s "
        f"refused_503={burst.refused} "
        f"answers={dict(burst.answers)} longest_wait_s={burst.longest_wait:.1f} {extra}"
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


#: service -> how to stop it, how to start it again, and for how long it stays down.
SERVICE_FAULTS: dict[str, tuple[Callable[[], None], Callable[[], None], float]] = {
    "rabbitmq-restart": (machine.stop_rabbitmq, machine.start_rabbitmq, 1.0),
    "redis-restart": (machine.stop_redis, machine.start_redis, 2.0),
    "mariadb-down-5s": (machine.stop_mariadb, machine.start_mariadb, 5.0),
}

#: After a service came back, the burst's last package is written within this many seconds.
SETTLED_WITHIN = 20.0

PROBE = {"name": "Probe", "weight_kg": "1.000", "type_id": 1, "content_value_usd": "1.00"}


@pytest.mark.parametrize("fault", list(SERVICE_FAULTS))
async def test_service_restarted_mid_burst(
    fault: str, api: ApiProcess, worker: WorkerProcess, maker: Maker
) -> None:
    """The service stopped mid-burst. While it is down, a registration from a session the API has not seen
    yet (so it needs the database, the store and the broker) is answered 503; the burst's own requests may
    still be accepted while it is down (a cached session needs no database to be accepted)."""
    stop, start, seconds = SERVICE_FAULTS[fault]
    (probe_cookie,) = await open_sessions(api.url, 1)
    probed: list[httpx.Response] = []

    def outage() -> None:
        stop()
        try:
            probed.append(
                httpx.post(
                    f"{api.url}/packages/",
                    json=PROBE,
                    cookies={"session_id": probe_cookie},
                    timeout=PUBLISH_TIMEOUT + 10,
                )
            )
            time.sleep(seconds)
        finally:
            start()

    burst = await burst_with_fault(api, outage)
    (probe,) = probed
    assert probe.status_code == 503, probe.text
    assert int(probe.headers["Retry-After"]) > 0
    took = await registered_exactly_once(burst, api, maker, priced=True)
    assert worker.alive(), worker.log()[-4000:]
    report(fault, burst, settled_after_s=f"{took:.1f}")
    # The jobs that failed while the service was away are retried as soon as it answers again, not after
    # the backoff they had grown meanwhile (up to a minute).
    assert took < SETTLED_WITHIN, took


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

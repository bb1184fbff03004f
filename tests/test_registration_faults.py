"""Registration when things go wrong: the bank down, many jobs at once, killed workers, store or broker down.

What a client relies on throughout: a registration that was accepted (202) ends `registered` exactly once,
and one that was refused (503) left nothing behind.
"""

import asyncio
import os
import signal
import time
import uuid
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path

import httpx
import pytest
from pydantic import AnyUrl

from delivery.broker import RECOVER_TASK, create_celery, queued_registrations
from delivery.config import Settings
from delivery.rates import FAILURE_TTL, LOCK_KEY
from delivery.store import create_store
from tests.factories import add_package, app_client, open_session, use_session
from tests.fakebank import FakeBank, Mode
from tests.helpers import (
    Json,
    Maker,
    batches_taken,
    expected_cost,
    fixture_rate,
    package_count,
    packages_by_registration,
    received_ids,
    register,
    status_id_of,
    store_keys,
    valid_body,
    wait_all_done,
    wait_done,
    wait_until,
)
from tests.stack import Stack, WorkerProcess

CLOSED_BROKER = "amqp://guest:guest@127.0.0.1:1//"
CLOSED_REDIS = "redis://127.0.0.1:1/0"
#: A refused request must be answered this fast (broker connect timeout 3 s, publish tried 3 times).
REFUSAL_WITHIN = 10.0


def _expected(weight: str = "1.25", value: str = "120") -> str:
    return expected_cost(weight, value, fixture_rate()[0])


async def _cost(client: httpx.AsyncClient, package_id: int) -> str | None:
    response = await client.get(f"/packages/{package_id}/")
    assert response.status_code == 200, response.text
    cost: str | None = response.json()["delivery_cost_rub"]
    return cost


async def _run_pricing_job(client: httpx.AsyncClient, admin_headers: dict[str, str]) -> Json:
    """POST the operator's pricing job and follow it to its end; its final state."""
    response = await client.post("/admin/jobs/price-packages/", headers=admin_headers)
    assert response.status_code == 202, response.text
    task_id = response.json()["task_id"]
    state: Json = {}

    async def finished() -> bool:
        nonlocal state
        answer = await client.get(f"/admin/jobs/{task_id}/", headers=admin_headers)
        assert answer.status_code == 200, answer.text
        state = answer.json()
        return state["state"] in ("SUCCESS", "FAILURE")

    await wait_until(finished, 30, "pricing job finished")
    assert state["task_id"] == task_id
    return state


# --- the bank down: registered without a cost, priced later ---


@pytest.mark.parametrize("mode", ["error", "hang", "html"])
async def test_bank_outage_registers_without_cost_then_pricing_job_prices_it(
    customer: httpx.AsyncClient,
    worker: WorkerProcess,
    bank: FakeBank,
    admin_headers: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    mode: Mode,
) -> None:
    monkeypatch.setattr(bank, "hang_seconds", 6.0)  # longer than the worker's read timeout, shorter than 30 s
    bank.mode = mode
    started = time.monotonic()
    location = await register(customer)
    status = await wait_done(customer, location, limit=30)
    print(f"bank {mode}: registered without a cost after {time.monotonic() - started:.1f}s")
    assert status["state"] == "registered" and not status["error"], status
    package_id = status["package_id"]
    assert await _cost(customer, package_id) is None
    assert bank.requests >= 1

    bank.mode = "ok"
    # The rate cache remembers a failed fetch for FAILURE_TTL seconds, so that waiting jobs give up together.
    await asyncio.sleep(FAILURE_TTL)
    job = await _run_pricing_job(customer, admin_headers)
    assert job == {"task_id": job["task_id"], "state": "SUCCESS", "result": {"priced": 1}, "error": None}
    assert await _cost(customer, package_id) == _expected()
    again = await _run_pricing_job(customer, admin_headers)
    assert again["result"] == {"priced": 0}


async def test_beat_prices_packages_without_a_cost(
    customer: httpx.AsyncClient, worker: WorkerProcess, maker: Maker, beat: Path
) -> None:
    session_id = await open_session(customer)
    first = await add_package(
        maker, session_id=session_id, weight_kg=Decimal("2.5"), content_value_usd=Decimal("10")
    )
    assert await _cost(customer, first) is None

    async def priced(package_id: int) -> bool:
        return await _cost(customer, package_id) is not None

    took = await wait_until(lambda: priced(first), 30, "beat priced the package")
    print(f"beat priced a package {took:.1f}s after it was inserted")
    assert await _cost(customer, first) == _expected("2.5", "10")
    # Periodic: a package that lost its cost later is priced by a later run, still with no one asking.
    second = await add_package(
        maker, session_id=session_id, weight_kg=Decimal("0.001"), content_value_usd=Decimal("0")
    )
    await wait_until(lambda: priced(second), 30, "beat priced the second package")
    assert await _cost(customer, second) == _expected("0.001", "0")
    assert "Sending due task price-pending-packages" in await asyncio.to_thread(
        beat.read_text, errors="replace"
    )


# --- one fetch of the rate, whatever the concurrency ---


async def test_single_flight_across_worker_processes(
    customer: httpx.AsyncClient, start_worker: Callable[..., WorkerProcess], bank: FakeBank, maker: Maker
) -> None:
    own = start_worker(concurrency=4).start()
    bank.delay = 1.0  # the cache is cold: every job wants the rate while the first fetch is under way
    try:
        locations = await asyncio.gather(*(register(customer) for _ in range(64)))
        statuses = await wait_all_done(customer, locations, limit=30)
    finally:
        # SIGKILL is instant; an embedded worker given SIGTERM on its whole group takes 20 s to stop.
        if own.alive():
            own.kill()
    assert {s["state"] for s in statuses} == {"registered"}
    assert bank.requests == 1
    rows = await packages_by_registration(maker)
    assert len(rows) == 64 and all(len(group) == 1 for group in rows.values())
    assert {str(group[0].delivery_cost_rub) for group in rows.values()} == {_expected()}


# --- workers killed mid-job ---


async def _kill_pool_mid_job(
    customer: httpx.AsyncClient,
    worker: WorkerProcess,
    bank: FakeBank,
    maker: Maker,
    settings: Settings,
) -> None:
    """Kill the pool process running a registration while the job waits for the bank; the registration
    must still end `registered`, with one package."""
    log_from = len(worker.log())
    bank.delay = 3.0  # the job sits in its bank request, cache cold, when its process dies
    location = await register(customer)
    status_id = status_id_of(location)
    running: list[int] = []

    def started() -> bool:
        # The pool process logs the batch it takes, with its pid.
        for pid, ids in batches_taken(worker.log()[log_from:]):
            if status_id in ids and pid in worker.pool_pids():
                running[:] = [pid]
        return bool(running)

    await wait_until(started, 15, "job started in a pool process")
    await wait_until(lambda: bank.requests >= 1, 15, "the job asked the bank")
    victims = running
    killed_at = time.monotonic()
    for pid in victims:
        os.kill(pid, signal.SIGKILL)
    bank.delay = 0.0

    try:
        # Redelivery waits for Celery's worker_lost_wait (10 s), the job for the dead one's rate lock (15 s).
        # Both together come to about 25 s: wait well past that, the assertion is about the outcome.
        status = await wait_done(customer, location, limit=45)
    except AssertionError:
        if worker.stack.name == "real":
            worker.kill()  # do not leave a wedged worker to the tests that follow
            raise
        # kombu's SQLAlchemy transport (the embedded broker) can fail to put the dead process's message back
        # ("UNABLE TO RESTORE ... UNIQUE constraint failed"), and its worker may stop on it. The status still
        # holds the job: the recovery job publishes it again (run here at once, not after its grace period).
        print("embedded broker lost the killed job's message: recovered from its status")
        if worker.alive():
            worker.kill()  # it may be wedged on the transport's broken session: a fresh one takes over
        worker.stack.stop_shared_worker()
        worker.stack.shared_worker()
        recovery = create_celery(settings)
        try:
            recovery.send_task(RECOVER_TASK, kwargs={"older_than": 0})
        finally:
            recovery.close()
        status = await wait_done(customer, location, limit=45)
    took = time.monotonic() - killed_at
    print(f"killed {len(victims)} pool process(es): registered {took:.1f}s after the kill")
    assert status["state"] == "registered", status
    assert f"pid:{running[0]} exited with 'signal 9 (SIGKILL)'" in worker.log()[log_from:]
    await asyncio.sleep(0.5)  # a duplicate run, had there been one, would be done by now
    rows = await packages_by_registration(maker)
    assert list(rows) == [uuid.UUID(status_id)]
    (row,) = rows[uuid.UUID(status_id)]
    assert row.id == status["package_id"]
    assert await _cost(customer, row.id) == _expected()


async def test_pool_process_killed_mid_job_registers_once(
    customer: httpx.AsyncClient, worker: WorkerProcess, bank: FakeBank, maker: Maker, settings: Settings
) -> None:
    await _kill_pool_mid_job(customer, worker, bank, maker, settings)


async def test_worker_killed_mid_burst(
    customer: httpx.AsyncClient, worker: WorkerProcess, stack: Stack, bank: FakeBank, maker: Maker
) -> None:
    """SIGKILL to the whole worker while it holds jobs; a new worker finishes the burst, exactly once.

    RabbitMQ redelivers the messages the dead worker had not acknowledged. kombu's SQLAlchemy transport
    (the embedded broker) does not: the jobs the killed worker held stay `pending` until the recovery job
    publishes them again from their statuses — run here at once instead of after its grace period.
    """
    log_from = len(worker.log())
    # Holding the rate lock keeps every job waiting inside its pool process, so the kill lands mid-job
    # with its batches in the pool and the rest prefetched or queued.
    store = create_store(stack.settings)
    assert await store.add(LOCK_KEY, "held-by-the-test", ttl=6.0)
    await store.close()
    locations = await asyncio.gather(*(register(customer, valid_body(name=f"parcel {i}")) for i in range(20)))
    ids = {status_id_of(location) for location in locations}

    def taken() -> set[str]:
        return received_ids(worker.log()[log_from:]) & ids

    await wait_until(lambda: len(taken()) >= 2, 20, "the worker took jobs")
    assert bank.requests == 0, "no job got past the rate lock before the kill"
    worker.kill()
    stack.shared_worker()  # a new worker (also the shared one of the tests that follow)

    celery = create_celery(stack.settings)
    try:
        # Whatever the killed worker held is lost on the embedded broker (it does not redeliver), and may be
        # more than the batches it logged: it prefetches. Those stay pending, never half-done, until the
        # recovery job publishes them again from their statuses. It waits for the queue to drain first: a
        # job still queued may be one of them.
        await wait_until(lambda: queued_registrations(celery) == 0, 45, "the queue drained")
        if stack.name != "real":
            for location in locations:
                status = (await customer.get(location)).json()
                assert status["state"] in ("pending", "registered"), status
        celery.send_task(RECOVER_TASK, kwargs={"older_than": 0})
    finally:
        celery.close()
    expected_done = locations
    statuses = await wait_all_done(customer, expected_done, limit=45)
    assert {s["state"] for s in statuses} == {"registered"}
    await asyncio.sleep(0.5)  # a duplicate run, had there been one, would be done by now
    rows = await packages_by_registration(maker)
    assert all(len(group) == 1 for group in rows.values()), "a registration created two packages"
    assert {str(registration_id) for registration_id in rows} == {status_id_of(loc) for loc in expected_done}
    assert {group[0].id for group in rows.values()} == {s["package_id"] for s in statuses}


# --- the store or the broker down: 503, and nothing half-done ---


async def test_broker_down_is_503_and_leaves_nothing(
    customer: httpx.AsyncClient, worker: WorkerProcess, settings: Settings, maker: Maker
) -> None:
    down_settings = settings.model_copy(update={"CELERY_BROKER_URL": AnyUrl(CLOSED_BROKER)})
    headers = {"Idempotency-Key": "try-again-later"}
    async with app_client(down_settings) as down:
        use_session(down, customer.cookies["session_id"])
        started = time.monotonic()
        response = await down.post("/packages/", json=valid_body(), headers=headers)
        elapsed = time.monotonic() - started
    print(f"broker down: {response.status_code} after {elapsed:.2f}s")
    assert response.status_code == 503, response.text
    assert int(response.headers["Retry-After"]) > 0
    assert "Location" not in response.headers
    assert elapsed < REFUSAL_WITHIN
    assert await store_keys(settings, "status:") == []
    assert await store_keys(settings, "idem:") == []

    # The key is free again: the same request, once the broker is back, is a new registration that completes.
    retried = await customer.post("/packages/", json=valid_body(), headers=headers)
    assert retried.status_code == 202, retried.text
    status = await wait_done(customer, retried.headers["Location"])
    assert status["state"] == "registered", status
    assert await package_count(maker) == 1


async def test_store_down_is_503_and_publishes_nothing(
    customer: httpx.AsyncClient, worker: WorkerProcess, settings: Settings, maker: Maker
) -> None:
    down_settings = settings.model_copy(update={"REDIS_URL": AnyUrl(CLOSED_REDIS)})
    async with app_client(down_settings) as down:
        use_session(down, customer.cookies["session_id"])
        started = time.monotonic()
        response = await down.post("/packages/", json=valid_body(), headers={"Idempotency-Key": "k"})
        elapsed = time.monotonic() - started
        plain = await down.post("/packages/", json=valid_body())
        status_read = await down.get(f"/packages/status/{uuid.uuid4()}/")
    print(f"store down: {response.status_code} after {elapsed:.2f}s")
    for answer in (response, plain, status_read):
        assert answer.status_code == 503, answer.text
        assert int(answer.headers["Retry-After"]) > 0
    assert elapsed < REFUSAL_WITHIN

    # Nothing reached the worker: a registration made afterwards is the only package there is.
    location = await register(customer)
    status = await wait_done(customer, location)
    await asyncio.sleep(0.5)
    rows = await packages_by_registration(maker)
    assert list(rows) == [uuid.UUID(status_id_of(location))]
    assert rows[uuid.UUID(status_id_of(location))][0].id == status["package_id"]

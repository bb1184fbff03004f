"""A registration answered 202 is never lost: a job that never reached a worker is published again."""

import asyncio
import time
from decimal import Decimal

import httpx

from delivery import registration
from delivery.broker import REGISTER_TASK, create_celery, queued_registrations
from delivery.registration import (
    PENDING_INDEX,
    RegistrationJob,
    StatusRecord,
    accept_registration,
    status_key,
)
from delivery.schemas import PackageCreate
from delivery.store import create_store
from delivery.worker import recovery_grace
from tests.factories import Maker, open_session
from tests.helpers import packages_by_registration, wait_all_done, wait_until
from tests.stack import Stack, WorkerProcess

BODY = PackageCreate(name="Lost parcel", weight_kg=Decimal("2"), type_id=2, content_value_usd=Decimal("10"))


async def _accept_but_drop(stack: Stack, session_id: int) -> str:
    """Accept a registration whose message is lost on its way to the broker (published nowhere)."""
    store = create_store(stack.settings)

    async def lose(job: RegistrationJob) -> None:
        return None

    status_id = await accept_registration(
        store, lose, session_id=session_id, data=BODY, idempotency_key=None, status_ttl=3600
    )
    await store.close()
    return str(status_id)


async def test_a_lost_job_is_published_again_and_registers_once(
    customer: httpx.AsyncClient, stack: Stack, worker: WorkerProcess, maker: Maker
) -> None:
    session_id = await open_session(customer)
    lost = [await _accept_but_drop(stack, session_id) for _ in range(3)]
    store = create_store(stack.settings)
    celery = create_celery(stack.settings)

    async def publish(job: RegistrationJob) -> None:
        celery.send_task(REGISTER_TASK, args=[job.to_json()], task_id=job.registration_id)

    async def queued() -> int:
        return queued_registrations(celery)

    try:
        # Not yet overdue: nothing is sent.
        assert await registration.recover_pending(store, publish, queued, older_than=3600) == 0
        assert await registration.recover_pending(store, publish, queued, older_than=0) == 3
        statuses = await wait_all_done(customer, [f"/packages/status/{sid}/" for sid in lost])
        # Done registrations leave the index: a second pass has nothing to send.
        assert await registration.recover_pending(store, publish, queued, older_than=0) == 0
    finally:
        celery.close()
        await store.close()
    assert {status["state"] for status in statuses} == {"registered"}
    rows = await packages_by_registration(maker)
    assert sorted(str(registration) for registration in rows) == sorted(lost)
    assert all(len(group) == 1 for group in rows.values())


async def test_a_published_twice_job_still_makes_one_package(
    customer: httpx.AsyncClient, stack: Stack, worker: WorkerProcess, maker: Maker
) -> None:
    response = await customer.post(
        "/packages/", json={"name": "Twice", "weight_kg": "1", "type_id": 1, "content_value_usd": "1"}
    )
    location = response.headers["Location"]
    store = create_store(stack.settings)
    celery = create_celery(stack.settings)

    async def publish(job: RegistrationJob) -> None:
        celery.send_task(REGISTER_TASK, args=[job.to_json()], task_id=job.registration_id)

    def queued_now() -> int:
        return queued_registrations(celery)

    async def queued() -> int:
        return queued_now()

    try:
        await registration.recover_pending(
            store, publish, queued, older_than=0
        )  # races the first delivery, or follows it
        (status,) = await wait_all_done(customer, [location])
        # Both copies delivered and done: the second one's package, had it made one, would be in by now.
        await wait_until(lambda: queued_now() == 0, 30, "the queue empty")
        await asyncio.sleep(1.0)
    finally:
        celery.close()
        await store.close()
    rows = await packages_by_registration(maker)
    assert [len(group) for group in rows.values()] == [1]
    assert status["package_id"] == next(iter(rows.values()))[0].id


async def test_statuses_gone_or_done_leave_the_index(stack: Stack) -> None:
    store = create_store(stack.settings)
    try:
        await store.index_add(PENDING_INDEX, "expired-registration", time.time() - 10)
        done = StatusRecord(1, "registered", package_id=7)
        await store.set(status_key("done-registration"), done.dumps(), ttl=60)
        await store.index_add(PENDING_INDEX, "done-registration", time.time() - 10)
        sent: list[RegistrationJob] = []

        async def publish(job: RegistrationJob) -> None:
            sent.append(job)

        async def queued() -> int:
            return 0

        assert await registration.recover_pending(store, publish, queued, older_than=0) == 0
        assert sent == []
        assert await store.index_below(PENDING_INDEX, time.time() + 1, 10) == []
    finally:
        await store.close()


def test_the_grace_period_outlasts_a_healthy_jobs_retries(stack: Stack) -> None:
    assert recovery_grace(stack.settings) > stack.settings.RATE_RETRY_WINDOW


def test_a_status_record_and_its_job_survive_the_round_trip() -> None:
    job = RegistrationJob("r-1", 7, "Посылка", "1.250", 2, "120.00", 1700000000.5)
    assert RegistrationJob.from_json(job.to_json()) == job
    for record in (
        StatusRecord(7, "pending", job=job.to_json()),
        StatusRecord(7, "registered", package_id=42),
        StatusRecord(7, "failed", error_message="type 9 no longer exists"),
    ):
        assert StatusRecord.loads(record.dumps()) == record

"""The edges of the registration pipeline: a key claimed by a registration that was never stored, recovery
under a backlog, unsupported pools (a job that can never succeed: `test_dead_letters`). Each on both stacks,
with a real worker where a job must run."""

import asyncio
import subprocess
import sys
import time
from collections.abc import Callable
from decimal import Decimal

import httpx
import pytest
import redis.asyncio

from delivery import registration
from delivery.broker import create_celery, publish_registration, queued_registrations
from delivery.errors import ServiceUnavailable
from delivery.registration import (
    PENDING_INDEX,
    RegistrationJob,
    StatusRecord,
    accept_registration,
    claim_key,
    fate_key,
    keyed_registration_id,
    status_key,
)
from delivery.schemas import PackageCreate
from delivery.store import create_store
from tests.factories import Maker, open_session
from tests.helpers import packages_by_registration, wait_done
from tests.stack import Stack, WorkerProcess

BODY = PackageCreate(name="Edge parcel", weight_kg=Decimal("1.5"), type_id=1, content_value_usd=Decimal("40"))


async def test_a_key_claimed_by_a_registration_never_stored_registers_it(
    customer: httpx.AsyncClient, stack: Stack, worker: WorkerProcess, maker: Maker
) -> None:
    """The state a store timeout leaves after the key's claim took effect and nothing else did: the retry
    must store and publish the registration, not answer 202 for one that does not exist."""
    session_id = await open_session(customer)
    key = "claimed-then-timed-out"
    registration_id = keyed_registration_id(session_id, key, BODY)
    store = create_store(stack.settings)
    try:
        await store.set(claim_key(session_id, key), status_key(registration_id), ttl=3600)
    finally:
        await store.close()

    response = await customer.post(
        "/packages/", json=BODY.model_dump(mode="json"), headers={"Idempotency-Key": key}
    )
    assert response.status_code == 202, response.text
    status = await wait_done(customer, response.headers["Location"])
    assert status["state"] == "registered", status
    rows = await packages_by_registration(maker)
    assert [len(group) for group in rows.values()] == [1]


async def test_recovery_leaves_jobs_waiting_in_the_queue_alone(
    stack: Stack, customer: httpx.AsyncClient
) -> None:
    """Under a backlog (no worker here), pending registrations are old but their jobs are queued: recovery
    must not publish duplicates of them, which would multiply with every run."""
    stack.stop_shared_worker()
    session_id = await open_session(customer)
    store = create_store(stack.settings)
    celery = create_celery(stack.settings)

    async def publish(job: RegistrationJob) -> None:
        await asyncio.to_thread(publish_registration, celery, job)

    async def queued() -> int:
        return await asyncio.to_thread(queued_registrations, celery)

    try:
        # Counted from what the queue holds now: a job another test published late may be waiting there.
        before = await queued()
        for _ in range(5):
            await accept_registration(
                store, publish, session_id=session_id, data=BODY, idempotency_key=None, status_ttl=3600
            )
        assert await queued() == before + 5
        assert await registration.recover_pending(store, publish, queued, older_than=0) == 0
        assert await queued() == before + 5
    finally:
        celery.close()
        await store.close()


async def test_a_job_retrying_is_not_taken_for_lost(stack: Stack) -> None:
    """A job marks its registration alive until its next attempt is due: recovery leaves it alone."""
    store = create_store(stack.settings)
    sent: list[RegistrationJob] = []

    async def publish(job: RegistrationJob) -> None:
        sent.append(job)

    async def queued() -> int:
        return 0

    job = RegistrationJob("retrying-registration", 1, "x", "1", 1, "1", time.time() - 3600)
    record = StatusRecord(1, "pending", job=job.to_json())
    try:
        await store.put_pending(
            status_key(job.registration_id),
            record.dumps(),
            ttl=60,
            index=PENDING_INDEX,
            member=job.registration_id,
            score=job.accepted_at,
            fate=fate_key(job.registration_id),
        )
        # What a batch does for a job it will try again in 30 s.
        await store.index_touch(PENDING_INDEX, [job.registration_id], time.time() + 30)
        assert await registration.recover_pending(store, publish, queued, older_than=10) == 0
        assert sent == []
    finally:
        await store.close()


def test_the_thread_pool_is_refused_at_start(stack: Stack) -> None:
    """Threads would share the process's one event loop: refused with a message, not run to lose jobs."""
    command = [sys.executable, "-m", "celery", "-A", "delivery.worker", "worker", "--pool", "threads"]
    result = subprocess.run(
        command,
        env=stack.env(),
        cwd=stack.workdir,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "the thread pool is not supported" in result.stdout + result.stderr


def test_pool_processes_open_their_connections_before_the_first_job(
    stack: Stack, start_worker: Callable[..., WorkerProcess]
) -> None:
    """Each pool process connects to the database and the store when it starts, not at its first batch;
    with the database unreachable it still starts (and says so), the first batch connecting as always."""
    worker = start_worker(concurrency=2).start()
    for pid in worker.pool_pids():
        worker.wait_log(f"pool process warmed up pid={pid} ", 10)

    unreachable = (
        "mysql+asyncmy://root@127.0.0.1:9/none"
        if stack.name == "real"
        else "sqlite+aiosqlite:////proc/none/db"
    )
    down = start_worker(concurrency=1, DATABASE_URL=unreachable).start()
    (pid,) = down.pool_pids()
    down.wait_log(f"pool process not warmed up pid={pid} ", 10)
    assert down.alive()


async def test_concurrent_accepts_with_one_key_make_one_registration(stack: Stack) -> None:
    """Twenty requests at once with one Idempotency-Key (their store calls sent together on Redis): one
    stores the registration, every other is answered with it, and each got an answer of its own."""
    store = create_store(stack.settings)
    record = StatusRecord(1, "pending").dumps()
    claim = claim_key(1, "concurrent")
    try:
        answers = await asyncio.gather(
            *(
                store.put_pending(
                    status_key(f"r{n}"),
                    record,
                    ttl=60,
                    index=PENDING_INDEX,
                    member=f"r{n}",
                    score=float(n),
                    fate=f"fate:r{n}",
                    claim=claim,
                )
                for n in range(20)
            )
        )
        stored = [n for n, held in enumerate(answers) if held is None]
        assert len(stored) == 1
        assert {held for held in answers if held is not None} == {(status_key(f"r{stored[0]}"), record)}
        assert await store.index_below(PENDING_INDEX, 100.0, 100) == [f"r{stored[0]}"]
    finally:
        await store.close()


@pytest.mark.parametrize("stack", ["real"], indirect=True)  # the embedded store has no scripts
async def test_accepting_goes_on_after_redis_forgot_its_scripts(stack: Stack) -> None:
    """Redis restarted (or SCRIPT FLUSH): the script is loaded again and the calls it refused are sent
    again, each answered once."""
    store = create_store(stack.settings)
    assert stack.settings.REDIS_URL is not None
    admin = redis.asyncio.Redis.from_url(str(stack.settings.REDIS_URL))
    try:
        await store.put_pending(
            status_key("warm"), "{}", ttl=60, index=PENDING_INDEX, member="warm", score=0, fate="f"
        )
        await admin.script_flush()
        answers = await asyncio.gather(
            *(
                store.put_pending(
                    status_key(f"s{n}"), "{}", ttl=60, index=PENDING_INDEX, member=f"s{n}", score=1, fate="f"
                )
                for n in range(5)
            )
        )
        assert answers == [None] * 5
        assert [await store.get(status_key(f"s{n}")) for n in range(5)] == ["{}"] * 5
    finally:
        await admin.aclose()
        await store.close()


@pytest.mark.parametrize("stack", ["real"], indirect=True)  # the embedded store sends nothing in groups
async def test_closing_the_store_answers_the_calls_waiting_to_go_out(stack: Stack) -> None:
    """A store closed (the API stopping) while calls wait for their pipeline: each is answered as the store
    being unavailable, none is left waiting."""
    store = create_store(stack.settings)
    waiting = [
        asyncio.create_task(
            store.put_pending(
                status_key(f"c{n}"), "{}", ttl=60, index=PENDING_INDEX, member=f"c{n}", score=0, fate="f"
            )
        )
        for n in range(3)
    ]
    await asyncio.sleep(0)  # queued; their pipeline not sent yet
    await store.close()
    for call in waiting:
        with pytest.raises(ServiceUnavailable):
            await asyncio.wait_for(call, 5)

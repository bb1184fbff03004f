"""A job that cannot succeed stops: tried again alone with a growing delay, then dead-lettered and `failed`,
the rest of its batch registered; operators see the dead letters and send them back after a fix."""

import asyncio
import contextlib
import itertools
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from datetime import datetime
from decimal import Decimal

import httpx
import pytest
import redis.asyncio as aioredis
from celery import Celery
from sqlalchemy import delete, insert, select, text

from delivery.broker import REGISTER_TASK, create_celery, publish_job_body
from delivery.models import DeadLetter, PackageType
from delivery.registration import (
    PENDING_INDEX,
    RegistrationJob,
    StatusRecord,
    accept_registration,
    status_key,
)
from delivery.schemas import PackageCreate
from delivery.store import create_store
from tests.conftest import TYPES
from tests.factories import Maker, open_session
from tests.helpers import Json, packages_by_registration, wait_done, wait_until
from tests.stack import Stack, WorkerProcess

#: Deliveries before a dead letter, for the workers of these tests (the default is 5): the same code, sooner.
LIMIT = 3
BODY = PackageCreate(name="Parcel", weight_kg=Decimal("1.5"), type_id=1, content_value_usd=Decimal("40"))
POISON = "poison"
REFUSAL = "refused by a trigger of the test"
MYSQL_TRIGGER = f"""CREATE TRIGGER refuse_poison BEFORE INSERT ON packages FOR EACH ROW
BEGIN
  IF NEW.name = '{POISON}' THEN SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = '{REFUSAL}'; END IF;
END"""
SQLITE_TRIGGER = f"""CREATE TRIGGER refuse_poison BEFORE INSERT ON packages WHEN NEW.name = '{POISON}'
BEGIN
  SELECT RAISE(ABORT, '{REFUSAL}');
END"""


@pytest.fixture
def own_worker(stack: Stack, start_worker: Callable[..., WorkerProcess]) -> WorkerProcess:
    """A worker of this test's own that dead-letters after `LIMIT` deliveries; no other takes the jobs."""
    stack.stop_shared_worker()
    worker: WorkerProcess = start_worker(concurrency=1, DEAD_LETTER_AFTER=LIMIT).start()
    return worker


@pytest.fixture
async def refusing_trigger(maker: Maker, stack: Stack) -> AsyncIterator[None]:
    """A trigger that makes the database refuse the insert of a package named `POISON`."""
    async with maker() as db, db.begin():
        await db.execute(text(SQLITE_TRIGGER if stack.settings.is_sqlite else MYSQL_TRIGGER))
    yield
    await _drop_trigger(maker)


async def _drop_trigger(maker: Maker) -> None:
    async with maker() as db, db.begin():
        await db.execute(text("DROP TRIGGER IF EXISTS refuse_poison"))


async def _pending_jobs(stack: Stack, session_id: int, count: int) -> list[Json]:
    """`count` registrations accepted (their statuses pending) but not published: their jobs' bodies."""
    store = create_store(stack.settings)

    async def hold(job: RegistrationJob) -> None:
        return None

    bodies = []
    try:
        for _ in range(count):
            registration_id = await accept_registration(
                store, hold, session_id=session_id, data=BODY, idempotency_key=None, status_ttl=3600
            )
            raw = await store.get(status_key(registration_id))
            assert raw is not None
            bodies.append(StatusRecord.loads(raw).job or {})
    finally:
        await store.close()
    return bodies


def _publish_group(celery: Celery, bodies: list[Json]) -> None:
    """One message holding every job, as the API's publisher groups concurrent registrations: one batch."""
    args = tuple(bodies)
    message = celery.amqp.create_task_message("group-of-the-test", REGISTER_TASK, args, {})
    route = celery.amqp.router.route({}, REGISTER_TASK, args, {})
    with celery.producer_or_acquire() as producer:
        celery.amqp.send_task_message(producer, REGISTER_TASK, message, **route)


async def _send(stack: Stack, bodies: list[Json]) -> None:
    celery = create_celery(stack.settings)
    try:
        await asyncio.to_thread(_publish_group, celery, bodies)
    finally:
        celery.close()


def _failure_lines(log: str, registration_id: str) -> list[str]:
    return [line for line in log.splitlines() if f"job failed registration_id={registration_id} " in line]


def _at(line: str) -> datetime:
    return datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f")


async def _letters(maker: Maker) -> list[DeadLetter]:
    async with maker() as db:
        return list((await db.scalars(select(DeadLetter).order_by(DeadLetter.id))).all())


async def _restore_types(maker: Maker) -> None:
    async with maker() as db, db.begin():
        present = set((await db.scalars(select(PackageType.id))).all())
        missing = [t for t in TYPES if t["id"] not in present]
        if missing:
            await db.execute(insert(PackageType), missing)


async def _fail_one_of_a_batch(
    customer: httpx.AsyncClient, stack: Stack, maker: Maker, cause: str
) -> tuple[str, list[Json]]:
    """Four jobs in one message, the first made to fail by `cause`; the other three must register. The
    failing job's id, and the statuses of the other three."""
    session_id = await open_session(customer)
    bodies = await _pending_jobs(stack, session_id, 4)
    if cause == "unknown field":
        bodies[0] = bodies[0] | {"insured_value_usd": "100"}  # what a newer API could write
    elif cause == "type deleted":
        bodies[0] = bodies[0] | {"type_id": 3}
        async with maker() as db, db.begin():
            await db.execute(delete(PackageType).where(PackageType.id == 3))
    elif cause == "insert refused":
        bodies[0] = bodies[0] | {"name": POISON}
    elif cause == "corrupted value":
        bodies[0] = bodies[0] | {"weight_kg": "not a number"}
    await _send(stack, bodies)
    others = [await wait_done(customer, f"/packages/status/{b['registration_id']}/") for b in bodies[1:]]
    return bodies[0]["registration_id"], others


CAUSES = {
    # cause: (deliveries before its dead letter, what its reason names)
    "unknown field": (LIMIT, "insured_value_usd"),
    "type deleted": (1, "type 3 no longer exists"),
    "insert refused": (LIMIT, REFUSAL),
    "corrupted value": (LIMIT, "InvalidOperation"),
}


@pytest.mark.parametrize("cause", list(CAUSES))
async def test_a_job_that_cannot_succeed_is_dead_lettered_and_its_batch_registered(
    customer: httpx.AsyncClient,
    stack: Stack,
    own_worker: WorkerProcess,
    maker: Maker,
    refusing_trigger: None,
    cause: str,
) -> None:
    deliveries, named = CAUSES[cause]
    try:
        failing, others = await _fail_one_of_a_batch(customer, stack, maker, cause)
        assert [s["state"] for s in others] == ["registered"] * 3, others
        status = await wait_done(customer, f"/packages/status/{failing}/", limit=30)
    finally:
        await _restore_types(maker)
    assert status["state"] == "failed" and status["error"], status
    assert named in status["error_message"], status

    rows = await packages_by_registration(maker)
    assert len(rows) == 3 and all(len(group) == 1 for group in rows.values())
    assert {str(group[0].id) for group in rows.values()} == {str(s["package_id"]) for s in others}

    (letter,) = await _letters(maker)
    assert (letter.registration_id, letter.deliveries) == (failing, deliveries)
    assert named in letter.reason
    assert json.loads(letter.body)["registration_id"] == failing

    await asyncio.sleep(1.0)  # a further delivery, had one been sent, would have come by now
    log = own_worker.log()
    lines = _failure_lines(log, failing)
    # One line per delivery, the last one saying it was dead-lettered; no traceback anywhere.
    assert len(lines) == deliveries, lines
    assert "dead-lettered" in lines[-1] and all("tried again" in line for line in lines[:-1]), lines
    assert "Traceback" not in log
    # Each delivery after a growing delay (at least half of 2 s, doubling): never a hot loop.
    gaps = [(_at(b) - _at(a)).total_seconds() for a, b in itertools.pairwise(lines)]
    assert all(gap >= 1.0 * 2**i for i, gap in enumerate(gaps)), gaps


async def test_the_count_of_failed_deliveries_travels_with_the_job(
    customer: httpx.AsyncClient, stack: Stack, own_worker: WorkerProcess, maker: Maker
) -> None:
    """A job whose message says it failed twice already is dead-lettered at its third delivery, the first
    this worker makes: the count is the job's, whichever worker delivers it."""
    session_id = await open_session(customer)
    (body,) = await _pending_jobs(stack, session_id, 1)
    body = body | {"insured_value_usd": "100"}
    celery = create_celery(stack.settings)
    try:
        await asyncio.to_thread(publish_job_body, celery, body, failed=LIMIT - 1)
    finally:
        celery.close()
    status = await wait_done(customer, f"/packages/status/{body['registration_id']}/")
    assert status["state"] == "failed", status
    (letter,) = await _letters(maker)
    assert letter.deliveries == LIMIT
    (line,) = _failure_lines(own_worker.log(), body["registration_id"])
    assert f"delivery={LIMIT} of {LIMIT}, dead-lettered" in line


async def test_a_job_delivered_twice_in_one_batch_leaves_one_letter(
    customer: httpx.AsyncClient, stack: Stack, own_worker: WorkerProcess, maker: Maker
) -> None:
    """The same failing job twice in one message (published again by recovery, say), both at their last
    delivery, dead-lettered by one statement: one letter for the registration (the second replaces the
    first), its status `failed`."""
    session_id = await open_session(customer)
    (body,) = await _pending_jobs(stack, session_id, 1)
    body = body | {"insured_value_usd": "100"}
    celery = create_celery(stack.settings)
    args = (body, body)
    message = celery.amqp.create_task_message("twice", REGISTER_TASK, args, {})
    message.headers["failed_deliveries"] = LIMIT - 1
    route = celery.amqp.router.route({}, REGISTER_TASK, args, {})

    def send() -> None:
        with celery.producer_or_acquire() as producer:
            celery.amqp.send_task_message(producer, REGISTER_TASK, message, **route)

    try:
        await asyncio.to_thread(send)
    finally:
        celery.close()
    status = await wait_done(customer, f"/packages/status/{body['registration_id']}/")
    assert status["state"] == "failed", status
    (letter,) = await _letters(maker)
    assert (letter.registration_id, letter.deliveries) == (body["registration_id"], LIMIT)


@pytest.mark.parametrize("stack", ["real"], indirect=True)  # the embedded store has no types to confuse
async def test_a_batch_that_fails_as_a_whole_is_not_taken_again_at_once(
    customer: httpx.AsyncClient,
    stack: Stack,
    own_worker: WorkerProcess,
    maker: Maker,
    admin_headers: dict[str, str],
) -> None:
    """Redis refusing the batch's command on the index of pending registrations (a WRONGTYPE: the key holds
    a string): no job can be registered, and the batch is not rejected back into the queue, to come back at
    once, for ever. Each job counts its deliveries, growing apart, and is dead-lettered; once the store is
    mended they are sent back and registered."""
    session_id = await open_session(customer)
    bodies = await _pending_jobs(stack, session_id, 3)
    client = aioredis.Redis.from_url(str(stack.settings.REDIS_URL))
    try:
        await client.set(PENDING_INDEX, "not a sorted set")
        await _send(stack, bodies)

        async def all_kept() -> bool:
            return len(await _letters(maker)) == 3

        await wait_until(all_kept, 30, "every job dead-lettered")
        await asyncio.sleep(1.0)  # a further delivery, had one been sent, would have come by now
    finally:
        await client.delete(PENDING_INDEX)
        await client.aclose()
    letters = await _letters(maker)
    assert {(letter.registration_id, letter.deliveries) for letter in letters} == {
        (body["registration_id"], LIMIT) for body in bodies
    }
    assert all("WRONGTYPE" in letter.reason for letter in letters), letters[0].reason
    log = own_worker.log()
    assert "Traceback" not in log
    for body in bodies:
        lines = _failure_lines(log, body["registration_id"])
        assert len(lines) == LIMIT, lines
        gaps = [(_at(b) - _at(a)).total_seconds() for a, b in itertools.pairwise(lines)]
        assert all(gap >= 1.0 * 2**i for i, gap in enumerate(gaps)), gaps

    sent = await customer.post("/admin/dead-letters/requeue/", headers=admin_headers)
    assert sent.json() == {"requeued": 3}
    statuses = [await wait_done(customer, f"/packages/status/{b['registration_id']}/") for b in bodies]
    assert [s["state"] for s in statuses] == ["registered"] * 3, statuses
    assert len(await packages_by_registration(maker)) == 3


#: A trigger that stalls the insert of a package named `POISON`: a batch holding it is still running when the
#: test kills its pool process.
STALLING_TRIGGER = f"""CREATE TRIGGER stall_poison BEFORE INSERT ON packages FOR EACH ROW
BEGIN
  IF NEW.name = '{POISON}' THEN DO SLEEP(5); END IF;
END"""


def _taken(log: str, registration_id: str) -> list[str]:
    return [line for line in log.splitlines() if "batch taken" in line and registration_id in line]


@pytest.mark.parametrize("stack", ["real"], indirect=True)  # the stall is MariaDB's SLEEP in a trigger
async def test_a_job_whose_process_is_killed_each_time_is_dead_lettered_not_taken_again_at_once(
    customer: httpx.AsyncClient, stack: Stack, own_worker: WorkerProcess, maker: Maker
) -> None:
    """The pool process running a batch is killed (SIGKILL, as the kernel's OOM killer does) whenever the
    batch holds one job: each job comes back alone after a growing delay, the other three register, and the
    one that kills its process is dead-lettered `failed` after its `LIMIT` deliveries, naming the loss,
    instead of coming back at once for ever with its batch."""
    async with maker() as db, db.begin():
        await db.execute(text("DROP TRIGGER IF EXISTS stall_poison"))
        await db.execute(text(STALLING_TRIGGER))
    try:
        session_id = await open_session(customer)
        bodies = await _pending_jobs(stack, session_id, 4)
        bodies[0] = bodies[0] | {"name": POISON}
        failing = bodies[0]["registration_id"]
        await _send(stack, bodies)
        kills = 0
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 60
        while len(await _letters(maker)) == 0:
            assert loop.time() < deadline, f"not dead-lettered after {kills} kills"
            if len(_taken(own_worker.log(), failing)) > kills:
                await asyncio.sleep(0.3)  # inside the stalled insert
                for pid in own_worker.pool_pids():
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                kills += 1
            await asyncio.sleep(0.05)
        others = [await wait_done(customer, f"/packages/status/{b['registration_id']}/") for b in bodies[1:]]
        status = await wait_done(customer, f"/packages/status/{failing}/")
    finally:
        async with maker() as db, db.begin():
            await db.execute(text("DROP TRIGGER IF EXISTS stall_poison"))
    assert [s["state"] for s in others] == ["registered"] * 3, others
    assert status["state"] == "failed" and "worker process running it was lost" in status["error_message"], (
        status
    )
    assert len(await packages_by_registration(maker)) == 3
    (letter,) = await _letters(maker)
    assert (letter.registration_id, letter.deliveries) == (failing, LIMIT)
    assert "WorkerLostError" in letter.reason, letter.reason

    await asyncio.sleep(1.0)  # a further delivery, had one been sent, would have come by now
    log = own_worker.log()
    taken = _taken(log, failing)
    assert kills == len(taken) == LIMIT, (kills, taken)
    gaps = [(_at(b) - _at(a)).total_seconds() for a, b in itertools.pairwise(taken)]
    assert all(gap >= 1.0 * 2**i for i, gap in enumerate(gaps)), gaps
    lines = _failure_lines(log, failing)
    assert len(lines) == LIMIT and "dead-lettered" in lines[-1], lines


async def test_a_dead_letter_sent_back_registers_once_fixed(
    customer: httpx.AsyncClient,
    stack: Stack,
    own_worker: WorkerProcess,
    maker: Maker,
    admin_headers: dict[str, str],
) -> None:
    """The operator sees the letter (its endpoint, the backlog, /metrics), restores the type, sends it back
    with the endpoint: pending again, then registered with one package; the letter is gone."""
    try:
        failing, _ = await _fail_one_of_a_batch(customer, stack, maker, "type deleted")
        assert (await wait_done(customer, f"/packages/status/{failing}/"))["state"] == "failed"
    finally:
        await _restore_types(maker)

    assert (await customer.get("/admin/dead-letters/")).status_code == 401
    listing = await customer.get("/admin/dead-letters/", headers=admin_headers)
    assert listing.status_code == 200, listing.text
    seen = listing.json()
    assert seen["count"] == 1 and seen["oldest_at"] is not None, seen
    assert [(i["registration_id"], i["deliveries"]) for i in seen["items"]] == [(failing, 1)]
    assert "type 3 no longer exists" in seen["items"][0]["reason"]
    backlog = (await customer.get("/admin/stats/backlog/", headers=admin_headers)).json()
    assert backlog["dead_letters"] == 1 and backlog["oldest_dead_letter_at"] == seen["oldest_at"], backlog
    exposition = (await customer.get("/metrics")).text
    assert "delivery_dead_letters 1.0" in exposition
    assert "delivery_dead_letter_oldest_age_seconds" in exposition

    assert (await customer.post("/admin/dead-letters/requeue/")).status_code == 401
    sent = await customer.post("/admin/dead-letters/requeue/", headers=admin_headers)
    assert sent.status_code == 202, sent.text
    assert sent.json() == {"requeued": 1}
    status = await wait_done(customer, f"/packages/status/{failing}/")
    assert status["state"] == "registered", status
    rows = await packages_by_registration(maker)
    assert [group[0].id for rid, group in rows.items() if str(rid) == failing] == [status["package_id"]]
    assert all(len(group) == 1 for group in rows.values())
    assert await _letters(maker) == []
    after = (await customer.get("/admin/dead-letters/", headers=admin_headers)).json()
    assert after == {"count": 0, "oldest_at": None, "items": []}


async def test_the_command_sends_dead_letters_back(
    customer: httpx.AsyncClient, stack: Stack, own_worker: WorkerProcess, maker: Maker, refusing_trigger: None
) -> None:
    """`delivery dead-letters requeue` after the database's refusal is lifted: the job registers."""
    failing, _ = await _fail_one_of_a_batch(customer, stack, maker, "insert refused")
    assert (await wait_done(customer, f"/packages/status/{failing}/", limit=30))["state"] == "failed"
    await _drop_trigger(maker)

    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "delivery.cli", "dead-letters", "requeue"],
        env=stack.env(),
        cwd=stack.workdir,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "sent back 1 dead letter" in done.stdout
    status = await wait_done(customer, f"/packages/status/{failing}/")
    assert status["state"] == "registered", status
    await wait_until(lambda: _no_letters(maker), 5, "the letter deleted")


async def _no_letters(maker: Maker) -> bool:
    return await _letters(maker) == []

"""A registration answered with an error is never registered: a request whose job the broker did not confirm
in time withdraws it, a worker skips a withdrawn job, and whichever of the two reaches the store first wins.

The late confirm is real on the real stack: a proxy on loopback holds RabbitMQ's frames back on an open
connection while the broker has the job already. On the embedded stack the job is published through
Celery's producer and the answer then lost."""

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable
from decimal import Decimal
from urllib.parse import urlsplit

import httpx
import pytest

from delivery import registration
from delivery.broker import (
    AmqpPublisher,
    create_celery,
    publish_registration,
    queue_arguments,
    queued_registrations,
)
from delivery.errors import ServiceUnavailable
from delivery.grouping import Grouped
from delivery.registration import (
    PENDING_INDEX,
    TAKEN_TTL,
    WITHDRAW_RETRY_EVERY,
    RegistrationJob,
    StatusRecord,
    accept_registration,
    claim_key,
    fate_key,
    status_key,
)
from delivery.schemas import PackageCreate
from delivery.store import RedisStore, Store, create_store
from realstack.delayproxy import DelayProxy
from tests.factories import Maker, open_session
from tests.helpers import package_count, packages_by_registration, wait_done, wait_until
from tests.stack import Stack, WorkerProcess

BODY = PackageCreate(
    name="Late parcel", weight_kg=Decimal("2.5"), type_id=2, content_value_usd=Decimal("12.34")
)
#: The API's deadline for a confirm in these tests, and how late the proxy lets confirms come.
DEADLINE = 1.5
LATE = 4.0


@pytest.fixture
async def store(stack: Stack) -> AsyncIterator[Store]:
    result = create_store(stack.settings)
    yield result
    await result.close()


@pytest.fixture
async def late_publish(stack: Stack) -> AsyncIterator[registration.Publisher]:
    """A publisher whose jobs reach the broker while its confirm comes after the caller gave up."""
    if stack.name == "real":
        broker_url = str(stack.settings.CELERY_BROKER_URL)
        proxy = DelayProxy(urlsplit(broker_url).port or 5672).start()
        publisher = AmqpPublisher(
            [proxy.url(broker_url)], timeout=DEADLINE, queue_arguments=queue_arguments(stack.settings)
        )
        await publisher.connect()
        proxy.delay = LATE
        yield publisher.publish
        await publisher.close()
        proxy.stop()
        return
    celery = create_celery(stack.settings)

    async def published_then_lost(job: RegistrationJob) -> None:
        await asyncio.to_thread(publish_registration, celery, job)
        await asyncio.sleep(DEADLINE)
        raise TimeoutError("the broker's confirm did not come in time")

    yield published_then_lost
    celery.close()


def publish_on(stack: Stack) -> tuple[registration.Publisher, Callable[[], None]]:
    celery = create_celery(stack.settings)

    async def publish(job: RegistrationJob) -> None:
        await asyncio.to_thread(publish_registration, celery, job)

    return publish, celery.close


async def accept(
    store: Store, publish: registration.Publisher, session_id: int, key: str | None = None
) -> uuid.UUID:
    return await accept_registration(
        store, publish, session_id=session_id, data=BODY, idempotency_key=key, status_ttl=3600
    )


async def queue_drained(stack: Stack) -> None:
    celery = create_celery(stack.settings)
    try:

        async def empty() -> bool:
            return await asyncio.to_thread(queued_registrations, celery) == 0

        await wait_until(empty, 30, "the registration queue empty")
    finally:
        celery.close()


class TestTheRace:
    """Withdrawing and taking decide one fate key: the first to write it wins, on both stores."""

    async def test_a_withdrawn_registration_is_not_taken(self, store: Store) -> None:
        job_id = str(uuid.uuid4())
        claim = claim_key(1, "race")
        fate = fate_key(job_id)
        await store.put_pending(
            status_key(job_id),
            "{}",
            ttl=60,
            index=PENDING_INDEX,
            member=job_id,
            score=1,
            fate=fate,
            claim=claim,
        )
        assert await store.withdraw(
            status_key(job_id), "{}", fate=fate, ttl=60, index=PENDING_INDEX, member=job_id, claim=claim
        )
        assert await store.take([fate_key(job_id)], ttl=TAKEN_TTL) == [False]
        # Nothing of it is left to answer or to recover: no status, no claim, out of the index.
        assert await store.get(status_key(job_id)) is None
        assert await store.get(claim) is None
        assert await store.index_below(PENDING_INDEX, 10.0, 10) == []

    async def test_a_taken_registration_is_not_withdrawn(self, store: Store) -> None:
        job_id = str(uuid.uuid4())
        await store.put_pending(
            status_key(job_id),
            "{}",
            ttl=60,
            index=PENDING_INDEX,
            member=job_id,
            score=1,
            fate=fate_key(job_id),
        )
        assert await store.take([fate_key(job_id)], ttl=TAKEN_TTL) == [True]
        assert not await store.withdraw(
            status_key(job_id), "{}", fate=fate_key(job_id), ttl=60, index=PENDING_INDEX, member=job_id
        )
        assert await store.get(status_key(job_id)) == "{}"
        # Taken again (a redelivered job): still its own.
        assert await store.take([fate_key(job_id)], ttl=TAKEN_TTL) == [True]

    async def test_storing_a_withdrawn_registration_again_clears_its_withdrawal(self, store: Store) -> None:
        """The retry of an Idempotency-Key has the withdrawn registration's id: it must be registrable."""
        job_id = str(uuid.uuid4())
        args = {"ttl": 60, "index": PENDING_INDEX, "member": job_id, "fate": fate_key(job_id)}
        await store.put_pending(status_key(job_id), "{}", score=1, **args)  # type: ignore[arg-type]
        assert await store.withdraw(status_key(job_id), "{}", **args)  # type: ignore[arg-type]
        await store.put_pending(status_key(job_id), "{}", score=2, **args)  # type: ignore[arg-type]
        assert await store.take([fate_key(job_id)], ttl=TAKEN_TTL) == [True]

    async def test_a_late_withdrawal_leaves_a_later_attempt_alone(self, store: Store) -> None:
        """An attempt's withdrawal, retried in the background, lands after the client's retry with the same
        Idempotency-Key stored the registration again: the retry's registration must stay."""
        job_id = str(uuid.uuid4())
        args = {"ttl": 60, "index": PENDING_INDEX, "member": job_id, "fate": fate_key(job_id)}
        await store.put_pending(status_key(job_id), "retry", score=2, **args)  # type: ignore[arg-type]
        assert not await store.withdraw(status_key(job_id), "first", **args)  # type: ignore[arg-type]
        assert await store.get(status_key(job_id)) == "retry"
        assert await store.take([fate_key(job_id)], ttl=TAKEN_TTL) == [True]


class TestALateConfirm:
    async def test_with_no_worker_yet_the_registration_is_withdrawn_and_its_job_skipped(
        self,
        stack: Stack,
        customer: httpx.AsyncClient,
        store: Store,
        late_publish: registration.Publisher,
        maker: Maker,
    ) -> None:
        stack.stop_shared_worker()
        session_id = await open_session(customer)
        with pytest.raises(ServiceUnavailable):
            await accept(store, late_publish, session_id)
        # The job did reach the broker; the worker takes it, skips it and writes nothing.
        worker = stack.shared_worker()
        await queue_drained(stack)
        worker.wait_log("registration withdrawn, job skipped", 30)
        await asyncio.sleep(1)  # a package would be committed by now
        assert await package_count(maker) == 0
        assert await store.index_below(PENDING_INDEX, time.time() + 60, 10) == []

    async def test_a_job_taken_before_the_deadline_is_answered_202_and_registered_once(
        self,
        stack: Stack,
        customer: httpx.AsyncClient,
        store: Store,
        late_publish: registration.Publisher,
        worker: WorkerProcess,
        maker: Maker,
    ) -> None:
        session_id = await open_session(customer)
        registration_id = await accept(store, late_publish, session_id)
        status = await wait_done(customer, f"/packages/status/{registration_id}/")
        assert status["state"] == "registered", status
        rows = await packages_by_registration(maker)
        assert {r: len(p) for r, p in rows.items()} == {registration_id: 1}

    async def test_the_retry_of_a_withdrawn_idempotency_key_is_registered_once(
        self,
        stack: Stack,
        customer: httpx.AsyncClient,
        store: Store,
        late_publish: registration.Publisher,
        maker: Maker,
    ) -> None:
        """The first attempt withdrawn (its job on its way), the client's retry with the key gets 202: one
        package, whichever of the two jobs the worker takes first."""
        stack.stop_shared_worker()
        session_id = await open_session(customer)
        with pytest.raises(ServiceUnavailable):
            await accept(store, late_publish, session_id, key="retried")
        publish, close = publish_on(stack)
        try:
            registration_id = await accept(store, publish, session_id, key="retried")
        finally:
            close()
        stack.shared_worker()
        status = await wait_done(customer, f"/packages/status/{registration_id}/")
        assert status["state"] == "registered", status
        await queue_drained(stack)
        rows = await packages_by_registration(maker)
        assert {r: len(p) for r, p in rows.items()} == {registration_id: 1}


async def test_a_duplicate_joining_a_pending_registration_keeps_it_from_being_withdrawn(
    stack: Stack, customer: httpx.AsyncClient, store: Store, worker: WorkerProcess, maker: Maker
) -> None:
    """Two requests with one key: the second answers 202 while the first is still publishing; the first's
    publish then fails. The first must not withdraw what the second answered 202 for: it answers 202 too."""
    session_id = await open_session(customer)
    first_publishing = asyncio.Event()
    let_it_fail = asyncio.Event()

    async def failing(job: RegistrationJob) -> None:
        first_publishing.set()
        await let_it_fail.wait()
        raise ConnectionError("broker gone mid-publish")

    publish, close = publish_on(stack)
    try:
        first = asyncio.create_task(accept(store, failing, session_id, key="raced"))
        await first_publishing.wait()
        second_id = await accept(store, publish, session_id, key="raced")
        let_it_fail.set()
        assert await first == second_id
    finally:
        close()
    status = await wait_done(customer, f"/packages/status/{second_id}/")
    assert status["state"] == "registered", status
    rows = await packages_by_registration(maker)
    assert {r: len(p) for r, p in rows.items()} == {second_id: 1}


async def test_a_duplicate_of_a_withdrawn_registration_without_a_broker_is_refused(
    stack: Stack, customer: httpx.AsyncClient, store: Store
) -> None:
    """The second request finds the first's status, cannot publish, and the first withdraws meanwhile:
    both are refused, and nothing is left pending."""
    session_id = await open_session(customer)
    second_publishing = asyncio.Event()
    let_second_fail = asyncio.Event()

    async def failing_first(job: RegistrationJob) -> None:
        await second_publishing.wait()
        raise ConnectionError("broker gone")

    async def failing_second(job: RegistrationJob) -> None:
        second_publishing.set()
        await let_second_fail.wait()
        raise ConnectionError("broker gone")

    first = asyncio.create_task(accept(store, failing_first, session_id, key="both-fail"))
    await asyncio.sleep(0.2)  # the first's status stored, its publish waiting
    second = asyncio.create_task(accept(store, failing_second, session_id, key="both-fail"))
    with pytest.raises(ServiceUnavailable):
        await first
    let_second_fail.set()
    with pytest.raises(ServiceUnavailable):
        await second
    assert await store.index_below(PENDING_INDEX, time.time() + 60, 10) == []


def test_the_status_record_of_a_pending_registration_names_its_job() -> None:
    """What recovery publishes again: the job, inside the pending status."""
    job = RegistrationJob("r", 1, "n", "1", 1, "1", 0.0)
    assert StatusRecord.loads(StatusRecord(1, "pending", job=job.to_json()).dumps()).job == job.to_json()


class TestGroupDeadlines:
    """Callers whose items travel in one group each keep their own deadline."""

    @staticmethod
    async def outcomes(send_takes: float, withins: list[float]) -> tuple[list[object], float]:
        """What each caller got, and when the last one got it; each group takes `send_takes` to send."""

        async def send(items: list[int], deadline: float | None) -> list[int]:
            async with asyncio.timeout_at(deadline):
                await asyncio.sleep(send_takes)
            return items

        group: Grouped[int, int] = Grouped(send, closed=lambda: ConnectionError("closed"))
        loop = asyncio.get_running_loop()
        started = loop.time()
        # A first item in flight alone, so that the others wait for it and go out together as one group.
        first = asyncio.create_task(group.submit(0, within=30))
        await asyncio.sleep(0)
        callers = [asyncio.create_task(group.submit(n, within=w)) for n, w in enumerate(withins, 1)]
        results = await asyncio.gather(*callers, return_exceptions=True)
        answered = loop.time() - started
        await first
        await group.close()
        return list(results), answered

    async def test_a_group_fails_no_caller_whose_own_deadline_has_not_passed(self) -> None:
        # The second group goes out at 2 s with a caller that gives up at 2.3 s and one that waits 7 s.
        results, _ = await self.outcomes(send_takes=2.0, withins=[2.3, 7.0])
        assert isinstance(results[0], TimeoutError)
        assert results[1] == 2

    async def test_every_caller_is_answered_at_its_own_deadline(self) -> None:
        results, answered = await self.outcomes(send_takes=5.0, withins=[1.5, 2.0])
        assert all(isinstance(r, TimeoutError) for r in results)
        assert answered < 4.0


@pytest.mark.parametrize("stack", ["real"], indirect=True)  # a reply lost on its way needs a network
async def test_a_status_stored_while_its_answer_was_lost_is_withdrawn_once_the_store_answers(
    stack: Stack, customer: httpx.AsyncClient, store: Store, maker: Maker
) -> None:
    """Redis wrote the pending status but its answer never came back (held past the client's timeout, and
    the withdrawal's too): the request answers 503, and withdraws the registration once Redis answers
    again, before recovery would publish it from its status."""
    stack.stop_shared_worker()
    session_id = await open_session(customer)
    redis_url = str(stack.settings.REDIS_URL)
    proxy = DelayProxy(urlsplit(redis_url).port or 6379).start()
    slow = RedisStore(proxy.url(redis_url))
    publish, close = publish_on(stack)
    try:
        await slow.get("warm")  # connected while the proxy lets answers through
        with proxy.holding(60.0):
            with pytest.raises(ServiceUnavailable):
                await accept(slow, publish, session_id)

        async def withdrawn() -> bool:
            return await store.index_below(PENDING_INDEX, time.time() + 60, 10) == []

        await wait_until(withdrawn, 2 * WITHDRAW_RETRY_EVERY + 10, "the registration withdrawn")

        async def queued() -> int:
            return 0

        assert await registration.recover_pending(store, publish, queued, older_than=0) == 0
    finally:
        close()
        await slow.close()
        proxy.stop()
    stack.shared_worker()
    await asyncio.sleep(2)
    assert await package_count(maker) == 0

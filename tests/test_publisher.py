"""The API's publisher on RabbitMQ: the jobs of concurrent requests share messages, each job is in exactly
one of them, and every one of them ends in one package; a caller that gives up is answered within the
deadline and its job is not sent after it."""

import asyncio
import json
import os
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from contextlib import contextmanager

import aio_pika
import httpx
import pytest
from celery import Celery

from delivery.broker import (
    PUBLISH_GROUP,
    PUBLISH_TIMEOUT,
    REGISTRATION_QUEUE,
    AmqpPublisher,
    amqp_publisher,
    confirming_producer,
    create_celery,
    publish_registration,
    queued_registrations,
)
from delivery.registration import RegistrationJob
from realstack.cluster import Cluster, Node, rabbitmq_installed
from realstack.machine import ALARM_WATERMARK, DEFAULT_WATERMARK
from tests.conftest import CI
from tests.factories import Maker, app_client
from tests.helpers import packages_by_registration, wait_done
from tests.stack import Stack

pytestmark = pytest.mark.parametrize("stack", ["real"], indirect=True)  # the embedded broker has no publisher

BODY = {"name": "Grouped parcel", "weight_kg": "1.500", "type_id": 1, "content_value_usd": "40.00"}


def job(n: int) -> RegistrationJob:
    return RegistrationJob(
        registration_id=f"00000000-0000-4000-8000-{n:012d}",
        session_id=1,
        name=f"p{n}",
        weight_kg="1.500",
        type_id=1,
        content_value_usd="40.00",
        accepted_at=0.0,
    )


async def queued_messages(stack: Stack) -> list[list[str]]:
    """The registration ids of each message waiting in the queue (taken off it)."""
    assert stack.settings.CELERY_BROKER_URL is not None
    connection = await aio_pika.connect(str(stack.settings.CELERY_BROKER_URL))
    messages = []
    try:
        channel = await connection.channel()
        queue = await channel.get_queue(REGISTRATION_QUEUE, ensure=False)
        while (message := await queue.get(fail=False, no_ack=True)) is not None:
            args, _, _ = json.loads(message.body)
            messages.append([RegistrationJob.from_json(arg).registration_id for arg in args])
    finally:
        await connection.close()
    return messages


async def test_concurrent_registrations_share_messages_and_each_is_registered_once(
    stack: Stack, customer: httpx.AsyncClient, maker: Maker
) -> None:
    """40 registrations at once: fewer messages than jobs in the queue, every job in one of them; then a
    worker registers each exactly once."""
    stack.stop_shared_worker()
    answers = await asyncio.gather(*(customer.post("/packages/", json=BODY) for _ in range(40)))
    assert [a.status_code for a in answers] == [202] * 40, [a.text for a in answers]
    ids = sorted(a.json()["status_id"] for a in answers)

    celery = create_celery(stack.settings)
    try:
        messages = await asyncio.to_thread(queued_registrations, celery)
    finally:
        celery.close()
    assert 1 <= messages < 40

    stack.shared_worker()
    for location in (a.headers["Location"] for a in answers):
        status = await wait_done(customer, location)
        assert status["state"] == "registered", status
    rows = await packages_by_registration(maker)
    assert sorted(str(r) for r in rows) == ids
    assert all(len(group) == 1 for group in rows.values())


async def test_each_job_is_in_exactly_one_message(stack: Stack) -> None:
    """More concurrent jobs than a message holds: the queue's messages hold each job once, none larger than
    `PUBLISH_GROUP`."""
    stack.stop_shared_worker()
    publisher = amqp_publisher(stack.settings)
    assert publisher is not None
    jobs = [job(n) for n in range(2 * PUBLISH_GROUP + 5)]
    try:
        await asyncio.gather(*(publisher.publish(j) for j in jobs))
    finally:
        await publisher.close()
    messages = await queued_messages(stack)
    assert sorted(i for ids in messages for i in ids) == sorted(j.registration_id for j in jobs)
    assert max(len(ids) for ids in messages) <= PUBLISH_GROUP
    assert len(messages) < len(jobs)


async def test_a_job_whose_caller_gave_up_before_it_went_out_is_not_sent(stack: Stack) -> None:
    """A job whose deadline passed while it waited for its message (here: the loop busy past it) is answered
    with an error and never sent; the publisher goes on with the next job."""
    stack.stop_shared_worker()
    assert stack.settings.CELERY_BROKER_URL is not None
    publisher = AmqpPublisher([str(stack.settings.CELERY_BROKER_URL)], timeout=0.3)
    try:
        late = asyncio.create_task(publisher.publish(job(1)))
        await asyncio.sleep(0)  # queued, its message not yet sent
        time.sleep(0.4)  # noqa: ASYNC251 - the loop held past the job's deadline, on purpose
        with pytest.raises(TimeoutError):
            await late
        await publisher.publish(job(2))
    finally:
        await publisher.close()
    assert await queued_messages(stack) == [[job(2).registration_id]]


async def test_callers_behind_a_silent_broker_are_answered_within_the_deadline(stack: Stack) -> None:
    """A broker that accepts the connection and says nothing: every caller is answered by the deadline,
    those queued behind the first message too."""
    accepted: list[asyncio.StreamWriter] = []
    silent = await asyncio.start_server(lambda _, writer: accepted.append(writer), "127.0.0.1", 0)
    port = silent.sockets[0].getsockname()[1]
    publisher = AmqpPublisher([f"amqp://guest:guest@127.0.0.1:{port}/"], timeout=0.5)
    loop = asyncio.get_running_loop()

    async def timed(n: int, after: float) -> float:
        await asyncio.sleep(after)
        started = loop.time()
        with pytest.raises(Exception):  # noqa: B017 - timed out or refused, either is the 503
            await publisher.publish(job(n))
        return loop.time() - started

    try:
        took = await asyncio.gather(timed(1, 0), timed(2, 0), timed(3, 0.2), timed(4, 0.3))
    finally:
        await publisher.close()
        for writer in accepted:
            writer.close()
        silent.close()
        await silent.wait_closed()
    assert max(took) < 0.5 + 0.2, took


async def test_closing_the_publisher_answers_the_jobs_waiting_to_go_out(stack: Stack) -> None:
    """The API stopping while jobs wait for their message: each caller is answered at once (its 503), not
    at its deadline."""
    assert stack.settings.CELERY_BROKER_URL is not None
    publisher = AmqpPublisher([str(stack.settings.CELERY_BROKER_URL)], timeout=60)
    waiting = [asyncio.create_task(publisher.publish(job(n))) for n in range(3)]
    await asyncio.sleep(0)  # queued; their message not sent yet
    await publisher.close()
    for call in waiting:
        with pytest.raises(ConnectionError):
            await asyncio.wait_for(call, 5)


# --- a broker that blocks publishers (its memory alarm raised), on a RabbitMQ node of this test's own ---


@pytest.fixture(scope="module")
def own_node() -> Iterator[Node]:
    """A RabbitMQ node of its own (`realstack.cluster`, one node), whose memory alarm the tests raise: the
    machine's own node is never given one."""
    if missing := rabbitmq_installed():
        if CI:
            pytest.fail(f"no RabbitMQ node: {missing}")
        pytest.skip(f"no RabbitMQ node: {missing}")
    nodes = Cluster(f"delivery-blocked-{os.getpid()}", size=1)
    try:
        nodes.start()
        yield nodes.nodes[0]
    finally:
        nodes.close()


@contextmanager
def publishers_blocked(node: Node) -> Iterator[None]:
    node.ctl("set_vm_memory_high_watermark", ALARM_WATERMARK)
    try:
        deadline = time.monotonic() + 30
        while "memory" not in node.ctl_output("eval", "rabbit_alarm:get_alarms()."):
            assert time.monotonic() < deadline, "the memory alarm was not raised"
            time.sleep(0.2)
        yield
    finally:
        node.ctl("set_vm_memory_high_watermark", DEFAULT_WATERMARK)


async def test_a_pricing_run_asked_of_a_blocking_broker_is_503_within_the_publish_timeout(
    stack: Stack, own_node: Node, admin_headers: dict[str, str]
) -> None:
    """Not a request that hangs, nor a thread held: 503 with Retry-After, and 202 once the alarm clears."""
    settings = stack.settings.model_copy(update={"CELERY_BROKER_URL": own_node.url()})
    async with app_client(settings) as client:
        warm = await client.post("/admin/jobs/price-packages/", headers=admin_headers)
        assert warm.status_code == 202, warm.text
        with publishers_blocked(own_node):
            started = time.monotonic()
            blocked = await asyncio.wait_for(
                client.post("/admin/jobs/price-packages/", headers=admin_headers), 4 * PUBLISH_TIMEOUT
            )
            took = time.monotonic() - started
        assert blocked.status_code == 503, blocked.text
        assert int(blocked.headers["Retry-After"]) > 0
        assert took <= PUBLISH_TIMEOUT + 2.0, took
        again = await client.post("/admin/jobs/price-packages/", headers=admin_headers)
        assert again.status_code == 202, again.text


def test_the_recovery_publish_to_a_blocking_broker_fails_within_the_publish_timeout(
    stack: Stack, own_node: Node
) -> None:
    """The recovery job's publish (and a batch's retries) gives up when the confirm does not come in time,
    rather than holding its pool process; published again once the alarm clears."""
    celery = create_celery(stack.settings.model_copy(update={"CELERY_BROKER_URL": own_node.url()}))
    pool = ThreadPoolExecutor(1)
    try:
        with confirming_producer(celery) as producer:
            publish_registration(celery, job(1), producer=producer)
        with publishers_blocked(own_node):
            started = time.monotonic()
            publishing = pool.submit(_publish_confirmed, celery, job(2))
            # Celery's publish retry policy (2 retries) makes at most 3 attempts of one deadline each.
            with pytest.raises(Exception) as failed:
                publishing.result(timeout=4 * PUBLISH_TIMEOUT)
            took = time.monotonic() - started
        assert not isinstance(failed.value, FutureTimeout), "the publish still waits for its confirm"
        assert took <= 3 * PUBLISH_TIMEOUT + 3.0, took
        _publish_confirmed(celery, job(3))
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
        celery.close()


def _publish_confirmed(celery: Celery, registration: RegistrationJob) -> None:
    with confirming_producer(celery) as producer:
        publish_registration(celery, registration, producer=producer)

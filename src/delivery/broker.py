"""The broker side of the service: the Celery app's configuration, and the publishers of registration jobs.

Nothing here connects or builds anything at import: the API builds its Celery app and publisher in its
lifespan, the worker in `delivery.worker`.
"""

import asyncio
import json
import logging
import math
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import urlsplit

import aio_pika
import aio_pika.abc
import aiormq
from celery import Celery
from celery.backends.redis import RedisBackend
from celery.worker.consumer import Consumer
from celery.worker.consumer.delayed_delivery import DelayedDelivery
from kombu import Exchange, Producer, Queue
from kombu.transport import sqlalchemy as kombu_sqlalchemy
from kombu.transport.native_delayed_delivery import calculate_routing_key
from kombu.utils.functional import retry_over_time

from delivery.config import EMBEDDED_DIR, Settings
from delivery.grouping import Grouped
from delivery.registration import RegistrationJob
from delivery.store import blocking_parser_for

logger = logging.getLogger(__name__)

REGISTER_TASK = "packages.register"
PRICE_TASK = "packages.price_pending"
RECOVER_TASK = "packages.recover_pending"
MAINTAIN_TASK = "maintenance.clean"
REGISTRATION_QUEUE = "registrations"
PRICING_QUEUE = "pricing"
#: How often pending registrations are looked at by the recovery job.
RECOVERY_INTERVAL = 60.0
#: How often expired sessions and the embedded broker's delivered messages are cleaned away.
MAINTENANCE_INTERVAL = 3600.0
EMBEDDED_POLLING_INTERVAL = 0.1
#: A registration batch: up to this many jobs, or what arrived within BATCH_INTERVAL seconds.
BATCH_SIZE = 100
BATCH_INTERVAL = 0.02
#: Messages a worker process holds unacknowledged: two batches for each pool process, so one fills while
#: the other is written.
PREFETCH_MULTIPLIER = 2 * BATCH_SIZE
#: AMQP's delivery mode of a message written to disk by the broker (aio_pika.DeliveryMode.PERSISTENT).
PERSISTENT = 2
#: The longest a publish may take, connecting included, before the API answers 503.
PUBLISH_TIMEOUT = 5.0
#: The most registration jobs the API's publisher sends in one message (those of concurrent requests).
PUBLISH_GROUP = 64
#: The first of the delay levels of Celery's native delayed delivery, which the worker declares at start: a
#: job published here with a countdown in its routing key reaches its queue when the countdown is over.
DELAYED_DELIVERY_EXCHANGE = "celery_delayed_27"


def queue_arguments(settings: Settings) -> dict[str, Any]:
    """The arguments the queues are declared with, by the worker and by the API alike (a difference is a
    PRECONDITION_FAILED from RabbitMQ)."""
    return {"x-queue-type": "quorum"} if settings.BROKER_QUEUE_TYPE == "quorum" else {}


def exchange_type(settings: Settings) -> str:
    """Topic exchanges for quorum queues, direct ones for classic queues.

    A quorum queue has no per-message delay of its own: a job to run later goes through Celery's native
    delayed delivery, whose last hop is a binding from its exchange to the queue's exchange, made for topic
    (and fanout) exchanges only. Classic queues keep the direct exchanges they were first declared with:
    RabbitMQ refuses to declare an existing exchange again with another type.
    """
    return "topic" if settings.BROKER_QUEUE_TYPE == "quorum" else "direct"


def task_queues(settings: Settings) -> list[Queue]:
    return [
        Queue(
            name,
            Exchange(name, type=exchange_type(settings)),
            routing_key=name,
            queue_arguments=queue_arguments(settings),
        )
        for name in (REGISTRATION_QUEUE, PRICING_QUEUE)
    ]


def create_celery(settings: Settings) -> Celery:
    """A Celery app for `settings`: the real broker and Redis when their URLs are set, else embedded."""
    app = Celery("delivery")
    app.conf.update(
        broker_url=_broker_url(settings),
        broker_transport_options=_broker_options(settings),
        broker_connection_timeout=3,
        broker_connection_retry_on_startup=True,
        result_backend=_result_backend(settings),
        result_expires=86400,
        # A result that cannot be written (Redis restarting) is written again, backing off up to 10 s,
        # rather than failing the job: a job that fails outside its body is acknowledged, and lost.
        result_backend_always_retry=True,
        result_backend_max_retries=20,
        # A Redis that stops answering is an error within seconds, not a thread held for minutes.
        redis_socket_timeout=5,
        redis_socket_connect_timeout=3,
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=PREFETCH_MULTIPLIER,
        task_queues=task_queues(settings),
        task_default_queue=REGISTRATION_QUEUE,
        task_routes={
            REGISTER_TASK: {"queue": REGISTRATION_QUEUE},
            PRICE_TASK: {"queue": PRICING_QUEUE},
            RECOVER_TASK: {"queue": PRICING_QUEUE},
            MAINTAIN_TASK: {"queue": PRICING_QUEUE},
        },
        task_publish_retry_policy={"max_retries": 2, "interval_start": 0, "interval_step": 0.5},
        beat_schedule={
            "price-pending-packages": {
                "task": PRICE_TASK,
                "schedule": settings.COST_RECALC_INTERVAL,  # seconds
                # A run that no worker took within one period is dropped: the next one does its work.
                "options": {"expires": settings.COST_RECALC_INTERVAL},
            },
            "recover-pending-registrations": {
                "task": RECOVER_TASK,
                "schedule": RECOVERY_INTERVAL,
                "options": {"expires": RECOVERY_INTERVAL},
            },
            "maintenance": {
                "task": MAINTAIN_TASK,
                "schedule": MAINTENANCE_INTERVAL,
                "options": {"expires": MAINTENANCE_INTERVAL},
            },
        },
        # Quorum queues have no global QoS: the worker sees their `x-queue-type` and sets its prefetch per
        # consumer. Jobs with a countdown wait in quorum queues too (native delayed delivery), so that a
        # node's loss loses no retry either.
        worker_detect_quorum_queues=True,
        broker_native_delayed_delivery_queue_type="quorum",
        worker_consumer=f"{__name__}:{ClusterConsumer.__name__}",
        worker_hijack_root_logger=False,
        enable_utc=True,
    )
    return app


def embedded_broker_file() -> Path:
    return (EMBEDDED_DIR / "broker.sqlite3").resolve()


class DelayedDeliveryThroughOneNode(DelayedDelivery):
    """Celery's set-up of native delayed delivery, through the node the worker is connected to alone.

    Celery's own step declares the delay exchanges and queues through every URL of the failover list, and
    retries one that does not answer for about 17 s, at every (re)connection, before the worker takes jobs
    again: the loss of a node stood the worker still that long. The nodes of a cluster share their
    exchanges and queues, so declaring them through one node declares them on all.
    """

    def start(self, c: Any) -> None:
        celery_step: Any = self  # its helpers are Celery's, untyped
        celery_step._validate_configuration(c.app)
        url = c.connection.as_uri(include_password=True)
        try:
            retry_over_time(
                celery_step._setup_delayed_delivery,
                args=(c, url),
                catch=(OSError,),
                errback=celery_step._on_retry,
                interval_start=1.0,
                max_retries=3,
            )
        except Exception as exc:  # as Celery does: the worker still takes the jobs that need no delay
            logger.critical("native delayed delivery not set up through %s: %r", c.connection.as_uri(), exc)


_ConsumerBlueprint: Any = Consumer.Blueprint


class ClusterConsumer(Consumer):
    """Celery's consumer, with the delayed delivery step above in place of Celery's."""

    class Blueprint(_ConsumerBlueprint):  # type: ignore[misc]
        default_steps: ClassVar[list[str]] = [
            f"{__name__}:{DelayedDeliveryThroughOneNode.__name__}"
            if step.endswith(":DelayedDelivery")
            else step
            for step in _ConsumerBlueprint.default_steps
        ]


def _broker_url(settings: Settings) -> str:
    if settings.CELERY_BROKER_URL is not None:
        # Several nodes separated by `;`: kombu's failover list, tried in turn on every (re)connection.
        return str(settings.CELERY_BROKER_URL)
    # kombu's SQLAlchemy transport on an SQLite file: each message is taken in a write transaction,
    # so no two consumers take the same message and none reads a half-written one.
    EMBEDDED_DIR.mkdir(parents=True, exist_ok=True)
    # The transport passes its options to create_engine, so its polling interval (1 s by default, a
    # second of latency per idle poll) can only be set on the class.
    kombu_sqlalchemy.Transport.polling_interval = EMBEDDED_POLLING_INTERVAL
    return f"sqla+sqlite:///{embedded_broker_file()}"


def _broker_options(settings: Settings) -> dict[str, Any]:
    if settings.CELERY_BROKER_URL is not None:
        # Wait for RabbitMQ to confirm each message, so a job published again is in the queue.
        return {"confirm_publish": True}
    return {"connect_args": {"timeout": 30}}


class ResultBackend(RedisBackend):
    """Celery's Redis result backend, reading Redis's error codes as the store does: a server held by a
    script (BUSY) or unable to persist (MISCONF) raises the store's class for it, one of
    `store.REDIS_UNAVAILABLE`, not a plain ResponseError."""

    connparams: dict[str, Any]

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.connparams["parser_class"] = blocking_parser_for(kwargs.get("url") or "redis://")


def _result_backend(settings: Settings) -> str:
    if settings.REDIS_URL is not None:
        return f"{ResultBackend.__module__}:{ResultBackend.__name__}+{settings.REDIS_URL}"
    folder = (EMBEDDED_DIR / "results").resolve()
    folder.mkdir(parents=True, exist_ok=True)
    return f"file://{folder}"


@contextmanager
def confirming_producer(app: Celery) -> Iterator[Producer]:
    """A producer on a connection of its own, for publishes that wait at most `PUBLISH_TIMEOUT` for the
    broker's confirm (`CONFIRM_DEADLINE`). A failure drops the connection without AMQP's closing handshake:
    a broker that blocks publishers (a memory or disk alarm) reads nothing more from it, and would hold a
    polite close, and the thread or pool process that waits for it, forever."""
    connection = app.connection_for_write()
    try:
        yield app.amqp.Producer(connection)
    except BaseException:
        connection.collect()
        raise
    connection.release()


#: What a publish through `confirming_producer` is given: its frames written, then the broker's confirm,
#: each within the publish timeout.
CONFIRM_DEADLINE = {"timeout": PUBLISH_TIMEOUT, "confirm_timeout": PUBLISH_TIMEOUT}


def publish_registration(
    app: Celery,
    job: RegistrationJob,
    *,
    countdown: float | None = None,
    retries: int = 0,
    producer: Producer | None = None,
    failed: int = 0,
) -> None:
    """Publish a registration job, blocking until the broker confirms it, at most `PUBLISH_TIMEOUT` for
    each attempt (Celery's publish retry policy makes a few); through `producer` (of `confirming_producer`),
    else Celery's producer pool (the API on the embedded broker, which has no confirms to wait for).

    As `send_task` would, but without subscribing to its result: on the Redis backend `send_task`
    SUBSCRIBEs the publisher to the task's result channel, a round trip that nobody here reads (a
    registration's record is its status, not a Celery result)."""
    publish_job_body(
        app, job.to_json(), countdown=countdown, retries=retries, producer=producer, failed=failed
    )


#: The message header that counts the failed deliveries of the job a message holds (absent: none).
FAILED_DELIVERIES = "failed_deliveries"
#: The message header with the reason of a job's last failed delivery, where the worker process running it
#: was lost (and with it the job's own account of the failure).
LAST_FAILURE = "last_failure"


def failed_deliveries(headers: dict[str, Any] | None) -> int:
    """The failed deliveries a message's headers count; 0 for one without the header or with a bad one."""
    value = (headers or {}).get(FAILED_DELIVERIES)
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def publish_job_body(
    app: Celery,
    body: Any,
    *,
    countdown: float | None = None,
    retries: int = 0,
    producer: Producer | None = None,
    failed: int = 0,
    last_failure: str | None = None,
) -> None:
    """Publish one registration job as its body stands (one this worker could not read, or a dead letter
    sent back, is published unchanged), with the count of its failed deliveries so far and the reason of the
    last one where the job cannot tell it itself; through `producer` as `publish_registration`."""
    if producer is None:
        with app.producer_or_acquire() as pooled:
            publish_job_body(
                app,
                body,
                countdown=countdown,
                retries=retries,
                producer=pooled,
                failed=failed,
                last_failure=last_failure,
            )
        return
    registration_id = body.get("registration_id") if isinstance(body, dict) else None
    task_id = registration_id if isinstance(registration_id, str) and registration_id else str(uuid.uuid4())
    args = (body,)
    message = app.amqp.create_task_message(
        task_id, REGISTER_TASK, args, {}, countdown=countdown, retries=retries
    )
    if failed:
        message.headers[FAILED_DELIVERIES] = failed
    if last_failure:
        message.headers[LAST_FAILURE] = last_failure
    route = app.amqp.router.route({}, REGISTER_TASK, args, {})
    if countdown and _quorum(route["queue"]):
        # A worker would hold a job whose time has not come in memory, unacknowledged, where a quorum
        # queue gives it no room (static prefetch) and the loss of the worker's node would hand it back
        # early. It waits in the delay queues instead, whole seconds (the levels' unit), rounded up so that
        # it never arrives before its `eta`.
        seconds = max(1, math.ceil(countdown))
        route = {
            "exchange": Exchange(DELAYED_DELIVERY_EXCHANGE, type="topic"),
            "routing_key": calculate_routing_key(seconds, route["queue"].routing_key),
        }
    app.amqp.send_task_message(producer, REGISTER_TASK, message, **route, **CONFIRM_DEADLINE)


def _quorum(queue: Queue) -> bool:
    return bool((queue.queue_arguments or {}).get("x-queue-type") == "quorum")


def queued_registrations(app: Celery) -> int:
    """How many registration jobs wait in their queue (ready, not yet delivered to a worker)."""
    with app.connection_for_write() as connection:
        channel: Any = connection.default_channel
        declared = channel.queue_declare(REGISTRATION_QUEUE, passive=True)
        return int(declared.message_count)


def task_message(jobs: Sequence[RegistrationJob]) -> tuple[dict[str, Any], bytes]:
    """Registration jobs as one Celery task message (protocol 2), each job one of its arguments: its headers
    and JSON body. One job's message has the job's registration id as its task id, as Celery's producer
    gives it; a group's has an id of its own."""
    task_id = jobs[0].registration_id if len(jobs) == 1 else str(uuid.uuid4())
    headers: dict[str, Any] = {
        "lang": "py",
        "task": REGISTER_TASK,
        "id": task_id,
        "shadow": None,
        "eta": None,
        "expires": None,
        "group": None,
        "group_index": None,
        "retries": 0,
        "timelimit": [None, None],
        "root_id": task_id,
        "parent_id": None,
        "argsrepr": "",
        "kwargsrepr": "{}",
        "origin": "delivery-api",
        "ignore_result": True,
    }
    body = [
        [job.to_json() for job in jobs],
        {},
        {"callbacks": None, "errbacks": None, "chain": None, "chord": None},
    ]
    return headers, json.dumps(body).encode()


class AmqpPublisher:
    """The API's publisher on RabbitMQ: one connection and one confirming channel, kept open.

    Jobs are published in groups: while a message awaits its confirm, the jobs of the requests that arrive
    meanwhile wait together and go out as the next message, one job per argument (at most `PUBLISH_GROUP`).
    Alone, a job goes at once in a message of its own; under load the broker, the socket and the worker
    handle one message, one confirm and one acknowledgement for many registrations. Each caller returns when
    its job's message is confirmed, or raises.

    Every publish has a deadline (`timeout`): a broker that blocks publishers (a memory or disk alarm) or
    does not answer makes a 503, not a hung request; a job whose caller gave up is left out of the messages
    still to send. After any failure the connection is dropped and the next message connects again, trying
    each URL in turn, starting after the one that failed: the nodes of a cluster, the one lost tried last.
    """

    def __init__(
        self,
        urls: Sequence[str],
        *,
        timeout: float = PUBLISH_TIMEOUT,
        queue_arguments: dict[str, Any] | None = None,
        exchange_type: str = "direct",
    ) -> None:
        self._urls = list(urls)
        self._timeout = timeout
        self._queue_arguments = queue_arguments or {}
        self._exchange_type = aio_pika.ExchangeType(exchange_type)
        #: Which URL the next connection tries first, and which one the current connection uses.
        self._first = 0
        self._current = 0
        self._lock = asyncio.Lock()
        self._connection: aio_pika.abc.AbstractConnection | None = None
        #: The confirming channel of the connection (aiormq's, under aio-pika's wrapper), kept open.
        self._channel: aiormq.Channel | None = None
        self._closing: set[asyncio.Task[None]] = set()
        #: The jobs of concurrent requests, sent as one message.
        self._groups: Grouped[RegistrationJob, None] = Grouped(
            self._send_message, closed=lambda: ConnectionError("the publisher is closed"), limit=PUBLISH_GROUP
        )

    async def connect(self) -> None:
        """Open the connection now rather than with the first publish."""
        await self._connect()

    async def publish(self, job: RegistrationJob) -> None:
        """Return when `job` is confirmed by the broker, within the deadline; raise otherwise."""
        await self._groups.submit(job, within=self._timeout)

    async def _send_message(self, jobs: list[RegistrationJob], deadline: float | None) -> list[None]:
        headers, body = task_message(jobs)
        # The properties aio-pika's Message would make, built directly; the frames go through the connection's
        # channel itself (aio-pika's Exchange.publish forwards to it), which waits for the broker's confirm
        # and raises on a nack and, the message being mandatory, on a return. `wait=False`: the publish does
        # not wait for the socket's write buffer to drain first, the confirm comes after it anyway (a task
        # switch and a future less per message; a blocked broker is still the deadline's 503).
        properties = aiormq.spec.Basic.Properties(
            content_type="application/json",
            content_encoding="utf-8",
            headers=headers,
            delivery_mode=PERSISTENT,
            priority=0,
            correlation_id=headers["id"],
        )
        try:
            async with asyncio.timeout_at(deadline):
                channel = self._channel or await self._connect()
                await channel.basic_publish(
                    body,
                    exchange=REGISTRATION_QUEUE,
                    routing_key=REGISTRATION_QUEUE,
                    properties=properties,
                    mandatory=True,
                    wait=False,
                )
        except Exception:
            await self._drop()
            raise
        return [None] * len(jobs)

    async def _connect(self) -> aiormq.Channel:
        async with self._lock:
            if self._channel is not None:
                return self._channel
            errors = []
            # A node whose host is gone answers nothing until the timeout: each has its share of the
            # deadline, so the others are still tried within it.
            attempt_timeout = self._timeout / len(self._urls)
            for offset in range(len(self._urls)):
                index = (self._first + offset) % len(self._urls)
                url = self._urls[index]
                try:
                    connection = await aio_pika.connect(url, timeout=attempt_timeout)
                except (TimeoutError, OSError, aio_pika.exceptions.AMQPError) as exc:
                    errors.append(exc)
                    continue
                try:
                    channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
                    # Declared as Celery declares them, so whichever side comes first, both agree.
                    exchange = await channel.declare_exchange(
                        REGISTRATION_QUEUE, self._exchange_type, durable=True
                    )
                    queue = await channel.declare_queue(
                        REGISTRATION_QUEUE, durable=True, arguments=self._queue_arguments
                    )
                    await queue.bind(exchange, routing_key=REGISTRATION_QUEUE)
                    underlay = await channel.get_underlay_channel()
                    if not isinstance(underlay, aiormq.Channel):
                        raise TypeError(f"aio-pika's channel is not aiormq's: {underlay!r}")
                except BaseException:
                    await connection.close()
                    raise
                self._connection, self._channel, self._current = connection, underlay, index
                logger.info("publisher connected broker=%s", _without_password(url))
                return underlay
            raise ConnectionError(f"no broker answered: {errors!r}")

    async def _drop(self) -> None:
        """Forget the connection; it is closed in the background (a blocked broker would hold up the 503)."""
        connection, self._connection, self._channel = self._connection, None, None
        if connection is not None:
            self._first = (self._current + 1) % len(self._urls)
            task = asyncio.create_task(_close(connection))
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    async def close(self) -> None:
        await self._groups.close()
        await self._drop()
        if self._closing:
            await asyncio.wait(self._closing, timeout=2.0)


async def _close(connection: aio_pika.abc.AbstractConnection) -> None:
    try:
        await asyncio.wait_for(connection.close(), timeout=2.0)
    except Exception as exc:  # the connection is gone either way
        logger.debug("publisher connection closed with error=%r", exc)


def amqp_publisher(settings: Settings) -> AmqpPublisher | None:
    """The API's publisher on the broker of `settings`; None on the embedded broker (Celery's producer)."""
    if settings.CELERY_BROKER_URL is None:
        return None
    return AmqpPublisher(
        str(settings.CELERY_BROKER_URL).split(";"),
        queue_arguments=queue_arguments(settings),
        exchange_type=exchange_type(settings),
    )


def _without_password(url: str) -> str:
    parts = urlsplit(url)
    return parts._replace(netloc=parts.hostname or "").geturl() if parts.password else url

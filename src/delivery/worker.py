"""The Celery app: its configuration, queues, beat schedule and the task wrappers.

The logic lives in `delivery.jobs`; a task here only runs it on the worker process's one event loop.
Start a worker with `celery -A delivery.worker worker`, the scheduler with `celery -A delivery.worker beat`.
"""

import asyncio
import logging
import os
import random
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx
import sqlalchemy.exc
from celery import Celery, Task
from celery.signals import setup_logging, task_prerun, worker_process_shutdown
from kombu import Exchange, Queue
from kombu.transport import sqlalchemy as kombu_sqlalchemy
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from delivery import jobs, logs, metrics
from delivery.config import EMBEDDED_DIR, Settings, get_settings
from delivery.db import create_engine, create_sessionmaker
from delivery.errors import ServiceUnavailable
from delivery.rates import RateCache, new_http_client
from delivery.store import Store, create_store

logger = logging.getLogger(__name__)

REGISTER_TASK = "packages.register"
PRICE_TASK = "packages.price_pending"
RECOVER_TASK = "packages.recover_pending"
#: How often, and after how long without an outcome, pending registrations are published again.
RECOVERY_INTERVAL = 60.0
REGISTRATION_QUEUE = "registrations"
PRICING_QUEUE = "pricing"
EMBEDDED_POLLING_INTERVAL = 0.1
EMBEDDED_PREFETCH = 8
#: Transient failures (database, store) are retried for as long as it takes, backing off to this cap.
MAX_BACKOFF = 60.0
#: A pricing run that meets a transient failure is tried again this many times, sooner: the next beat run
#: would do its work anyway.
PRICE_RETRIES = 3
PRICE_MAX_BACKOFF = 5.0


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
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        # RabbitMQ pushes messages; the embedded broker is polled, so its workers take a few at a time.
        worker_prefetch_multiplier=1 if settings.CELERY_BROKER_URL else EMBEDDED_PREFETCH,
        task_track_started=True,
        task_queues=[Queue(q, Exchange(q), routing_key=q) for q in (REGISTRATION_QUEUE, PRICING_QUEUE)],
        task_default_queue=REGISTRATION_QUEUE,
        task_routes={
            REGISTER_TASK: {"queue": REGISTRATION_QUEUE},
            PRICE_TASK: {"queue": PRICING_QUEUE},
            RECOVER_TASK: {"queue": PRICING_QUEUE},
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
        },
        worker_hijack_root_logger=False,
        enable_utc=True,
    )
    return app


def _broker_url(settings: Settings) -> str:
    if settings.CELERY_BROKER_URL is not None:
        return str(settings.CELERY_BROKER_URL)
    # kombu's SQLAlchemy transport on an SQLite file: each message is taken in a write transaction,
    # so no two consumers take the same message and none reads a half-written one.
    EMBEDDED_DIR.mkdir(parents=True, exist_ok=True)
    # The transport passes its options to create_engine, so its polling interval (1 s by default, a
    # second of latency per idle poll) can only be set on the class.
    kombu_sqlalchemy.Transport.polling_interval = EMBEDDED_POLLING_INTERVAL
    return f"sqla+sqlite:///{(EMBEDDED_DIR / 'broker.sqlite3').resolve()}"


def _broker_options(settings: Settings) -> dict[str, Any]:
    if settings.CELERY_BROKER_URL is not None:
        # Wait for RabbitMQ to confirm each message, so a 202 means the job is in the queue.
        return {"confirm_publish": True}
    return {"connect_args": {"timeout": 30}}


def _result_backend(settings: Settings) -> str:
    if settings.REDIS_URL is not None:
        return str(settings.REDIS_URL)
    folder = (EMBEDDED_DIR / "results").resolve()
    folder.mkdir(parents=True, exist_ok=True)
    return f"file://{folder}"


def publish_registration(app: Celery, job: jobs.RegistrationJob) -> None:
    """Publish a registration job (blocking until the broker confirms it), as `send_task` would, but without
    subscribing to its result: on the Redis backend `send_task` SUBSCRIBEs the publisher to every task's
    result channel (and UNSUBSCRIBEs when the result object goes), round trips that nobody here reads.
    The worker still records the task's states and outcome."""
    args = (job.to_json(),)
    message = app.amqp.create_task_message(job.registration_id, REGISTER_TASK, args, {})
    route = app.amqp.router.route({}, REGISTER_TASK, args, {})
    with app.producer_or_acquire() as producer:
        app.amqp.send_task_message(producer, REGISTER_TASK, message, **route)


settings = get_settings()
app = create_celery(settings)


@setup_logging.connect
def _setup_logging(**_: Any) -> None:
    logs.configure_logging()


@task_prerun.connect
def _log_context(task_id: str, task: Task[Any, Any], **_: Any) -> None:
    # A registration's task id is its registration id: every line of the job carries it.
    logs.registration_id.set(task_id if task.name == REGISTER_TASK else None)


# --- one event loop and one set of connections per worker process ---

T = TypeVar("T")


@dataclass
class Runtime:
    runner: asyncio.Runner
    engine: AsyncEngine
    maker: async_sessionmaker[AsyncSession]
    store: Store
    http: httpx.AsyncClient
    rates: RateCache

    def close(self) -> None:
        async def _close() -> None:
            await self.http.aclose()
            await self.store.close()
            await self.engine.dispose()

        self.runner.run(_close())
        self.runner.close()


_runtime: Runtime | None = None


def runtime() -> Runtime:
    """Created on first use, so each forked pool process makes its own loop and connections."""
    global _runtime
    if _runtime is None:
        engine = create_engine(settings)
        store = create_store(settings)
        http = new_http_client()
        _runtime = Runtime(
            runner=asyncio.Runner(),
            engine=engine,
            maker=create_sessionmaker(engine),
            store=store,
            http=http,
            rates=RateCache(store, http, url=str(settings.CBR_DAILY_URL), ttl=settings.RATE_CACHE_TTL),
        )
    return _runtime


def run(coro: Coroutine[Any, Any, T]) -> T:
    return runtime().runner.run(coro)


@worker_process_shutdown.connect
def _close_runtime(**_: Any) -> None:
    global _runtime
    if _runtime is not None:
        _runtime.close()
        _runtime = None
    metrics.mark_process_dead(os.getpid())


def backoff(retries: int, *, base: float = 1.0, cap: float = MAX_BACKOFF) -> float:
    """Exponential backoff with full jitter."""
    return random.uniform(0, min(cap, base * 2**retries))


TRANSIENT = (ServiceUnavailable, sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError)


@app.task(name=REGISTER_TASK, bind=True, max_retries=None)
def register_package(self: Task[Any, Any], job: dict[str, Any]) -> int | None:
    """Register one accepted package: rate, cost, row, status."""
    rt = runtime()
    try:
        return run(
            jobs.process_registration(
                rt.maker,
                rt.store,
                rt.rates,
                jobs.RegistrationJob.from_json(job),
                retry_window=settings.RATE_RETRY_WINDOW,
            )
        )
    except jobs.RetryLater as exc:
        metrics.JOB_RETRIES.labels(REGISTER_TASK, "rate").inc()
        raise self.retry(countdown=min(backoff(self.request.retries), exc.remaining)) from None
    except TRANSIENT as exc:
        metrics.JOB_RETRIES.labels(REGISTER_TASK, "transient").inc()
        logger.warning(
            "registration job will retry registration_id=%s error=%r", job.get("registration_id"), exc
        )
        raise self.retry(countdown=backoff(self.request.retries), exc=exc) from None


@app.task(name=PRICE_TASK, bind=True, max_retries=PRICE_RETRIES)
def price_pending_packages(self: Task[Any, Any]) -> dict[str, int]:
    """Price every package whose cost is still unknown."""
    rt = runtime()
    try:
        return {"priced": run(jobs.price_now(rt.maker, rt.rates))}
    except TRANSIENT as exc:
        # The database away, or a deadlock with an overlapping run (both update the package counts of the
        # sessions they price, in package order): the batches committed stay done, the rest is tried again.
        metrics.JOB_RETRIES.labels(PRICE_TASK, "transient").inc()
        logger.warning("pricing job will retry error=%r", exc)
        raise self.retry(countdown=backoff(self.request.retries, cap=PRICE_MAX_BACKOFF), exc=exc) from None


def recovery_grace(settings: Settings) -> float:
    """Longer than a healthy job can stay pending: its bank retries, then one last backoff."""
    return settings.RATE_RETRY_WINDOW + 2 * MAX_BACKOFF


@app.task(name=RECOVER_TASK)
def recover_pending_registrations(older_than: float | None = None) -> dict[str, int]:
    """Publish again the jobs of registrations pending for too long (a job lost on its way)."""
    rt = runtime()

    async def publish(job: jobs.RegistrationJob) -> None:
        publish_registration(app, job)

    grace = recovery_grace(settings) if older_than is None else older_than
    return {"republished": run(jobs.recover_pending(rt.store, publish, older_than=grace))}

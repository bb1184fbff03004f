"""The worker's entry point: the Celery app, its tasks, and one event loop per worker process.

The logic lives in `delivery.registration` and `delivery.jobs`; a task runs it on its process's loop.
Start a worker with `celery -A delivery.worker worker`, the scheduler with `celery -A delivery.worker beat`.
Pools: prefork (the default) and solo. A thread pool would share one event loop between threads, and
gevent/eventlet would not run it at all: the worker refuses them at start.
"""

import asyncio
import logging
import os
import time
from collections.abc import Callable, Collection, Coroutine
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import httpx
from celery import Task, bootsteps
from celery.exceptions import ImproperlyConfigured
from celery.signals import setup_logging, task_prerun, worker_process_init, worker_process_shutdown
from celery.worker.request import Request
from celery_batches import Batches, SimpleRequest
from celery_batches.trace import apply_batches_task
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from delivery import deadletters, jobs, logs, maintenance, metrics, registration
from delivery.broker import (
    BATCH_INTERVAL,
    BATCH_SIZE,
    LAST_FAILURE,
    MAINTAIN_TASK,
    PRICE_TASK,
    RECOVER_TASK,
    REGISTER_TASK,
    confirming_producer,
    create_celery,
    embedded_broker_file,
    failed_deliveries,
    publish_job_body,
    publish_registration,
    queued_registrations,
)
from delivery.config import Settings, get_settings
from delivery.db import create_engine, create_sessionmaker
from delivery.errors import RateUnavailable
from delivery.rates import RateCache, new_http_client
from delivery.registration import TRANSIENT, RegistrationJob, backoff
from delivery.store import Store, create_store

logger = logging.getLogger(__name__)

#: A pricing run that meets a transient failure is tried again this many times, sooner: the next beat run
#: would do its work anyway.
PRICE_RETRIES = 3
PRICE_MAX_BACKOFF = 5.0
#: A batch's deadline on its loop (rate, transaction, outcomes), after which it is tried again later; and the
#: pool's hard limit, after which the pool process is replaced and the batch's messages go back to the queue.
BATCH_DEADLINE = 30.0
BATCH_HARD_LIMIT = 60.0
#: After a batch met a transient failure, its pool process waits at most this long for the database and the
#: store to answer again, probing every `RECOVERY_PROBE_EVERY` seconds (each probe bounded by
#: `RECOVERY_PROBE_TIMEOUT`): when they do, the batch's jobs are due at once, not after a backoff that grew
#: while a service was away.
RECOVERY_WAIT = 10.0
RECOVERY_PROBE_EVERY = 0.5
RECOVERY_PROBE_TIMEOUT = 1.0
#: The store key a pool process writes to learn whether the store takes writes again.
PROBE_KEY = "probe:worker"
SUPPORTED_POOLS = ("prefork", "solo")

settings = get_settings()
app = create_celery(settings)


class SupportedPool(bootsteps.StartStopStep):
    """Refuse, at start, a pool that would lose or stall registrations."""

    def __init__(self, worker: Any, **kwargs: Any) -> None:
        pool = worker.pool_cls if isinstance(worker.pool_cls, str) else worker.pool_cls.__module__
        name = pool.rsplit(".", 1)[-1].split(":")[0]
        if name not in SUPPORTED_POOLS:
            raise ImproperlyConfigured(
                f"the {name} pool is not supported: use --pool prefork (the default) or --pool solo"
            )
        super().__init__(worker, **kwargs)


app.steps["worker"].add(SupportedPool)


@setup_logging.connect
def _setup_logging(**_: Any) -> None:
    logs.configure_logging()


@task_prerun.connect
def _log_context(**_: Any) -> None:
    # A batch's lines name each registration themselves; no other task runs for one registration.
    logs.registration_id.set(None)


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
        # No ping before each checkout: a connection that died fails its statement, a transient failure, and
        # the batch is tried again on a fresh one. A round trip fewer per batch.
        engine = create_engine(settings, pool_pre_ping=False)
        store = create_store(settings)
        http = new_http_client()
        _runtime = Runtime(
            runner=asyncio.Runner(loop_factory=loop_factory()),
            engine=engine,
            maker=create_sessionmaker(engine),
            store=store,
            http=http,
            rates=RateCache(store, http, url=str(settings.CBR_DAILY_URL), ttl=settings.RATE_CACHE_TTL),
        )
    return _runtime


def run(coro: Coroutine[Any, Any, T]) -> T:
    return runtime().runner.run(coro)


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's event loop where it is installed (as uvicorn picks it for the API), else asyncio's own."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


#: How long a new pool process may spend opening its connections before it takes jobs (Celery gives a
#: process 4 s to start, `worker_proc_alive_timeout`).
WARM_UP_TIMEOUT = 2.0


async def _reach_backends(rt: Runtime) -> None:
    """A round trip to the database and a write to the store; raises if either fails (the caller bounds it).

    A write, not a ping: a Redis out of memory, or one demoted to a replica, answers a ping and refuses the
    writes a batch makes."""
    async with rt.engine.connect() as conn:
        await conn.exec_driver_sql("SELECT 1")
    await rt.store.set(PROBE_KEY, str(os.getpid()), ttl=RECOVERY_PROBE_TIMEOUT)


@worker_process_init.connect
def _warm_up(**_: Any) -> None:
    """Open a pool process's database and store connections before its first batch, so the first
    registrations after a start do not wait for them. A service down now only delays that to the first
    batch, which retries as always."""

    started = time.monotonic()
    try:
        run(asyncio.wait_for(_reach_backends(runtime()), WARM_UP_TIMEOUT))
    except Exception as exc:
        logger.warning("pool process not warmed up pid=%s error=%r", os.getpid(), exc)
    else:
        logger.info(
            "pool process warmed up pid=%s elapsed_ms=%.0f", os.getpid(), (time.monotonic() - started) * 1000
        )


@worker_process_shutdown.connect
def _close_runtime(**_: Any) -> None:
    global _runtime
    if _runtime is not None:
        _runtime.close()
        _runtime = None
    metrics.mark_process_dead(os.getpid())


class RegistrationBatches(Batches):  # type: ignore[misc]
    """celery-batches' task, with two changes to how a batch is handed to the pool.

    A batch is made only when a pool process is free to take it: what arrives meanwhile stays buffered and
    joins the next batch, so a busy worker writes fewer, larger batches instead of queueing many small ones
    behind each other (latency that grows with the load). And its messages are acknowledged only when its
    body returned True: packages committed, outcomes recorded, retries published. After an error that
    escaped they go back to the queue: the packages' unique registration ids make a second run of a
    committed batch create nothing. After its pool process was lost, each job is tried again later, alone
    (`_lost`), so that a job that kills its process is not a hot loop."""

    _in_flight = 0

    def flush(self, requests: Collection[Request]) -> Any:
        """Hand the requests to the free pool processes, in batches of at most `BATCH_SIZE` jobs (a message
        may carry several); what no free process takes goes back to the buffer, for the next flush."""
        batches = jobs_batches(requests, BATCH_SIZE)
        free = max(1, int(self._pool.num_processes or 1)) - self._in_flight
        for request in (request for batch in batches[max(0, free) :] for request in batch):
            self._buffer.put(request)
        result = None
        for batch in batches[: max(0, free)]:
            result = self._send(batch)
        return result

    def _send(self, requests: list[Request]) -> Any:
        self._in_flight += 1
        batch = ([SimpleRequest.from_request(request) for request in requests],)

        def on_return(result: object) -> None:
            self._in_flight -= 1
            for request in requests:
                if result is True:
                    request.acknowledge()
                else:
                    request.reject(requeue=True)

        def on_error(error: object) -> None:
            self._in_flight -= 1
            _lost(requests, error)

        return self._pool.apply_async(
            apply_batches_task,
            (self, batch, 0, None),
            callback=on_return,
            error_callback=on_error,
            timeout=BATCH_HARD_LIMIT,
        )


def _lost(requests: list[Request], error: object) -> None:
    """The pool process running a batch was lost (killed for its memory, or past the hard time limit), and
    with it any account of which job was the cause: each job counts a failed delivery and comes back alone
    after a growing delay, as a job that failed. At its `DEAD_LETTER_AFTER`th it comes back at once, with
    the reason, to be dead-lettered without being run again. The messages are acknowledged once their jobs
    are published again; when they cannot be, they go back to the queue as they are."""
    # billiard hands over an ExceptionInfo, which may wrap the exception once more.
    cause = getattr(error, "exception", error)
    cause = getattr(cause, "exc", cause)
    reason = f"the worker process running it was lost: {cause!r}"[:500]
    limit = settings.DEAD_LETTER_AFTER
    try:
        with confirming_producer(app) as producer:
            for request in requests:
                deliveries = failed_deliveries(request.request_dict) + 1
                for body in request.args:
                    if deliveries >= limit:
                        publish_job_body(app, body, producer=producer, failed=deliveries, last_failure=reason)
                        continue
                    delay = deadletters.failure_delay(deliveries)
                    logger.warning(
                        "registration job failed registration_id=%s delivery=%s of %s, tried again in %.1f s"
                        " reason=%s",
                        registration.Failure(body, reason).registration_id,
                        deliveries,
                        limit,
                        delay,
                        reason,
                    )
                    publish_job_body(app, body, countdown=delay, producer=producer, failed=deliveries)
    except Exception as exc:
        logger.error("jobs of a lost batch not published again, back to the queue error=%r", exc)
        for request in requests:
            request.reject(requeue=True)
        return
    metrics.JOB_RETRIES.labels(REGISTER_TASK, "failure").inc(sum(len(request.args) for request in requests))
    for request in requests:
        request.acknowledge()


def jobs_batches(requests: Collection[Request], size: int) -> list[list[Request]]:
    """The requests in order, cut into batches of at most `size` jobs each (a request holds one job per
    argument); a request with more jobs than that is a batch of its own, and so is a job that failed before:
    should it kill its pool process again, it takes no other job with it."""
    batches: list[list[Request]] = []
    jobs = 0
    for request in requests:
        count = len(request.args)
        alone = failed_deliveries(request.request_dict) > 0
        if alone or not batches or jobs + count > size:
            batches.append([])
            jobs = 0
        batches[-1].append(request)
        jobs = size if alone else jobs + count
    return batches


@app.task(
    name=REGISTER_TASK,
    base=RegistrationBatches,
    flush_every=BATCH_SIZE,
    flush_interval=BATCH_INTERVAL,
    ignore_result=True,
)
def register_packages(requests: list[SimpleRequest]) -> bool:
    """Register a batch of accepted packages; jobs to try later are published again before it returns.

    A message holds one job per argument: one, or the group the API's publisher sent together. A job this
    worker cannot read (a body a newer API wrote, a corrupted one) is a failed delivery of its own; the
    others go on."""
    batch: list[RegistrationJob] = []
    #: The failed deliveries each job had before this one (its message's count); the jobs failed here.
    failed_before: dict[str, int] = {}
    failures: list[tuple[registration.Failure, int]] = []
    for request in requests:
        before = failed_deliveries(request.request_dict)
        lost = (request.request_dict or {}).get(LAST_FAILURE)
        for body in request.args:
            if isinstance(lost, str) and before >= settings.DEAD_LETTER_AFTER:
                # Its worker process was lost at every delivery it had: it is not run again.
                failures.append((registration.Failure(body, lost), before - 1))
                continue
            try:
                job = RegistrationJob.from_json(body)
            except Exception as exc:
                failures.append((registration.Failure(body, f"unreadable job: {exc!r}"[:500]), before))
                continue
            batch.append(job)
            failed_before[job.registration_id] = max(before, failed_before.get(job.registration_id, 0))
    retries = max(int((request.request_dict or {}).get("retries") or 0) for request in requests)
    # A line about one job names that job alone: the lines about a batch of several name none.
    with logs.about_registrations(batch[0].registration_id) if len(batch) == 1 else nullcontext():
        try:
            done = _register_batch(batch, retries, failed_before) if batch else True
        except Exception as exc:
            # Neither a job's failure (narrowed down inside) nor a service away: the batch as a whole failed
            # (the store refusing a command, say). Rejected, it would come back at once, for ever, a traceback
            # each time: instead each of its jobs counts a failed delivery and is tried again later, alone.
            reason = registration.failure_reason(exc)
            logger.error("registration batch failed size=%s error=%s", len(batch), reason)
            failures += [
                (registration.Failure(job.to_json(), reason), failed_before[job.registration_id])
                for job in batch
            ]
            done = True
    _after_failures(failures)
    return done


def _register_batch(batch: list[RegistrationJob], retries: int, failed_before: dict[str, int]) -> bool:
    logger.info(
        "registration batch taken size=%s retries=%s pid=%s registration_ids=%s",
        len(batch),
        retries,
        os.getpid(),
        ",".join(job.registration_id for job in batch),
    )
    rt = runtime()

    async def attempt() -> registration.BatchOutcome:
        async with asyncio.timeout(BATCH_DEADLINE):
            return await registration.register_batch(
                rt.maker,
                rt.store,
                rt.rates,
                batch,
                create_packages=jobs.create_packages,
                retry_window=settings.RATE_RETRY_WINDOW,
                retries=retries,
            )

    failed: list[registration.Failure] = []
    try:
        outcome = run(attempt())
        later, failed = outcome.later, outcome.failed
    except TRANSIENT as exc:
        metrics.JOB_RETRIES.labels(REGISTER_TASK, "transient").inc(len(batch))
        logger.warning("registration batch will retry size=%s retries=%s error=%r", len(batch), retries, exc)
        back_after = run(_back_after(rt, RECOVERY_WAIT))
        if back_after is None:
            later = [registration.Retry(job, backoff(retries)) for job in batch]
        else:
            logger.info(
                "database and store answer again after_s=%.1f; registration batch retried now size=%s",
                back_after,
                len(batch),
            )
            later = [registration.Retry(job, 0.0) for job in batch]
    if later:
        with confirming_producer(app) as producer:
            for retry in later:
                # A job that failed before keeps its count through a wait for the bank or a service.
                publish_registration(
                    app,
                    retry.job,
                    countdown=retry.delay,
                    retries=retries + 1,
                    producer=producer,
                    failed=failed_before.get(retry.job.registration_id, 0),
                )
    _after_failures([(f, failed_before.get(f.registration_id or "", 0)) for f in failed])
    return True


def _after_failures(failed: list[tuple[registration.Failure, int]]) -> None:
    """Each failed job (with its failed deliveries before this one) is tried again later, alone, after a
    growing delay; or, at its `DEAD_LETTER_AFTER`th delivery or when it cannot succeed as it is, is
    dead-lettered and its registration `failed`. One line each, without a traceback: the reason says it."""
    letters: list[deadletters.Letter] = []
    again: list[tuple[Any, float, int]] = []
    limit = settings.DEAD_LETTER_AFTER
    for failure, before in failed:
        deliveries = before + 1
        about = failure.registration_id
        with logs.about_registrations(about) if about is not None else nullcontext():
            if failure.final or deliveries >= limit:
                logger.error(
                    "registration job failed registration_id=%s delivery=%s of %s, dead-lettered reason=%s",
                    failure.registration_id,
                    deliveries,
                    limit,
                    failure.reason,
                )
                letters.append(deadletters.Letter(failure, deliveries))
                continue
            delay = deadletters.failure_delay(deliveries)
            logger.warning(
                "registration job failed registration_id=%s delivery=%s of %s, tried again in %.1f s"
                " reason=%s",
                failure.registration_id,
                deliveries,
                limit,
                delay,
                failure.reason,
            )
        again.append((failure.body, delay, deliveries))
    if again:
        metrics.JOB_RETRIES.labels(REGISTER_TASK, "failure").inc(len(again))
        with confirming_producer(app) as producer:
            for body, delay, deliveries in again:
                publish_job_body(app, body, countdown=delay, producer=producer, failed=deliveries)
    if not letters:
        return
    rt = runtime()
    try:
        run(deadletters.keep(rt.maker, letters))
    except Exception as exc:
        # Not kept (the database away): each is delivered once more, as its last delivery.
        logger.warning("dead letters not kept, delivered again count=%s error=%r", len(letters), exc)
        with confirming_producer(app) as producer:
            for letter in letters:
                publish_job_body(
                    app,
                    letter.failure.body,
                    countdown=deadletters.failure_delay(letter.deliveries),
                    producer=producer,
                    failed=max(letter.deliveries, limit) - 1,
                )
        return
    try:
        run(deadletters.mark_failed(rt.store, letters))
    except Exception as exc:
        # Kept, their statuses still pending: the letters are what an operator sends back.
        logger.warning("dead letters kept, their statuses not written count=%s error=%r", len(letters), exc)


async def _answers(rt: Runtime) -> bool:
    """Whether the database and the store both answer now."""
    try:
        async with asyncio.timeout(RECOVERY_PROBE_TIMEOUT):
            await _reach_backends(rt)
    except Exception:
        return False
    return True


async def _back_after(rt: Runtime, limit: float) -> float | None:
    """The seconds until the database and the store answered again, if one of them did not answer at first
    and both did within `limit`; None otherwise (both answered at once: the failure was something else, which
    the usual backoff spaces out; or they are still away)."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    if await _answers(rt):
        return None
    while (waited := loop.time() - started) < limit:
        await asyncio.sleep(min(RECOVERY_PROBE_EVERY, limit - waited))
        if await _answers(rt):
            return loop.time() - started
    return None


# A bank that is away is expected: `throws` has Celery log such a run's failure in one line, no traceback.
@app.task(name=PRICE_TASK, bind=True, max_retries=PRICE_RETRIES, throws=(RateUnavailable,))
def price_pending_packages(self: Task[Any, Any]) -> dict[str, int]:
    """Price every package whose cost is still unknown."""
    rt = runtime()
    try:
        priced = run(jobs.price_now(rt.maker, rt.rates))
    except RateUnavailable as exc:
        # The run fails visibly (its state says why); the next one tries again.
        metrics.PRICING_RUNS.labels("no_rate").inc()
        logger.warning("pricing run without a rate, the next run tries again error=%r", exc)
        run(jobs.record_pricing_run(rt.store, outcome="no_rate", priced=0))
        raise
    except TRANSIENT as exc:
        # The database away, or a deadlock the batches' ordered locks did not prevent: the batches committed
        # stay done, the rest is tried again.
        metrics.JOB_RETRIES.labels(PRICE_TASK, "transient").inc()
        logger.warning("pricing job will retry error=%r", exc)
        raise self.retry(countdown=backoff(self.request.retries, cap=PRICE_MAX_BACKOFF), exc=exc) from None
    metrics.PRICING_RUNS.labels("ok").inc()
    metrics.PACKAGES_PRICED.inc(priced)
    run(jobs.record_pricing_run(rt.store, outcome="ok", priced=priced))
    return {"priced": priced}


def recovery_grace(settings: Settings) -> float:
    """Longer than a registration stays untouched while its job is alive: its bank retries, then one last
    backoff."""
    return settings.RATE_RETRY_WINDOW + 2 * registration.MAX_BACKOFF


@app.task(name=RECOVER_TASK)
def recover_pending_registrations(older_than: float | None = None) -> dict[str, int]:
    """Publish again the jobs of registrations untouched for too long (a job lost on its way)."""
    rt = runtime()
    grace = recovery_grace(settings) if older_than is None else older_than
    # Each publish waits for its confirm within the publish timeout: a broker that blocks publishers fails
    # this run (the next one tries again), rather than holding a pool process.
    with confirming_producer(app) as producer:

        async def publish(job: RegistrationJob) -> None:
            publish_registration(app, job, producer=producer)

        async def queued() -> int:
            return await asyncio.to_thread(queued_registrations, app)

        republished = run(registration.recover_pending(rt.store, publish, queued, older_than=grace))
    return {"republished": republished}


#: Delivered messages the embedded broker keeps longer than this are deleted from its file.
DELIVERED_KEPT = timedelta(hours=1)


@app.task(name=MAINTAIN_TASK)
def clean() -> dict[str, int]:
    """Delete expired sessions that own no package (once no registration of theirs can still be pending),
    and the embedded broker's delivered messages."""
    rt = runtime()
    grace = timedelta(seconds=settings.STATUS_TTL)
    sessions = run(maintenance.delete_expired_sessions(rt.maker, grace=grace))
    messages = 0
    if settings.CELERY_BROKER_URL is None:
        messages = maintenance.purge_embedded_broker(embedded_broker_file(), older_than=DELIVERED_KEPT)
    logger.info("maintenance done sessions_deleted=%s broker_messages_deleted=%s", sessions, messages)
    return {"sessions_deleted": sessions, "broker_messages_deleted": messages}

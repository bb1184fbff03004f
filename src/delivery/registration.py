"""A registration, from the 202 to its package: the job and its status record, accepting, the worker's batch,
the outcome, and recovery of a job lost on its way.

The API and the worker share this module; neither imports the other.

1. `accept_registration` (API): one store round trip writes the pending status (with the job inside, for
   recovery) and claims the Idempotency-Key; then the job is published, confirmed by the broker; then 202.
   A job the broker did not confirm in time may still reach it: the request withdraws its registration (its
   fate key marked withdrawn) before answering 503, and a worker skips a withdrawn job.
2. `register_batch` (worker): takes its jobs (their fate keys marked taken, the withdrawn ones left out);
   for the rest, one rate read, one transaction that creates every package with its cost, cost log and daily
   totals (`jobs.create_packages`), then one store round trip that writes every outcome. The broker's
   messages are acknowledged after that returns. A job that fails is narrowed down and handed back
   (`Failure`): the worker tries it again later, alone, and after `DEAD_LETTER_AFTER` deliveries
   dead-letters it (`delivery.deadletters`).
3. `recover_pending` (beat): a pending registration untouched for a long while, with no job waiting in the
   queue, lost its job: it is published again from its status.

Withdrawing and taking are one race in the store, decided by whichever writes the fate key first: a request
whose registration was taken answers 202, since that job is registered whatever the broker said.
"""

import asyncio
import hashlib
import json
import logging
import random
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import sqlalchemy.exc
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from delivery import logs, metrics
from delivery.errors import AnswerLost, NotFound, RateUnavailable, RegistrationImpossible, ServiceUnavailable
from delivery.models import Package
from delivery.rates import Rate, RateCache
from delivery.schemas import PackageCreate, RegistrationState
from delivery.store import Store

logger = logging.getLogger(__name__)

#: The registrations still pending, scored by when a job of theirs was last published or attempted.
PENDING_INDEX = "registrations:pending"
#: The namespace of registration ids derived from an Idempotency-Key (a fixed, random UUID).
IDEMPOTENCY_NAMESPACE = uuid.UUID("6f1c7f0e-2b8a-4d59-9a43-1f4e8c2d7b90")
#: Transient failures are tried again, backing off (with full jitter) up to this many seconds.
MAX_BACKOFF = 60.0
#: How long a registration stays marked taken: longer than any request that stored it may still try to
#: withdraw it (its publish deadline and a store round trip).
TAKEN_TTL = 600.0
#: A request that could neither store its registration for sure nor withdraw it tries to withdraw it again,
#: this often, for this long: less than recovery's grace (`worker.recovery_grace`), which would publish it.
WITHDRAW_RETRY_EVERY = 1.0
WITHDRAW_RETRY_FOR = 60.0
#: Those withdrawals, running after their requests were answered.
_background: set["asyncio.Task[None]"] = set()

#: What may pass by itself: a backing service away or overloaded, a deadlock, a pool or a deadline exhausted.
TRANSIENT: tuple[type[Exception], ...] = (
    ServiceUnavailable,
    sqlalchemy.exc.OperationalError,
    sqlalchemy.exc.InterfaceError,
    sqlalchemy.exc.TimeoutError,
    TimeoutError,
    ConnectionError,
)


def status_key(status_id: uuid.UUID | str) -> str:
    return f"status:{status_id}"


def fate_key(registration_id: uuid.UUID | str) -> str:
    """Whether a registration was taken (by a worker, or by a request answered 202) or withdrawn."""
    return f"fate:{registration_id}"


def claim_key(session_id: int, key: str) -> str:
    """The key that holds which registration a session's Idempotency-Key names."""
    return f"idem:{session_id}:{hashlib.sha256(key.encode()).hexdigest()}"


@dataclass(frozen=True, slots=True)
class RegistrationJob:
    """What the registration job carries through the broker: plain JSON, money as strings."""

    registration_id: str
    session_id: int
    name: str
    weight_kg: str
    type_id: int
    content_value_usd: str
    accepted_at: float

    def to_json(self) -> dict[str, Any]:
        # Not dataclasses.asdict: its deep copy costs more than the rest of accepting a registration.
        return {
            "registration_id": self.registration_id,
            "session_id": self.session_id,
            "name": self.name,
            "weight_kg": self.weight_kg,
            "type_id": self.type_id,
            "content_value_usd": self.content_value_usd,
            "accepted_at": self.accepted_at,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "RegistrationJob":
        return cls(**data)

    @property
    def weight(self) -> Decimal:
        return Decimal(self.weight_kg)

    @property
    def value(self) -> Decimal:
        return Decimal(self.content_value_usd)


@dataclass(frozen=True, slots=True)
class StatusRecord:
    session_id: int
    state: RegistrationState
    package_id: int | None = None
    error_message: str | None = None
    #: While pending, the job itself, so a job lost on its way can be published again.
    job: dict[str, Any] | None = None

    def dumps(self) -> str:
        return json.dumps(
            {
                "session_id": self.session_id,
                "state": self.state,
                "package_id": self.package_id,
                "error_message": self.error_message,
                "job": self.job,
            }
        )

    @classmethod
    def loads(cls, raw: str) -> "StatusRecord":
        return cls(**json.loads(raw))


Publisher = Callable[[RegistrationJob], Awaitable[None]]


def keyed_registration_id(session_id: int, idempotency_key: str, data: PackageCreate) -> uuid.UUID:
    """The registration id of a session's Idempotency-Key with this parcel, the same on every retry.

    The store remembers a key for STATUS_TTL, but may forget it sooner (a Redis restart without persistence;
    a 503 whose job reached the queue after all). A retry then publishes the same registration id again, and
    the package's unique registration id still makes it one package. The parcel is part of the name: a key
    used again, once the store forgot it, for another parcel is another registration, never the old package.
    """
    parcel = data.model_dump_json()
    return uuid.uuid5(IDEMPOTENCY_NAMESPACE, f"{session_id}\n{idempotency_key}\n{parcel}")


# --- 1. accepting (the API) ---


async def accept_registration(
    store: Store,
    publish: Publisher,
    *,
    session_id: int,
    data: PackageCreate,
    idempotency_key: str | None,
    status_ttl: int,
) -> uuid.UUID:
    """Store a pending status and publish the job; the registration id once it will be registered.

    Raises ServiceUnavailable (a 503) only when nothing of this request can be registered any more: its
    registration withdrawn, or never stored. With an Idempotency-Key whose registration is stored, that
    registration is the answer (see `_join`).
    """
    registration_id = (
        uuid.uuid4() if idempotency_key is None else keyed_registration_id(session_id, idempotency_key, data)
    )
    job = RegistrationJob(
        registration_id=str(registration_id),
        session_id=session_id,
        name=data.name,
        weight_kg=str(data.weight_kg),
        type_id=data.type_id,
        content_value_usd=str(data.content_value_usd),
        accepted_at=time.time(),
    )
    attempt = _Attempt(
        store, job, None if idempotency_key is None else claim_key(session_id, idempotency_key)
    )
    for _ in range(2):
        held = await attempt.store_pending(status_ttl)
        if held is None:
            return await attempt.publish_or_withdraw(publish, status_ttl)
        held_id, record = held
        if record.state != "pending" or record.job is None or await _join(store, publish, held_id, record):
            return held_id
        # Withdrawn by the request that stored it, after this one's job was confirmed: stored again.
    raise ServiceUnavailable("store")


@dataclass(frozen=True, slots=True)
class _Attempt:
    """One request's attempt at a registration: its status stored, its job published, or withdrawn."""

    store: Store
    job: RegistrationJob
    claim: str | None

    def pending_record(self) -> str:
        """The status this attempt stores: its withdrawal undoes this one, never a later attempt's."""
        return StatusRecord(self.job.session_id, "pending", job=self.job.to_json()).dumps()

    async def store_pending(self, status_ttl: int) -> tuple[uuid.UUID, StatusRecord] | None:
        """Store the pending status (None), or find the registration the claim holds (its id and record)."""
        registration_id = self.job.registration_id
        try:
            held = await self.store.put_pending(
                status_key(registration_id),
                self.pending_record(),
                ttl=status_ttl,
                index=PENDING_INDEX,
                member=registration_id,
                score=self.job.accepted_at,
                fate=fate_key(registration_id),
                claim=self.claim,
            )
        except AnswerLost:
            # The status may have been written before the answer was lost: withdrawn, so that recovery
            # never publishes it; while the store does not answer, again in the background, well within
            # recovery's grace. Nothing was published: the 503 stands. (A store that refused wrote nothing.)
            if await self.withdraw(status_ttl) is None:
                _in_background(self.withdraw_until_done(status_ttl))
            raise
        if held is None:
            return None
        held_key, raw = held
        return uuid.UUID(held_key.removeprefix(status_key(""))), StatusRecord.loads(raw)

    async def publish_or_withdraw(self, publish: Publisher, status_ttl: int) -> uuid.UUID:
        registration_id = uuid.UUID(self.job.registration_id)
        try:
            await _publish_or_unavailable(publish, self.job)
        except ServiceUnavailable:
            if await self.withdraw(status_ttl) is not False:
                # Withdrawn: nothing of this request will be registered.
                raise
            logger.warning(
                "registration kept although its publish failed registration_id=%s: already taken",
                registration_id,
            )
        metrics.REGISTRATIONS_ACCEPTED.inc()
        logger.info(
            "registration accepted registration_id=%s session_id=%s", registration_id, self.job.session_id
        )
        return registration_id

    async def withdraw_until_done(self, status_ttl: int) -> None:
        loop = asyncio.get_running_loop()
        give_up = loop.time() + WITHDRAW_RETRY_FOR
        while loop.time() < give_up:
            await asyncio.sleep(WITHDRAW_RETRY_EVERY)
            if await self.withdraw(status_ttl, quiet=True) is not None:
                return
        logger.error(
            "registration refused but not withdrawn registration_id=%s: recovery may still register it",
            self.job.registration_id,
        )

    async def withdraw(self, status_ttl: int, *, quiet: bool = False) -> bool | None:
        """True: withdrawn; False: taken already, it will be registered; None: the store did not answer, so
        the status (if it was written) stays pending and recovery publishes its job."""
        registration_id = self.job.registration_id
        try:
            withdrawn = await self.store.withdraw(
                status_key(registration_id),
                self.pending_record(),
                fate=fate_key(registration_id),
                ttl=status_ttl,
                index=PENDING_INDEX,
                member=registration_id,
                claim=self.claim,
            )
        except ServiceUnavailable as exc:
            if not quiet:
                logger.warning(
                    "registration could not be withdrawn registration_id=%s error=%r", registration_id, exc
                )
            return None
        if withdrawn:
            metrics.REGISTRATIONS_WITHDRAWN.inc()
            logger.info("registration withdrawn registration_id=%s", registration_id)
        return withdrawn


def _in_background(work: Coroutine[Any, Any, None]) -> None:
    task = asyncio.create_task(work)
    _background.add(task)
    task.add_done_callback(_background.discard)


async def _join(store: Store, publish: Publisher, registration_id: uuid.UUID, record: StatusRecord) -> bool:
    """A second request for a pending registration (its Idempotency-Key's): whether it will be registered.

    Its job is published again (its first request may still fail to), then the registration is taken, so
    that its first request can no longer withdraw it: from then on it is registered, with the job of either
    request or, both lost, the job recovery publishes from the pending status. False when the first request
    withdrew it first.
    """
    assert record.job is not None
    try:
        await _publish_or_unavailable(publish, RegistrationJob.from_json(record.job))
    except ServiceUnavailable:
        confirmed = False
    else:
        confirmed = True
    (taken,) = await store.take([fate_key(registration_id)], ttl=TAKEN_TTL)
    if not taken and not confirmed:
        raise ServiceUnavailable("broker")
    return taken


async def _publish_or_unavailable(publish: Publisher, job: RegistrationJob) -> None:
    try:
        await publish(job)
    except Exception as exc:
        logger.warning("registration not published registration_id=%s error=%r", job.registration_id, exc)
        raise ServiceUnavailable("broker") from exc


async def get_status(store: Store, db: AsyncSession, session_id: int, status_id: uuid.UUID) -> StatusRecord:
    """The status record; if the store no longer has it, the package made for it, if there is one.

    The store is the fast path and the only record of pending and failed registrations; the package's
    unique registration id is the lasting record of a registered one (the store may lose its keys).
    """
    raw = await store.get(status_key(status_id))
    record = None if raw is None else StatusRecord.loads(raw)
    if record is None:
        package_id = await db.scalar(
            select(Package.id).where(Package.registration_id == status_id, Package.session_id == session_id)
        )
        if package_id is not None:
            return StatusRecord(session_id, "registered", package_id=package_id)
    if record is None or record.session_id != session_id:
        raise NotFound("registration status")
    return record


# --- 2. the worker's batch ---


@dataclass(frozen=True, slots=True)
class Retry:
    """A job to publish again after `delay` seconds."""

    job: RegistrationJob
    delay: float


def backoff(retries: int, *, base: float = 1.0, cap: float = MAX_BACKOFF) -> float:
    """Exponential backoff with full jitter."""
    return random.uniform(0, min(cap, base * 2**retries))


@dataclass(frozen=True, slots=True)
class Failure:
    """A job that failed in this delivery: its body as the worker received it, and why.

    `final`: it cannot succeed as it is (`RegistrationImpossible`), so it is dead-lettered at once; any other
    failure is tried again later, alone, until its deliveries run out.
    """

    body: Any
    reason: str
    final: bool = False

    @property
    def registration_id(self) -> str | None:
        """The registration the body names, if it names one that could be (a UUID's text is 36 long)."""
        value = self.body.get("registration_id") if isinstance(self.body, dict) else None
        return value if isinstance(value, str) and 0 < len(value) <= 64 else None

    @property
    def session_id(self) -> int | None:
        value = self.body.get("session_id") if isinstance(self.body, dict) else None
        valid = isinstance(value, int) and not isinstance(value, bool) and 0 < value < 2**63
        return value if valid else None


@dataclass(slots=True)
class BatchOutcome:
    """What is left of a batch: the jobs to try again later (waiting for the bank), the jobs that failed."""

    later: list[Retry]
    failed: list[Failure]


def failure_reason(exc: BaseException) -> str:
    """An error as a failed status and a dead letter show it: the driver's own message for a database error
    (without the statement and its parameters), cut to a readable length."""
    if isinstance(exc, RegistrationImpossible):
        return str(exc)[:500]
    cause = exc.orig if isinstance(exc, sqlalchemy.exc.DBAPIError) and exc.orig is not None else exc
    return f"{type(cause).__name__}: {cause}"[:500]


#: How long the database may take to answer the probe after a batch met a transient-looking error.
PROBE_TIMEOUT = 1.0


async def database_answers(maker: async_sessionmaker[AsyncSession]) -> bool:
    """Whether the database answers a trivial statement now."""
    try:
        async with asyncio.timeout(PROBE_TIMEOUT), maker() as db:
            await db.execute(text("SELECT 1"))
    except Exception:
        return False
    return True


#: Registration id -> package id; with `existing`, those whose package existed before (a job run twice).
CreatePackages = Callable[
    [async_sessionmaker[AsyncSession], Sequence[RegistrationJob], Rate | None],
    Awaitable[dict[str, int]],
]


async def register_batch(
    maker: async_sessionmaker[AsyncSession],
    store: Store,
    rates: RateCache,
    batch: Sequence[RegistrationJob],
    *,
    create_packages: CreatePackages,
    retry_window: float,
    retries: int = 0,
) -> BatchOutcome:
    """Register a batch: the rate, the packages (one transaction), the outcomes (one store round trip).

    Returns the jobs to try again later (those waiting for the bank while their retry window is open) and
    the jobs that failed. A service away propagates (the caller tries the whole batch again later); any
    other failure, or a transient-looking one while the database answers (a statement it refuses), is
    narrowed down to the job that causes it, and that job is handed back as a `Failure`, its status still
    pending: the caller decides whether it is tried again or dead-lettered. A job whose registration was
    withdrawn is left out, and nothing is written for it.
    """
    batch = await _take(store, batch)
    if not batch:
        return BatchOutcome([], [])
    await store.index_touch(PENDING_INDEX, [job.registration_id for job in batch], time.time())
    rate: Rate | None
    later: list[Retry] = []
    now_batch = list(batch)
    try:
        rate = await rates.get()
    except RateUnavailable as exc:
        rate = None
        now = time.time()
        now_batch = []
        for job in batch:
            remaining = job.accepted_at + retry_window - now
            if remaining > 0:
                later.append(Retry(job, min(backoff(retries), remaining)))
            else:
                with logs.about_registrations(job.registration_id):
                    logger.warning(
                        "registering without a cost registration_id=%s reason=%s", job.registration_id, exc
                    )
                now_batch.append(job)
        if later:
            metrics.JOB_RETRIES.labels("packages.register", "rate").inc(len(later))
            await store.index_touch(
                PENDING_INDEX, [r.job.registration_id for r in later], now + max(r.delay for r in later)
            )
    failed: list[Failure] = []
    if now_batch:
        failed = await _create_and_record(maker, store, now_batch, rate, create_packages)
    return BatchOutcome(later, failed)


async def _take(store: Store, batch: Sequence[RegistrationJob]) -> list[RegistrationJob]:
    """The jobs of `batch` whose registrations are now taken: every one but those withdrawn."""
    taken = await store.take([fate_key(job.registration_id) for job in batch], ttl=TAKEN_TTL)
    for job, ok in zip(batch, taken, strict=True):
        if not ok:
            with logs.about_registrations(job.registration_id):
                logger.info("registration withdrawn, job skipped registration_id=%s", job.registration_id)
    return [job for job, ok in zip(batch, taken, strict=True) if ok]


async def _create_and_record(
    maker: async_sessionmaker[AsyncSession],
    store: Store,
    batch: list[RegistrationJob],
    rate: Rate | None,
    create_packages: CreatePackages,
) -> list[Failure]:
    """Create the batch's packages and record their outcomes; the jobs that failed, narrowed down."""
    created: dict[str, int | str]
    existing: frozenset[str] = frozenset()
    try:
        made = await create_packages(maker, batch, rate)
        created, existing = dict(made), getattr(made, "existing", existing)
    except Exception as exc:
        # A transient error with the database away is the whole batch's, tried again later. With the database
        # answering, it is a statement the database refuses (a trigger's SIGNAL is an OperationalError on
        # MariaDB, as an outage is): the job's, found by narrowing down, not retried with the batch for ever.
        if isinstance(exc, TRANSIENT) and not await database_answers(maker):
            raise
        if len(batch) > 1:
            # One job spoils the batch (or the batch itself is at fault): try each alone to find out.
            logger.warning(
                "registration batch failed, registering one by one size=%s error=%s",
                len(batch),
                failure_reason(exc),
            )
            failed: list[Failure] = []
            for job in batch:
                failed += await _create_and_record(maker, store, [job], rate, create_packages)
            return failed
        return [Failure(batch[0].to_json(), failure_reason(exc), isinstance(exc, RegistrationImpossible))]
    await record_outcomes(store, batch, created, cost_known=rate is not None, existing=existing)
    return []


async def record_outcomes(
    store: Store,
    batch: Sequence[RegistrationJob],
    created: dict[str, int | str],
    *,
    cost_known: bool,
    existing: frozenset[str] = frozenset(),
) -> None:
    """Every job's status in one round trip: registered with its package id, or failed with a message.
    A package that existed before (`existing`: a job run twice, or published again) was counted when made."""
    records = []
    for job in batch:
        with logs.about_registrations(job.registration_id):
            outcome = created[job.registration_id]
            records.append(
                _outcome(job, outcome, cost_known=cost_known, counted=job.registration_id in existing)
            )
    replaced = await store.finish_pending(
        records, index=PENDING_INDEX, members=[j.registration_id for j in batch]
    )
    for job, done in zip(batch, replaced, strict=True):
        if not done:
            with logs.about_registrations(job.registration_id):
                logger.warning("status expired before the outcome registration_id=%s", job.registration_id)


async def record_failed(store: Store, failed: Sequence[tuple[str, int, str]]) -> None:
    """`failed` statuses with their reasons, in one round trip: (registration id, session id, reason) each."""
    if not failed:
        return
    records = [
        (status_key(registration_id), StatusRecord(session_id, "failed", error_message=reason).dumps())
        for registration_id, session_id, reason in failed
    ]
    await store.finish_pending(records, index=PENDING_INDEX, members=[f[0] for f in failed])
    metrics.REGISTRATIONS_DONE.labels("failed").inc(len(failed))


def _outcome(
    job: RegistrationJob, outcome: int | str, *, cost_known: bool, counted: bool = False
) -> tuple[str, str]:
    """A job's status record (its key and value), counted (unless `counted` already) and logged."""
    if isinstance(outcome, int):
        record = StatusRecord(job.session_id, "registered", package_id=outcome)
        if counted:
            logger.info(
                "package registered before registration_id=%s package_id=%s", job.registration_id, outcome
            )
            return status_key(job.registration_id), record.dumps()
        metrics.REGISTRATIONS_DONE.labels("registered" if cost_known else "registered_without_cost").inc()
        logger.info(
            "package registered registration_id=%s package_id=%s cost_known=%s",
            job.registration_id,
            outcome,
            cost_known,
        )
    else:
        record = StatusRecord(job.session_id, "failed", error_message=outcome)
        metrics.REGISTRATIONS_DONE.labels("failed").inc()
        logger.error("registration failed registration_id=%s reason=%s", job.registration_id, outcome)
    return status_key(job.registration_id), record.dumps()


# --- 3. recovery (beat) ---


async def recover_pending(
    store: Store,
    publish: Publisher,
    queued: Callable[[], Awaitable[int]],
    *,
    older_than: float,
    limit: int = 1000,
) -> int:
    """Publish again the jobs of registrations untouched for `older_than` seconds while none is queued.

    A job can be lost on its way: a worker killed while holding it on a broker that does not redeliver (the
    embedded one), a queue lost with its broker. Its status still holds the job, so it is sent again. A job
    marks its registration alive on every attempt (and a retry until its next attempt is due), so what is
    old in the index was not tried for that long: lost, or still waiting in a queue behind a backlog. While
    the queue holds jobs, nothing is published again: those jobs may be the very ones.
    """
    stale = await store.index_below(PENDING_INDEX, time.time() - older_than, limit)
    if not stale:
        return 0
    if (waiting := await queued()) > 0:
        logger.info("recovery waits for the queue stale=%s queued=%s", len(stale), waiting)
        return 0
    republished = 0
    for registration_id in stale:
        raw = await store.get(status_key(registration_id))
        record = None if raw is None else StatusRecord.loads(raw)
        if record is None or record.state != "pending" or record.job is None:
            await store.index_remove(PENDING_INDEX, registration_id)
            continue
        await publish(RegistrationJob.from_json(record.job))
        await store.index_add(PENDING_INDEX, registration_id, time.time())
        republished += 1
        logger.warning("registration job published again registration_id=%s", registration_id)
    return republished

"""The worker's jobs as plain functions: the cost formula, registering a package, pricing the rest."""

import logging
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterable
from datetime import UTC, date, datetime
from decimal import ROUND_HALF_UP, Decimal

from sqlalchemy import Executable, case, false, literal, select, text, update
from sqlalchemy.dialects import mysql, sqlite
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from delivery import metrics
from delivery.db import utcnow
from delivery.errors import RateUnavailable
from delivery.models import MONEY_RUB, CostCalculation, DailyCostTotal, Package, PackageType
from delivery.rates import Rate, RateCache
from delivery.service import PENDING_INDEX, Publisher, RegistrationJob, StatusRecord, status_key

__all__ = ["RegistrationJob", "compute_cost", "price_now", "process_registration"]
from delivery.store import Store, replace_unindexed

logger = logging.getLogger(__name__)

KOPECK = Decimal("0.01")
WEIGHT_RATE_USD = Decimal("0.5")
VALUE_SHARE = Decimal("0.01")
PRICING_BATCH = 500


def compute_cost(weight_kg: Decimal, content_value_usd: Decimal, usd_rub: Decimal) -> Decimal:
    """(weight * 0.5 + value * 0.01) * rate, rounded half-up to the kopeck: the only place that rounds."""
    return ((weight_kg * WEIGHT_RATE_USD + content_value_usd * VALUE_SHARE) * usd_rub).quantize(
        KOPECK, rounding=ROUND_HALF_UP
    )


class RegistrationImpossible(Exception):
    """The job can never succeed (e.g. its type was deleted): the status becomes `failed`."""


class RetryLater(Exception):
    """The bank did not answer and the job's retry window is still open."""

    def __init__(self, remaining: float) -> None:
        super().__init__(f"rate unavailable, {remaining:.1f}s of the retry window left")
        self.remaining = remaining


async def process_registration(
    maker: async_sessionmaker[AsyncSession],
    store: Store,
    rates: RateCache,
    job: RegistrationJob,
    *,
    retry_window: float,
) -> int | None:
    """The registration job: the rate (retried until the window closes), the package, the status."""
    rate: Rate | None
    try:
        rate = await rates.get()
    except RateUnavailable as exc:
        remaining = job.accepted_at + retry_window - time.time()
        if remaining > 0:
            raise RetryLater(remaining) from exc
        logger.warning("registering without a cost registration_id=%s reason=%s", job.registration_id, exc)
        rate = None
    try:
        package_id = await create_package(maker, job, rate)
    except RegistrationImpossible as exc:
        logger.error("registration failed registration_id=%s reason=%s", job.registration_id, exc)
        await record_outcome(store, job, error=str(exc))
        metrics.REGISTRATIONS_DONE.labels("failed").inc()
        return None
    await record_outcome(store, job, package_id=package_id)
    metrics.REGISTRATIONS_DONE.labels("registered" if rate else "registered_without_cost").inc()
    logger.info(
        "package registered registration_id=%s package_id=%s cost_known=%s",
        job.registration_id,
        package_id,
        rate is not None,
    )
    return package_id


async def price_now(maker: async_sessionmaker[AsyncSession], rates: RateCache) -> int:
    """The periodic job: one rate read, then every package without a cost.

    Without a rate it raises `RateUnavailable`: the run fails visibly and the next one tries again.
    """
    rate = await rates.get()
    priced = await price_pending(maker, rate)
    logger.info("pricing done priced=%s", priced)
    return priced


async def create_package(
    maker: async_sessionmaker[AsyncSession],
    job: RegistrationJob,
    rate: Rate | None,
    *,
    clock: Callable[[], datetime] = utcnow,
) -> int:
    """Create the job's package once: the unique registration id turns a second run into a no-op."""
    registration_id = uuid.UUID(job.registration_id)
    now = clock()
    async with maker() as db:
        package = Package(
            registration_id=registration_id,
            session_id=job.session_id,
            type_id=job.type_id,
            name=job.name,
            weight_kg=job.weight,
            content_value_usd=job.value,
            created_at=now,
        )
        if rate is not None:
            package.delivery_cost_rub = compute_cost(job.weight, job.value, rate.usd_rub)
            package.usd_rub_rate = rate.usd_rub
            package.rate_date = rate.date
        db.add(package)
        try:
            await db.flush()
            if package.delivery_cost_rub is not None:
                _log_costs(db, [(package.id, package.type_id, package.delivery_cost_rub)], rate, now)
                await _add_daily_totals(
                    db, now.astimezone(UTC).date(), [(package.type_id, package.delivery_cost_rub)]
                )
            await db.commit()
            return package.id
        except IntegrityError:
            await db.rollback()
    return await _existing_package(maker, registration_id, job.type_id)


async def _existing_package(
    maker: async_sessionmaker[AsyncSession], registration_id: uuid.UUID, type_id: int
) -> int:
    async with maker() as db:
        package_id = await db.scalar(select(Package.id).where(Package.registration_id == registration_id))
        if package_id is not None:
            logger.info(
                "package already created registration_id=%s package_id=%s", registration_id, package_id
            )
            return package_id
        if await db.get(PackageType, type_id) is None:
            raise RegistrationImpossible(f"type {type_id} no longer exists")
        raise RegistrationImpossible("the package could not be stored")


async def record_outcome(
    store: Store, job: RegistrationJob, *, package_id: int | None = None, error: str | None = None
) -> None:
    record = StatusRecord(
        job.session_id,
        "failed" if error is not None else "registered",
        package_id=package_id,
        error_message=error,
    )
    key = status_key(job.registration_id)
    if not await replace_unindexed(
        store, key, record.dumps(), index=PENDING_INDEX, member=job.registration_id
    ):
        logger.warning("status expired before the outcome registration_id=%s", job.registration_id)


async def recover_pending(store: Store, publish: Publisher, *, older_than: float, limit: int = 1000) -> int:
    """Publish again the jobs of registrations still pending `older_than` seconds after their last publish.

    A job can be lost on its way: a worker killed while holding it on a broker that does not redeliver (the
    embedded one), a queue lost with its broker. Its status still holds the job, so it is sent again; a job
    that was only slow runs twice, harmlessly, since the package is created once per registration id.
    """
    republished = 0
    for registration_id in await store.index_below(PENDING_INDEX, time.time() - older_than, limit):
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


async def price_pending(
    maker: async_sessionmaker[AsyncSession],
    rate: Rate,
    *,
    batch_size: int = PRICING_BATCH,
    clock: Callable[[], datetime] = utcnow,
) -> int:
    """Price every package without a cost, in batches: one claim, one UPDATE and one log insert per batch.

    Claimed rows are locked (FOR UPDATE SKIP LOCKED; on SQLite a write transaction from the start),
    so overlapping runs price disjoint rows and never log a package twice.
    """
    priced = 0
    last_id = 0
    while True:
        for attempt in range(1, DEADLOCK_RETRIES + 1):
            try:
                batch = await _price_batch(maker, rate, after=last_id, size=batch_size, clock=clock)
                break
            except DBAPIError as exc:
                # Two runs at once update the package counts of shared sessions in package order: MariaDB
                # may roll one batch back as a deadlock victim. That batch is simply claimed again.
                if not _is_deadlock(exc) or attempt == DEADLOCK_RETRIES:
                    raise
                logger.warning("pricing batch deadlocked, claiming it again attempt=%s", attempt)
        if batch is None:
            return priced
        count, last_id = batch
        priced += count


async def _price_batch(
    maker: async_sessionmaker[AsyncSession],
    rate: Rate,
    *,
    after: int,
    size: int,
    clock: Callable[[], datetime],
) -> tuple[int, int] | None:
    """Price the next batch after package id `after`, in one transaction: (priced, last id); None if none."""
    async with maker() as db:
        if _dialect(db) == "sqlite":
            # Take SQLite's write lock before the claim, so overlapping runs claim in turn.
            await db.execute(text("BEGIN IMMEDIATE"))
        claim = (
            select(Package.id, Package.type_id, Package.weight_kg, Package.content_value_usd)
            .where(Package.has_cost == false(), Package.id > after)
            .order_by(Package.id)
            .limit(size)
            .with_for_update(skip_locked=True)
        )
        rows = (await db.execute(claim)).all()
        if not rows:
            return None
        now = clock()
        costs = {
            row.id: (row.type_id, compute_cost(row.weight_kg, row.content_value_usd, rate.usd_rub))
            for row in rows
        }
        result = await db.execute(
            update(Package)
            .where(Package.id.in_(costs), Package.delivery_cost_rub.is_(None))
            .values(
                # Each value typed as the column, so it is stored exactly as the column stores amounts.
                delivery_cost_rub=case(
                    {pid: literal(cost, MONEY_RUB) for pid, (_, cost) in costs.items()}, value=Package.id
                ),
                usd_rub_rate=rate.usd_rub,
                rate_date=rate.date,
            )
            .execution_options(synchronize_session=False)
        )
        _log_costs(db, [(pid, type_id, cost) for pid, (type_id, cost) in costs.items()], rate, now)
        await _add_daily_totals(db, now.astimezone(UTC).date(), costs.values())
        await db.commit()
        last_id = rows[-1].id
        logger.info("priced batch count=%s last_id=%s usd_rub=%s", len(rows), last_id, rate.usd_rub)
        return result.rowcount, last_id  # type: ignore[attr-defined]


#: MySQL/MariaDB's "Deadlock found when trying to get lock; try restarting transaction".
ER_LOCK_DEADLOCK = 1213
DEADLOCK_RETRIES = 5


def _is_deadlock(exc: DBAPIError) -> bool:
    args: tuple[object, ...] = getattr(exc.orig, "args", ())
    return len(args) > 0 and args[0] == ER_LOCK_DEADLOCK


def _log_costs(
    db: AsyncSession, priced: Iterable[tuple[int, int, Decimal]], rate: Rate | None, at: datetime
) -> None:
    assert rate is not None
    db.add_all(
        CostCalculation(
            package_id=package_id,
            type_id=type_id,
            delivery_cost_rub=cost,
            usd_rub_rate=rate.usd_rub,
            rate_date=rate.date,
            calculated_at=at,
        )
        for package_id, type_id, cost in priced
    )


async def _add_daily_totals(db: AsyncSession, day: date, costs: Iterable[tuple[int, Decimal]]) -> None:
    """Add to the per-day, per-type running totals with one upsert per type."""
    sums: dict[int, list[Decimal | int]] = defaultdict(lambda: [0, Decimal(0)])
    for type_id, cost in costs:
        sums[type_id][0] += 1
        sums[type_id][1] += cost
    rows = [
        {"day": day, "type_id": type_id, "packages": count, "total_cost_rub": total}
        for type_id, (count, total) in sorted(sums.items())
    ]
    totals = DailyCostTotal
    stmt: Executable
    if _dialect(db) == "sqlite":
        lite = sqlite.insert(totals)
        stmt = lite.on_conflict_do_update(
            index_elements=["day", "type_id"],
            set_={
                "packages": totals.packages + lite.excluded.packages,
                "total_cost_rub": totals.total_cost_rub + lite.excluded.total_cost_rub,
            },
        )
    else:
        my = mysql.insert(totals)
        stmt = my.on_duplicate_key_update(
            packages=totals.packages + my.inserted.packages,
            total_cost_rub=totals.total_cost_rub + my.inserted.total_cost_rub,
        )
    for row in rows:
        await db.execute(stmt, row)


def _dialect(db: AsyncSession) -> str:
    return db.get_bind().dialect.name

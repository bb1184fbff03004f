"""The worker's database writes: the cost formula, creating a batch of packages, pricing the rest."""

import json
import logging
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import ROUND_HALF_UP, Decimal

from sqlalchemy import Executable, bindparam, case, false, insert, literal, select, text, update
from sqlalchemy.dialects import mysql, sqlite
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession, async_sessionmaker

from delivery.db import utcnow
from delivery.errors import RegistrationImpossible, ServiceUnavailable
from delivery.models import MONEY_RUB, ClientSession, CostCalculation, DailyCostTotal, Package, PackageType
from delivery.rates import Rate, RateCache
from delivery.registration import RegistrationJob
from delivery.store import KeyValue

__all__ = ["compute_cost", "create_package", "create_packages", "price_now"]

logger = logging.getLogger(__name__)

KOPECK = Decimal("0.01")
WEIGHT_RATE_USD = Decimal("0.5")
VALUE_SHARE = Decimal("0.01")
PRICING_BATCH = 500
#: A batch that met a concurrent insert of one of its registrations (a job delivered twice at once) is
#: written again this many times: the second time, that registration is found and skipped.
DUPLICATE_RETRIES = 3


def compute_cost(weight_kg: Decimal, content_value_usd: Decimal, usd_rub: Decimal) -> Decimal:
    """(weight * 0.5 + value * 0.01) * rate, rounded half-up to the kopeck: the only place that rounds."""
    return ((weight_kg * WEIGHT_RATE_USD + content_value_usd * VALUE_SHARE) * usd_rub).quantize(
        KOPECK, rounding=ROUND_HALF_UP
    )


async def price_now(maker: async_sessionmaker[AsyncSession], rates: RateCache) -> int:
    """The periodic job: one rate read, then every package without a cost.

    Without a rate it raises `RateUnavailable`: the run fails visibly and the next one tries again.
    """
    rate = await rates.get()
    priced = await price_pending(maker, rate)
    logger.info("pricing done priced=%s", priced)
    return priced


#: Where the last pricing run's outcome is kept for operators (GET /admin/stats/backlog/).
LAST_PRICING_KEY = "pricing:last_run"
LAST_PRICING_TTL = 30 * 86400


@dataclass(frozen=True, slots=True)
class PricingRun:
    finished_at: datetime
    outcome: str  # ok, or no_rate
    priced: int

    def dumps(self) -> str:
        return json.dumps(
            {"finished_at": self.finished_at.isoformat(), "outcome": self.outcome, "priced": self.priced}
        )

    @classmethod
    def loads(cls, raw: str) -> "PricingRun":
        data = json.loads(raw)
        return cls(datetime.fromisoformat(data["finished_at"]), str(data["outcome"]), int(data["priced"]))


async def record_pricing_run(store: KeyValue, *, outcome: str, priced: int) -> None:
    """Keep the run's outcome for operators; a store that is away costs the record, not the run."""
    run = PricingRun(utcnow(), outcome, priced)
    try:
        await store.set(LAST_PRICING_KEY, run.dumps(), ttl=LAST_PRICING_TTL)
    except ServiceUnavailable as exc:
        logger.warning("pricing run not recorded outcome=%s error=%r", outcome, exc)


_PACKAGE_IDS = select(Package.registration_id, Package.id).where(
    Package.registration_id.in_(bindparam("registration_ids", expanding=True))
)
_LOCK_SESSIONS = (
    select(ClientSession.id)
    .where(ClientSession.id.in_(bindparam("session_ids", expanding=True)))
    .order_by(ClientSession.id)
    .with_for_update()
)


class Created(dict[str, int]):
    """Registration id -> package id; `existing`: those whose package existed before (a job run twice)."""

    def __init__(self, ids: dict[str, int], existing: frozenset[str] = frozenset()) -> None:
        super().__init__(ids)
        self.existing = existing


async def create_packages(
    maker: async_sessionmaker[AsyncSession],
    batch: Sequence[RegistrationJob],
    rate: Rate | None,
    *,
    clock: Callable[[], datetime] = utcnow,
) -> Created:
    """Create each job's package once, all in one transaction: registration id -> package id.

    With a rate, each package's cost, its cost log row and the day's totals commit with it. A registration
    whose package exists already (a job run twice) is skipped, the rest of the batch written.
    """
    registration_ids = list({uuid.UUID(job.registration_id) for job in batch})
    for attempt in range(1, DUPLICATE_RETRIES + 1):
        try:
            # Duplicates are rare (a job run twice): looked for only after an insert met one.
            return await _insert_packages(
                maker, batch, registration_ids, rate, clock(), look_first=attempt > 1
            )
        except IntegrityError as exc:
            if len(registration_ids) == 1:
                return await _existing_package(maker, batch[0], exc)
            if attempt == DUPLICATE_RETRIES:
                raise
            logger.info("registration batch met a duplicate, writing it again attempt=%s", attempt)
    raise AssertionError("unreachable")


async def _insert_packages(
    maker: async_sessionmaker[AsyncSession],
    batch: Sequence[RegistrationJob],
    registration_ids: list[uuid.UUID],
    rate: Rate | None,
    now: datetime,
    *,
    look_first: bool,
) -> Created:
    async with maker() as db, db.begin():
        ids: dict[uuid.UUID, int] = {}
        if look_first:
            ids = dict(
                (await db.execute(_PACKAGE_IDS, {"registration_ids": registration_ids})).tuples().all()
            )
        existing = dict(ids)
        new: dict[uuid.UUID, RegistrationJob] = {}
        for job in batch:
            registration_id = uuid.UUID(job.registration_id)
            if registration_id not in ids:
                new.setdefault(registration_id, job)
        if new:
            if ids:
                logger.info("packages already created, skipped count=%s", len(ids))
            # In session and type order: the triggers that keep the counts lock their rows in one order.
            jobs = sorted(new.values(), key=lambda job: (job.session_id, job.type_id))
            costs = [None if rate is None else compute_cost(j.weight, j.value, rate.usd_rub) for j in jobs]
            rows = [_package_row(j, cost, rate, now) for j, cost in zip(jobs, costs, strict=True)]
            # Core statements on the session's connection: rows of plain values need none of the ORM's
            # bulk layer (its per-row bookkeeping cost more than the statement).
            conn = await db.connection()
            # The sessions' rows first, in id order: each package's insert share-locks its session's row
            # (the foreign key) and its trigger then updates the row (`package_changes`); two batches of one
            # session that both held the shared lock would each wait for the other's. Locked here, a second
            # batch waits at this statement instead.
            await conn.execute(_LOCK_SESSIONS, {"session_ids": sorted({job.session_id for job in jobs})})
            created = await _insert_returning_ids(conn, rows, list(new))
            ids = existing | created
            if rate is not None:
                priced = [
                    (created[uuid.UUID(j.registration_id)], j.type_id, cost)
                    for j, cost in zip(jobs, costs, strict=True)
                    if cost is not None
                ]
                await _log_costs(conn, priced, rate, now)
                await _add_daily_totals(conn, now.astimezone(UTC).date(), [(t, c) for _, t, c in priced])
    return Created(
        {str(registration_id): package_id for registration_id, package_id in ids.items()},
        frozenset(str(registration_id) for registration_id in existing),
    )


async def _insert_returning_ids(
    conn: AsyncConnection, rows: list[dict[str, object]], registration_ids: list[uuid.UUID]
) -> dict[uuid.UUID, int]:
    """One multi-row INSERT; the new ids from its RETURNING where the database has one (MariaDB, SQLite),
    else from one SELECT by the unique registration ids (MySQL)."""
    if conn.dialect.insert_returning:
        returning = insert(Package).returning(Package.registration_id, Package.id)
        return dict((await conn.execute(returning, rows)).all())
    await conn.execute(insert(Package), rows)
    found = await conn.execute(_PACKAGE_IDS, {"registration_ids": registration_ids})
    return dict(found.all())


def _package_row(
    job: RegistrationJob, cost: Decimal | None, rate: Rate | None, now: datetime
) -> dict[str, object]:
    return {
        "registration_id": uuid.UUID(job.registration_id),
        "session_id": job.session_id,
        "type_id": job.type_id,
        "name": job.name,
        "weight_kg": job.weight,
        "content_value_usd": job.value,
        "delivery_cost_rub": cost,
        "usd_rub_rate": None if rate is None else rate.usd_rub,
        "rate_date": None if rate is None else rate.date,
        "created_at": now,
    }


async def create_package(
    maker: async_sessionmaker[AsyncSession],
    job: RegistrationJob,
    rate: Rate | None,
    *,
    clock: Callable[[], datetime] = utcnow,
) -> int:
    """One job's package (a batch of one)."""
    return (await create_packages(maker, [job], rate, clock=clock))[job.registration_id]


async def _existing_package(
    maker: async_sessionmaker[AsyncSession], job: RegistrationJob, refused: IntegrityError
) -> Created:
    """After a refused insert of one package: it exists (made meanwhile), or its type is gone (it never can
    be), or the database refused it for another reason (a constraint or trigger), raised as it was."""
    async with maker() as db:
        package_id = await db.scalar(
            select(Package.id).where(Package.registration_id == uuid.UUID(job.registration_id))
        )
        if package_id is not None:
            logger.info(
                "package already created registration_id=%s package_id=%s", job.registration_id, package_id
            )
            return Created({job.registration_id: package_id}, frozenset({job.registration_id}))
        if await db.get(PackageType, job.type_id) is None:
            raise RegistrationImpossible(f"type {job.type_id} no longer exists")
        raise refused


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
                # Sessions' rows are locked in one order, but a deadlock victim (from a lock this code does
                # not order, or another writer's) loses only its batch: it is simply claimed again.
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
        else:
            # READ COMMITTED: the claim locks the rows it takes and no gap. Under REPEATABLE READ a claim
            # that reached the last unpriced package also locked the gap after it, where a registration
            # batch without a rate writes its packages: the batch, holding its session's row, waited for
            # the run, and the run for that row.
            await db.connection(execution_options={"isolation_level": "READ COMMITTED"})
        claim = (
            select(
                Package.id, Package.session_id, Package.type_id, Package.weight_kg, Package.content_value_usd
            )
            .where(Package.has_cost == false(), Package.id > after)
            .order_by(Package.id)
            .limit(size)
            .with_for_update(skip_locked=True)
            # Every claim by the same index, which locks its entry before the row: a claim that went by the
            # primary key locked rows only, and another run's claim by this index then kept the entries of
            # rows it skipped locked, which the first run's update of `has_cost` waited for (a deadlock).
            .with_hint(Package, f"FORCE INDEX ({CLAIM_INDEX})", "mysql")
            .with_hint(Package, f"FORCE INDEX ({CLAIM_INDEX})", "mariadb")
        )
        rows = (await db.execute(claim)).all()
        if not rows:
            return None
        # The sessions' rows before the update, in id order, as a registration batch locks them: the update's
        # triggers would otherwise lock them in package order, and a batch holding one of them (waiting for
        # another this run holds) and this run would wait for each other.
        await db.execute(_LOCK_SESSIONS, {"session_ids": sorted({row.session_id for row in rows})})
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
        conn = await db.connection()
        await _log_costs(conn, [(pid, type_id, cost) for pid, (type_id, cost) in costs.items()], rate, now)
        await _add_daily_totals(conn, now.astimezone(UTC).date(), costs.values())
        await db.commit()
        last_id = rows[-1].id
        logger.info("priced batch count=%s last_id=%s usd_rub=%s", len(rows), last_id, rate.usd_rub)
        return result.rowcount, last_id  # type: ignore[attr-defined]


#: The packages without a cost, in id order: (has_cost, id).
CLAIM_INDEX = "ix_packages_has_cost_id"
#: MySQL/MariaDB's "Deadlock found when trying to get lock; try restarting transaction".
ER_LOCK_DEADLOCK = 1213
DEADLOCK_RETRIES = 5


def _is_deadlock(exc: DBAPIError) -> bool:
    args: tuple[object, ...] = getattr(exc.orig, "args", ())
    return len(args) > 0 and args[0] == ER_LOCK_DEADLOCK


async def _log_costs(
    conn: AsyncConnection, priced: Sequence[tuple[int, int, Decimal]], rate: Rate, at: datetime
) -> None:
    """The cost log's rows, in one multi-row INSERT."""
    if not priced:
        return
    await conn.execute(
        insert(CostCalculation),
        [
            {
                "package_id": package_id,
                "type_id": type_id,
                "delivery_cost_rub": cost,
                "usd_rub_rate": rate.usd_rub,
                "rate_date": rate.date,
                "calculated_at": at,
            }
            for package_id, type_id, cost in priced
        ],
    )


async def _add_daily_totals(conn: AsyncConnection, day: date, costs: Iterable[tuple[int, Decimal]]) -> None:
    """Add to the per-day, per-type running totals: one multi-row upsert, a row per type."""
    sums: dict[int, list[Decimal | int]] = defaultdict(lambda: [0, Decimal(0)])
    for type_id, cost in costs:
        sums[type_id][0] += 1
        sums[type_id][1] += cost
    rows = [
        {"day": day, "type_id": type_id, "packages": count, "total_cost_rub": total}
        for type_id, (count, total) in sorted(sums.items())
    ]
    if not rows:
        return
    totals = DailyCostTotal
    stmt: Executable
    if conn.dialect.name == "sqlite":
        lite = sqlite.insert(totals).values(rows)
        stmt = lite.on_conflict_do_update(
            index_elements=["day", "type_id"],
            set_={
                "packages": totals.packages + lite.excluded.packages,
                "total_cost_rub": totals.total_cost_rub + lite.excluded.total_cost_rub,
            },
        )
    else:
        my = mysql.insert(totals).values(rows)
        stmt = my.on_duplicate_key_update(
            packages=totals.packages + my.inserted.packages,
            total_cost_rub=totals.total_cost_rub + my.inserted.total_cost_rub,
        )
    await conn.execute(stmt)


def _dialect(db: AsyncSession) -> str:
    return db.get_bind().dialect.name

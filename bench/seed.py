"""Bulk seeding of the benchmark database with `INSERT ... SELECT` from MariaDB's SEQUENCE engine.

Each table is filled by one statement into an empty table, with `unique_checks` and `foreign_key_checks`
off for this session only (as mysqldump does): MariaDB >= 10.7 then builds every index of the table by
sorting instead of row by row. The schema is untouched, and the rows are consistent by construction
(checked by `verify`): every package's session and type exist, registration ids are unique, each cost
is `delivery.jobs.compute_cost` of its row, and the daily totals are the sums of the cost log.
"""

import time
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from datetime import time as dtime
from decimal import Decimal

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from delivery.jobs import compute_cost
from delivery.service import hash_token

#: The UTC day of the seeded cost calculations (the day of the fake bank's recorded rate).
COST_DAY = date(2025, 6, 26)
#: The session with `SeedPlan.heavy` packages, every `heavy_every`-th id; its cookie is `session_token(1)`.
HEAVY_SESSION_ID = 1


@dataclass(frozen=True, slots=True)
class SeedPlan:
    """How much to seed: sessions 1..`sessions` (the first is the heavy one) share `packages`."""

    packages: int = 1_000_000
    sessions: int = 1_000
    heavy: int = 100_000
    cost_calculations: int = 1_000_000

    @property
    def heavy_every(self) -> int:
        """Every n-th package (by id) is the heavy session's, so its rows are spread over the table."""
        return self.packages // self.heavy

    @property
    def priced(self) -> int:
        """Packages of the sessions with a cost: ids with `id % 4 in (0, 1)`, i.e. half of them."""
        return self.packages // 4 + (self.packages + 3) // 4

    @property
    def extra(self) -> int:
        """Priced packages added in one more session so that the cost log has `cost_calculations` rows."""
        return max(self.cost_calculations - self.priced, 0)

    @property
    def all_packages(self) -> int:
        return self.packages + self.extra

    @property
    def all_sessions(self) -> int:
        return self.sessions + (1 if self.extra else 0)


FULL = SeedPlan()
QUICK = SeedPlan(packages=100_000, sessions=100, heavy=10_000, cost_calculations=100_000)


def session_token(session_id: int) -> str:
    """The cookie of a seeded session (only its SHA-256 is stored, as the API stores it)."""
    return f"bench-session-{session_id}"


@dataclass(frozen=True, slots=True)
class SeedResult:
    seconds: float
    steps: dict[str, float]
    packages: int
    sessions: int
    cost_calculations: int
    heavy_session_packages: int
    heavy_session_priced_type1: int
    newest_heavy_package_id: int


def _weight(seq: str) -> str:
    return f"CAST(0.1 + ({seq} % 997) / 100 AS DECIMAL(10,3))"


def _value(seq: str) -> str:
    return f"CAST(({seq} % 1009) + 0.99 AS DECIMAL(12,2))"


async def seed(engine: AsyncEngine, plan: SeedPlan, *, usd_rub: Decimal, rate_date: date) -> SeedResult:
    """Fill the freshly migrated database; returns the timings of each step."""
    started = time.perf_counter()
    steps: dict[str, float] = {}
    n, total = plan.packages, plan.all_packages
    day_start = datetime.combine(COST_DAY, dtime())
    # Created over the days before COST_DAY, one a second, newest last (ids and created_at agree).
    first_created = day_start - timedelta(seconds=total + 1)
    priced = f"(seq > {n} OR seq % 4 < 2)"
    cost = f"ROUND(({_weight('seq')} * 0.5 + {_value('seq')} * 0.01) * :rate, 2)"
    light = f"2 + seq % {plan.sessions - 1}"
    session = (
        f"IF(seq > {n}, {plan.sessions + 1}, IF(seq % {plan.heavy_every} = 0, {HEAVY_SESSION_ID}, {light}))"
    )
    statements = {
        "sessions": (
            f"INSERT INTO sessions (id, token_hash, created_at, expires_at) "
            f"SELECT seq, SHA2(CONCAT('bench-session-', seq), 256), :created, :expires "
            f"FROM seq_1_to_{plan.all_sessions}"
        ),
        "packages": (
            "INSERT INTO packages (id, registration_id, session_id, type_id, name, weight_kg,"
            " content_value_usd, delivery_cost_rub, usd_rub_rate, rate_date, created_at) "
            "SELECT seq, CONCAT('00000000-0000-4000-8000-', LPAD(HEX(seq), 12, '0')), "
            f"{session}, 1 + seq % 3, CONCAT('Parcel #', seq), {_weight('seq')}, {_value('seq')}, "
            f"IF({priced}, {cost}, NULL), IF({priced}, :rate, NULL), IF({priced}, :rate_date, NULL), "
            "TIMESTAMPADD(SECOND, seq, :first_created) "
            f"FROM seq_1_to_{total}"
        ),
        "cost_calculations": (
            "INSERT INTO cost_calculations (package_id, type_id, delivery_cost_rub, usd_rub_rate, rate_date,"
            " calculated_at) "
            "SELECT id, type_id, delivery_cost_rub, usd_rub_rate, rate_date, "
            "TIMESTAMPADD(MICROSECOND, (id % 86400) * 1000000 + id % 997 * 1000, :day_start) "
            f"FROM packages WHERE has_cost = 1 ORDER BY id LIMIT {plan.cost_calculations}"
        ),
        "daily_cost_totals": (
            "INSERT INTO daily_cost_totals (day, type_id, packages, total_cost_rub) "
            "SELECT DATE(calculated_at), type_id, COUNT(*), SUM(delivery_cost_rub) FROM cost_calculations "
            "GROUP BY DATE(calculated_at), type_id"
        ),
    }
    params = {
        "created": first_created,
        "expires": datetime(2099, 1, 1),
        "rate": usd_rub,
        "rate_date": rate_date,
        "first_created": first_created,
        "day_start": day_start,
    }
    async with engine.connect() as conn:
        await conn.execute(text("SET SESSION unique_checks = 0, foreign_key_checks = 0"))
        await conn.commit()
        for name, sql in statements.items():
            t0 = time.perf_counter()
            await conn.execute(text(sql), params)
            await conn.commit()
            steps[name] = time.perf_counter() - t0
        await conn.execute(text("SET SESSION unique_checks = 1, foreign_key_checks = 1"))
        t0 = time.perf_counter()
        await conn.execute(text("ANALYZE TABLE sessions, packages, cost_calculations, daily_cost_totals"))
        steps["analyze"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        result = await verify(conn, plan, usd_rub)
        steps["verify"] = time.perf_counter() - t0
    return SeedResult(seconds=time.perf_counter() - started, steps=steps, **result)


async def _scalar(conn: AsyncConnection, sql: str) -> int:
    value = (await conn.execute(text(sql))).scalar_one()
    return int(value)


async def verify(conn: AsyncConnection, plan: SeedPlan, usd_rub: Decimal) -> dict[str, int]:
    """Cheap checks (index lookups and one scan of the small totals table) that the seed is what we meant."""
    problems: list[str] = []
    sessions = await _scalar(conn, "SELECT COUNT(*) FROM sessions")
    packages = await _scalar(conn, "SELECT MAX(id) FROM packages")
    calcs = await _scalar(conn, "SELECT COUNT(*) FROM cost_calculations")
    if sessions != plan.all_sessions or packages != plan.all_packages or calcs != plan.cost_calculations:
        problems.append(f"counts: sessions={sessions} packages={packages} cost_calculations={calcs}")
    lo, hi = (await conn.execute(text("SELECT MIN(session_id), MAX(session_id) FROM packages"))).one()
    if lo != 1 or hi != plan.all_sessions:
        problems.append(f"package sessions span {lo}..{hi}")
    lo, hi = (await conn.execute(text("SELECT MIN(type_id), MAX(type_id) FROM packages"))).one()
    if lo != 1 or hi != 3:
        problems.append(f"package types span {lo}..{hi}")
    token_hash = (await conn.execute(text("SELECT token_hash FROM sessions WHERE id = 1"))).scalar_one()
    if token_hash != hash_token(session_token(HEAVY_SESSION_ID)):
        problems.append("the heavy session's token hash is not hash_token(its token)")
    heavy = await _scalar(conn, "SELECT COUNT(*) FROM packages WHERE session_id = 1")
    heavy_filtered = await _scalar(
        conn, "SELECT COUNT(*) FROM packages WHERE session_id = 1 AND type_id = 1 AND has_cost = 1"
    )
    if heavy != plan.heavy:
        problems.append(f"heavy session has {heavy} packages")
    newest_heavy = await _scalar(conn, "SELECT MAX(id) FROM packages WHERE session_id = 1")
    rows = (
        await conn.execute(
            text(
                "SELECT weight_kg, content_value_usd, delivery_cost_rub FROM packages"
                " WHERE id IN (1, 4, 5, 8, 999, 1000) AND delivery_cost_rub IS NOT NULL"
            )
        )
    ).all()
    for weight, value, stored in rows:
        if compute_cost(Decimal(weight), Decimal(value), usd_rub) != Decimal(stored):
            problems.append(f"cost {stored} of ({weight}, {value}) is not compute_cost's")
    totals = (await conn.execute(text("SELECT SUM(packages) FROM daily_cost_totals"))).scalar_one()
    if int(totals) != plan.cost_calculations:
        problems.append(f"daily totals count {totals} packages")
    if problems:
        raise RuntimeError("seed check failed: " + "; ".join(problems))
    return {
        "packages": packages,
        "sessions": sessions,
        "cost_calculations": calcs,
        "heavy_session_packages": heavy,
        "heavy_session_priced_type1": heavy_filtered,
        "newest_heavy_package_id": newest_heavy,
    }

"""Daily cost totals: what the pricing jobs log, and what GET /admin/stats/daily-costs/ sums from it."""

import asyncio
import random
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from datetime import UTC, date, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

import httpx
import pytest
from sqlalchemy import event, select, text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from delivery import jobs
from delivery.jobs import create_package, create_packages, price_pending
from delivery.models import ClientSession, CostCalculation, Package, PackageCount
from delivery.rates import Rate
from delivery.registration import RegistrationJob
from tests.factories import add_session, add_unpriced_packages
from tests.stack import Stack

Maker = async_sessionmaker[AsyncSession]
Json = dict[str, Any]
Spec = tuple[int, str, str]  # type_id, weight_kg, content_value_usd

TYPES: list[tuple[int, str]] = [(1, "clothes"), (2, "electronics"), (3, "misc")]
DAY1 = date(2025, 6, 26)
DAY2 = date(2025, 6, 27)
RATE1 = Rate(usd_rub=Decimal("78.1959"), date=DAY1)
RATE2 = Rate(usd_rub=Decimal("81.23456789"), date=DAY2)
KOPECK = Decimal("0.01")


# --- helpers ---


def at(day: date, hour: int = 12, minute: int = 0, second: int = 0, micro: int = 0) -> datetime:
    return datetime(day.year, day.month, day.day, hour, minute, second, micro, tzinfo=UTC)


def fixed(moment: datetime) -> Callable[[], datetime]:
    return lambda: moment


def cost(weight: str, value: str, usd_rub: Decimal) -> Decimal:
    """The contract's formula, written out here rather than borrowed from the code under test."""
    raw = (Decimal(weight) * Decimal("0.5") + Decimal(value) * Decimal("0.01")) * usd_rub
    return raw.quantize(KOPECK, rounding=ROUND_HALF_UP)


def registration(session_id: int, spec: Spec) -> RegistrationJob:
    type_id, weight, value = spec
    return RegistrationJob(
        registration_id=str(uuid.uuid4()),
        session_id=session_id,
        name="registered with a rate",
        weight_kg=weight,
        type_id=type_id,
        content_value_usd=value,
        accepted_at=time.time(),
    )


async def stored(maker: Maker) -> dict[int, Package]:
    async with maker() as db:
        return {p.id: p for p in (await db.scalars(select(Package))).all()}


async def cost_log(maker: Maker) -> list[CostCalculation]:
    async with maker() as db:
        return list((await db.scalars(select(CostCalculation).order_by(CostCalculation.package_id))).all())


def expected(day: date, priced: Iterable[tuple[int, Decimal]]) -> Json:
    """The endpoint's answer for `day`, given the (type_id, cost) of every package priced that day."""
    counts: Counter[int] = Counter()
    sums: defaultdict[int, Decimal] = defaultdict(Decimal)
    for type_id, amount in priced:
        counts[type_id] += 1
        sums[type_id] += amount
    return {
        "date": day.isoformat(),
        "totals": [
            {"type": {"id": tid, "name": name}, "packages": counts[tid], "total_cost_rub": f"{sums[tid]:.2f}"}
            for tid, name in TYPES
        ],
    }


def priced(package: Package) -> tuple[int, Decimal]:
    assert package.delivery_cost_rub is not None, package.id
    return package.type_id, package.delivery_cost_rub


def from_log(log: Iterable[CostCalculation], day: date) -> list[tuple[int, Decimal]]:
    return [(row.type_id, row.delivery_cost_rub) for row in log if row.calculated_at.date() == day]


async def daily(client: httpx.AsyncClient, headers: dict[str, str], day: date | str) -> Json:
    response = await client.get("/admin/stats/daily-costs/", params={"date": str(day)}, headers=headers)
    assert response.status_code == 200, response.text
    body: Json = response.json()
    return body


# --- the tests ---

DAY1_SPECS: list[Spec] = [
    (1, "1.25", "120"),
    (1, "0.001", "0"),
    (1, "3.333", "0.05"),
    (2, "0.5", "999.99"),
    (2, "12", "1499.5"),
]
DAY2_SPECS: list[Spec] = [
    (2, "1000", "1000000000"),
    (2, "999.999", "999999999.99"),
    (3, "0.1", "0.1"),
    (3, "7.777", "77.77"),
    (3, "2", "0"),
    (1, "0.3", "0.3"),
]


async def test_totals_by_type_and_day(
    client: httpx.AsyncClient, admin_headers: dict[str, str], maker: Maker
) -> None:
    session_id = (await add_session(maker))[0]
    day1_ids = await add_unpriced_packages(maker, session_id, DAY1_SPECS)
    assert await price_pending(maker, RATE1, clock=fixed(at(DAY1, 10))) == len(DAY1_SPECS)

    day2_ids = await add_unpriced_packages(maker, session_id, DAY2_SPECS)
    assert await price_pending(maker, RATE2, clock=fixed(at(DAY2, 9, 30))) == len(DAY2_SPECS)
    # Priced at registration, on day 2; and one registered without a rate, which counts nowhere.
    registered_specs: list[Spec] = [(1, "4.5", "350.25"), (3, "0.25", "19.99")]
    registered_ids = [
        await create_package(maker, registration(session_id, spec), RATE2, clock=fixed(at(DAY2, 15)))
        for spec in registered_specs
    ]
    unpriced_id = await create_package(
        maker, registration(session_id, (2, "1", "1")), None, clock=fixed(at(DAY2, 16))
    )

    packages = await stored(maker)
    assert packages[unpriced_id].delivery_cost_rub is None
    day1 = [priced(packages[pid]) for pid in day1_ids]
    day2 = [priced(packages[pid]) for pid in day2_ids + registered_ids]
    # What is stored is the contract's formula at the rate of the day it was priced.
    assert day1 == [(t, cost(w, v, RATE1.usd_rub)) for t, w, v in DAY1_SPECS]
    assert day2 == [(t, cost(w, v, RATE2.usd_rub)) for t, w, v in DAY2_SPECS + registered_specs]

    answer1 = await daily(client, admin_headers, DAY1)
    answer2 = await daily(client, admin_headers, DAY2)
    assert answer1 == expected(DAY1, day1)
    assert answer2 == expected(DAY2, day2)
    # The same numbers, from the log of cost calculations.
    log = await cost_log(maker)
    assert answer1 == expected(DAY1, from_log(log, DAY1))
    assert answer2 == expected(DAY2, from_log(log, DAY2))
    # A spot check of the sums written out, so the helper above cannot hide a mistake.
    assert answer2["totals"][1]["packages"] == 2
    assert Decimal(answer2["totals"][1]["total_cost_rub"]) == cost(
        "1000", "1000000000", RATE2.usd_rub
    ) + cost("999.999", "999999999.99", RATE2.usd_rub)
    assert answer2["totals"][1]["total_cost_rub"] == "1624772592.32"
    # The days around them have nothing.
    for empty_day in (DAY1 - timedelta(days=1), DAY2 + timedelta(days=1)):
        assert await daily(client, admin_headers, empty_day) == expected(empty_day, [])


async def test_day_boundary_is_utc_midnight(
    client: httpx.AsyncClient, admin_headers: dict[str, str], maker: Maker
) -> None:
    session_id = (await add_session(maker))[0]
    last_moment = at(DAY1, 23, 59, 59, 999999)
    midnight = at(DAY2, 0)
    (late,) = await add_unpriced_packages(maker, session_id, [(1, "2", "100")])
    assert await price_pending(maker, RATE1, clock=fixed(last_moment)) == 1
    (early,) = await add_unpriced_packages(maker, session_id, [(1, "3", "200")])
    assert await price_pending(maker, RATE1, clock=fixed(midnight)) == 1

    assert await daily(client, admin_headers, DAY1) == expected(DAY1, [(1, cost("2", "100", RATE1.usd_rub))])
    assert await daily(client, admin_headers, DAY2) == expected(DAY2, [(1, cost("3", "200", RATE1.usd_rub))])
    times = {row.package_id: row.calculated_at for row in await cost_log(maker)}
    assert times == {late: last_moment, early: midnight}


async def test_a_day_with_nothing_lists_every_type_at_zero(
    client: httpx.AsyncClient, admin_headers: dict[str, str]
) -> None:
    answer = await daily(client, admin_headers, "2024-02-29")
    assert answer == {
        "date": "2024-02-29",
        "totals": [
            {"type": {"id": 1, "name": "clothes"}, "packages": 0, "total_cost_rub": "0.00"},
            {"type": {"id": 2, "name": "electronics"}, "packages": 0, "total_cost_rub": "0.00"},
            {"type": {"id": 3, "name": "misc"}, "packages": 0, "total_cost_rub": "0.00"},
        ],
    }


@pytest.mark.parametrize("value", ["2024-02-30", "2023-02-29", "2024-13-01", "yesterday", "", None])
async def test_bad_date_is_422(
    client: httpx.AsyncClient, admin_headers: dict[str, str], value: str | None
) -> None:
    params = {} if value is None else {"date": value}
    response = await client.get("/admin/stats/daily-costs/", params=params, headers=admin_headers)
    assert response.status_code == 422, response.text
    assert any("date" in error["loc"] for error in response.json()["detail"]), response.text


async def test_pricing_twice_counts_each_package_once(
    client: httpx.AsyncClient, admin_headers: dict[str, str], maker: Maker
) -> None:
    session_id = (await add_session(maker))[0]
    await add_unpriced_packages(maker, session_id, DAY1_SPECS)
    assert await price_pending(maker, RATE1, clock=fixed(at(DAY1, 10))) == len(DAY1_SPECS)
    before = await daily(client, admin_headers, DAY1)
    log_before = [(row.package_id, row.delivery_cost_rub) for row in await cost_log(maker)]

    assert await price_pending(maker, RATE1, clock=fixed(at(DAY1, 11))) == 0
    assert await price_pending(maker, RATE2, clock=fixed(at(DAY2, 11))) == 0

    assert await daily(client, admin_headers, DAY1) == before
    assert sum(t["packages"] for t in before["totals"]) == len(DAY1_SPECS)
    assert await daily(client, admin_headers, DAY2) == expected(DAY2, [])
    assert [(row.package_id, row.delivery_cost_rub) for row in await cost_log(maker)] == log_before


async def test_registering_twice_counts_once(
    client: httpx.AsyncClient, admin_headers: dict[str, str], maker: Maker
) -> None:
    """A redelivered registration job creates nothing new, so it adds nothing to the day."""
    job = registration((await add_session(maker))[0], (2, "1.5", "250"))
    first = await create_package(maker, job, RATE1, clock=fixed(at(DAY1, 8)))
    again = await create_package(maker, job, RATE1, clock=fixed(at(DAY1, 9)))
    assert again == first
    assert await daily(client, admin_headers, DAY1) == expected(
        DAY1, [(2, cost("1.5", "250", RATE1.usd_rub))]
    )
    assert [row.package_id for row in await cost_log(maker)] == [first]


async def test_overlapping_runs_price_each_package_once(
    client: httpx.AsyncClient, admin_headers: dict[str, str], maker: Maker, stack: Stack
) -> None:
    """Two runs at once, on different days and rates, in small batches so they interleave."""
    count = 120
    specs: list[Spec] = [(1 + i % 3, f"{1 + i % 7}.{i:03d}", f"{i * 13}.{i % 100:02d}") for i in range(count)]
    ids = await add_unpriced_packages(maker, (await add_session(maker))[0], specs)

    priced = await asyncio.gather(
        price_pending(maker, RATE1, batch_size=7, clock=fixed(at(DAY1, 12))),
        price_pending(maker, RATE2, batch_size=7, clock=fixed(at(DAY2, 12))),
    )
    assert sum(priced) == count, priced
    if stack.name == "real":
        # Row locks let the runs share the work on MariaDB; SQLite may serialise them completely.
        assert min(priced) > 0, priced

    log = await cost_log(maker)
    assert [row.package_id for row in log] == ids  # each exactly once
    packages = await stored(maker)
    rates = {DAY1: RATE1, DAY2: RATE2}
    for row, (type_id, weight, value) in zip(log, specs, strict=True):
        rate = rates[row.calculated_at.date()]
        assert row.usd_rub_rate == rate.usd_rub
        assert row.delivery_cost_rub == cost(weight, value, rate.usd_rub)
        assert packages[row.package_id].delivery_cost_rub == row.delivery_cost_rub
        assert packages[row.package_id].type_id == row.type_id == type_id

    answer1 = await daily(client, admin_headers, DAY1)
    answer2 = await daily(client, admin_headers, DAY2)
    assert answer1 == expected(DAY1, from_log(log, DAY1))
    assert answer2 == expected(DAY2, from_log(log, DAY2))
    counted = sum(t["packages"] for t in answer1["totals"] + answer2["totals"])
    assert counted == count


async def test_overlapping_runs_on_one_day_keep_the_total(
    client: httpx.AsyncClient, admin_headers: dict[str, str], maker: Maker, stack: Stack
) -> None:
    count = 90
    specs: list[Spec] = [(1 + i % 3, f"0.{i + 1:03d}", f"{i}.99") for i in range(count)]
    ids = await add_unpriced_packages(maker, (await add_session(maker))[0], specs)
    clock = fixed(at(DAY1, 18))
    priced = await asyncio.gather(
        price_pending(maker, RATE1, batch_size=5, clock=clock),
        price_pending(maker, RATE1, batch_size=5, clock=clock),
    )
    assert sum(priced) == count, priced
    if stack.name == "real":
        # Row locks let the runs share the work on MariaDB; SQLite may serialise them completely.
        assert min(priced) > 0, priced
    assert sorted(row.package_id for row in await cost_log(maker)) == ids
    assert await daily(client, admin_headers, DAY1) == expected(
        DAY1, [(t, cost(w, v, RATE1.usd_rub)) for t, w, v in specs]
    )


async def test_overlapping_runs_across_sessions_keep_every_count(
    client: httpx.AsyncClient,
    admin_headers: dict[str, str],
    maker: Maker,
    stack: Stack,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Packages of many sessions interleaved: three runs update the same sessions' package counts; each locks
    its batch's sessions in id order first, so none is a deadlock's victim (no retry allowed here), and
    nothing is lost."""
    monkeypatch.setattr(jobs, "DEADLOCK_RETRIES", 1)
    sessions = [(await add_session(maker))[0] for _ in range(6)]
    count = 240
    specs: list[Spec] = [(1 + i % 3, f"{1 + i % 5}.{i:03d}", f"{i}.{i % 100:02d}") for i in range(count)]
    ids: list[int] = []
    for i, spec in enumerate(specs):  # one at a time, so that consecutive ids belong to different sessions
        ids += await add_unpriced_packages(maker, sessions[i % len(sessions)], [spec])

    priced = await asyncio.gather(
        *(price_pending(maker, RATE1, batch_size=4, clock=fixed(at(DAY1, 9))) for _ in range(3))
    )
    assert sum(priced) == count, priced
    assert sorted(row.package_id for row in await cost_log(maker)) == ids
    assert await daily(client, admin_headers, DAY1) == expected(
        DAY1, [(t, cost(w, v, RATE1.usd_rub)) for t, w, v in specs]
    )
    async with maker() as db:
        counts = (await db.execute(select(PackageCount))).scalars().all()
    by_cost = Counter[bool]()
    for row in counts:
        by_cost[row.has_cost] += row.packages
    assert (by_cost[True], by_cost[False]) == (count, 0), counts


async def test_pricing_runs_and_registration_batches_at_once_never_deadlock(
    client: httpx.AsyncClient, admin_headers: dict[str, str], maker: Maker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Pricing runs and registration batches of the same sessions at once, as beat and a worker's pool do:
    none is chosen as a deadlock's victim (no retry allowed here), every package priced exactly once."""
    monkeypatch.setattr(jobs, "DEADLOCK_RETRIES", 1)
    sessions = [(await add_session(maker))[0] for _ in range(6)]
    unpriced: list[Spec] = [(1 + i % 3, f"{1 + i % 5}.{i:03d}", f"{i}.{i % 100:02d}") for i in range(120)]
    for i, spec in enumerate(
        unpriced
    ):  # consecutive ids in sessions of falling ids: package order is not theirs
        await add_unpriced_packages(maker, sessions[-1 - i % len(sessions)], [spec])

    async def writer(seed: int) -> list[Spec]:
        chooser = random.Random(seed)
        written: list[Spec] = []
        for _ in range(15):
            specs = [(chooser.randint(1, 3), "1.500", f"{chooser.randint(1, 999)}.00") for _ in range(6)]
            rate = RATE1 if chooser.random() < 0.5 else None
            await create_packages(
                maker,
                [registration(chooser.choice(sessions), spec) for spec in specs],
                rate,
                clock=fixed(at(DAY1)),
            )
            written += specs
        return written

    async def pricer() -> None:
        for _ in range(10):
            await price_pending(maker, RATE1, batch_size=4, clock=fixed(at(DAY1)))

    writers = asyncio.gather(*(writer(seed) for seed in range(3)))
    outcomes, _ = await asyncio.gather(writers, asyncio.gather(pricer(), pricer()))
    await price_pending(maker, RATE1, clock=fixed(at(DAY1)))  # what registered after the last run
    registered = [spec for written in outcomes for spec in written]
    log = await cost_log(maker)
    assert len(log) == len({row.package_id for row in log}) == len(unpriced) + len(registered)
    assert await daily(client, admin_headers, DAY1) == expected(
        DAY1, [(t, cost(w, v, RATE1.usd_rub)) for t, w, v in [*unpriced, *registered]]
    )


async def waiting_for_sessions(maker: Maker) -> int:
    """How many connections to this test's database are in the middle of locking sessions' rows (the
    statement a registration batch and a pricing batch lock them with), as MariaDB's process list shows."""
    async with maker() as db:
        waiting = text(
            "SELECT COUNT(*) FROM information_schema.processlist WHERE db = DATABASE() AND command = 'Query'"
            " AND info LIKE 'SELECT sessions.id%FOR UPDATE'"
        )
        return int(await db.scalar(waiting) or 0)


async def until_waiting(maker: Maker, count: int, stack: Stack) -> None:
    if stack.name != "real":
        await asyncio.sleep(0.5)  # SQLite's writers wait in their busy handler, out of sight
        return
    deadline = time.monotonic() + 10
    while await waiting_for_sessions(maker) < count:
        assert time.monotonic() < deadline, f"{count} transaction(s) never waited for the session's row"
        await asyncio.sleep(0.02)


async def test_a_pricing_run_and_a_registration_without_a_rate_of_one_session_never_deadlock(
    client: httpx.AsyncClient,
    admin_headers: dict[str, str],
    maker: Maker,
    stack: Stack,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A registration batch without a rate (the bank away for its worker) waits for its session's row, then a
    pricing run that claimed the session's last unpriced packages waits too. Freed, the batch writes its
    unpriced package just past the run's claim: a claim that had locked that gap (REPEATABLE READ's next-key
    lock) would wait for the batch while the batch waited for it."""
    monkeypatch.setattr(jobs, "DEADLOCK_RETRIES", 1)
    session_id = (await add_session(maker))[0]
    unpriced: list[Spec] = [(1, "1.000", "10.00"), (2, "2.500", "20.50")]
    await add_unpriced_packages(maker, session_id, unpriced)
    late: Spec = (3, "3.125", "30.75")

    async with maker() as holder:
        if stack.name == "real":
            session_row = select(ClientSession.id).where(ClientSession.id == session_id).with_for_update()
            await holder.execute(session_row)
        else:
            await holder.execute(text("BEGIN IMMEDIATE"))
        registering = asyncio.create_task(
            create_packages(maker, [registration(session_id, late)], None, clock=fixed(at(DAY1)))
        )
        await until_waiting(maker, 1, stack)
        pricing = asyncio.create_task(price_pending(maker, RATE1, clock=fixed(at(DAY1))))
        await until_waiting(maker, 2, stack)
        await holder.commit()
    await asyncio.wait_for(asyncio.gather(registering, pricing), 30)

    await price_pending(maker, RATE1, clock=fixed(at(DAY1)))  # the late package, if the run did not see it
    assert len(await cost_log(maker)) == 3
    assert await daily(client, admin_headers, DAY1) == expected(
        DAY1, [(t, cost(w, v, RATE1.usd_rub)) for t, w, v in [*unpriced, late]]
    )


async def test_each_calculation_is_logged(maker: Maker) -> None:
    session_id = (await add_session(maker))[0]
    batch_ids = await add_unpriced_packages(maker, session_id, DAY1_SPECS)
    priced_at = at(DAY1, 10, 15, 30, 123456)
    await price_pending(maker, RATE1, clock=fixed(priced_at))
    registered_at = at(DAY2, 7, 0, 0, 1)
    registered_id = await create_package(
        maker, registration(session_id, (3, "2.5", "10.5")), RATE2, clock=fixed(registered_at)
    )

    packages = await stored(maker)
    log = await cost_log(maker)
    assert [row.package_id for row in log] == [*batch_ids, registered_id]
    for row in log:
        package = packages[row.package_id]
        rate, moment = (RATE2, registered_at) if row.package_id == registered_id else (RATE1, priced_at)
        assert row.type_id == package.type_id
        assert row.delivery_cost_rub == package.delivery_cost_rub
        assert row.delivery_cost_rub == cost(
            str(package.weight_kg), str(package.content_value_usd), rate.usd_rub
        )
        assert row.usd_rub_rate == rate.usd_rub == package.usd_rub_rate
        assert row.rate_date == rate.date == package.rate_date
        assert row.calculated_at == moment
    assert packages[registered_id].created_at == registered_at


# --- a range of days: GET /admin/stats/daily-costs/?from=&to= ---


async def daily_range(
    client: httpx.AsyncClient, headers: dict[str, str], start: date | str, end: date | str
) -> Json:
    response = await client.get(
        "/admin/stats/daily-costs/", params={"from": str(start), "to": str(end)}, headers=headers
    )
    assert response.status_code == 200, response.text
    body: Json = response.json()
    return body


async def test_range_lists_every_day_with_the_days_totals(
    client: httpx.AsyncClient, admin_headers: dict[str, str], maker: Maker
) -> None:
    session_id = (await add_session(maker))[0]
    await add_unpriced_packages(maker, session_id, DAY1_SPECS)
    await price_pending(maker, RATE1, clock=fixed(at(DAY1, 23, 59, 59, 999999)))
    await add_unpriced_packages(maker, session_id, DAY2_SPECS)
    await price_pending(maker, RATE2, clock=fixed(at(DAY2, 0)))
    log = await cost_log(maker)
    start, end = DAY1 - timedelta(days=2), DAY2 + timedelta(days=1)

    answer = await daily_range(client, admin_headers, start, end)

    days = [start + timedelta(days=n) for n in range(5)]
    assert answer == {
        "from": start.isoformat(),
        "to": end.isoformat(),
        "days": [expected(day, from_log(log, day)) for day in days],
    }
    # Each day reads the same as the single-day answer, to the kopeck.
    for day, entry in zip(days, answer["days"], strict=True):
        assert entry == await daily(client, admin_headers, day)
    assert answer["days"][3]["totals"][1]["total_cost_rub"] == "1624772592.32"


async def test_range_of_one_day_and_of_a_leap_year(
    client: httpx.AsyncClient, admin_headers: dict[str, str], maker: Maker
) -> None:
    session_id = (await add_session(maker))[0]
    await add_unpriced_packages(maker, session_id, [(3, "1", "1")])
    await price_pending(maker, RATE1, clock=fixed(at(date(2024, 12, 31), 20)))

    one = await daily_range(client, admin_headers, "2024-02-29", "2024-02-29")
    assert one["days"] == [await daily(client, admin_headers, "2024-02-29")]

    year = await daily_range(client, admin_headers, "2024-01-01", "2024-12-31")
    assert len(year["days"]) == 366
    assert [entry["date"] for entry in year["days"]][58:61] == ["2024-02-28", "2024-02-29", "2024-03-01"]
    assert all(len(entry["totals"]) == len(TYPES) for entry in year["days"])
    counted = [
        (entry["date"], t["type"]["id"]) for entry in year["days"] for t in entry["totals"] if t["packages"]
    ]
    assert counted == [("2024-12-31", 3)]
    assert year["days"][-1]["totals"][2]["total_cost_rub"] == f"{cost('1', '1', RATE1.usd_rub):.2f}"


async def test_range_reads_the_totals_in_one_statement(
    client: httpx.AsyncClient, admin_headers: dict[str, str]
) -> None:
    """However long the range, one statement reads the running totals (none per day)."""
    engine = client.app.state.resources.engine.sync_engine  # type: ignore[attr-defined]
    statements: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        statements.append(statement)

    event.listen(engine, "before_cursor_execute", record)
    try:
        await daily_range(client, admin_headers, "2025-01-01", "2025-12-31")
    finally:
        event.remove(engine, "before_cursor_execute", record)
    assert len(statements) == 1, statements
    assert "daily_cost_totals" in statements[0]


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"from": "2025-06-27", "to": "2025-06-26"}, "to"),  # backwards
        ({"from": "2024-01-01", "to": "2025-01-01"}, "to"),  # 367 days
        ({"from": "2025-06-26"}, "to"),
        ({"to": "2025-06-26"}, "from"),
        ({"date": "2025-06-26", "from": "2025-06-26", "to": "2025-06-27"}, "date"),
        ({"date": "2025-06-26", "to": "2025-06-27"}, "date"),
        ({"from": "2025-06-31", "to": "2025-07-01"}, "from"),
        ({"from": "2025-06-01", "to": "2025-06-30T00:00:00"}, "to"),
        ({}, "date"),
        ({"date": "2025-06-26", "day": "2025-06-26"}, "day"),  # a name the document does not allow
        ({"from": "2025-06-01", "to": "2025-06-02", "page": "1"}, "page"),
        # A name the query's shapes do not have is refused, not ignored (as schemathesis found).
        ({"date": "2025-06-26", "day": "2025-06-27"}, "day"),
        ({"from": "2025-06-01", "to": "2025-06-30", "type": "1"}, "type"),
    ],
)
async def test_bad_range_is_422_naming_the_field(
    client: httpx.AsyncClient, admin_headers: dict[str, str], params: dict[str, str], field: str
) -> None:
    response = await client.get("/admin/stats/daily-costs/", params=params, headers=admin_headers)
    assert response.status_code == 422, response.text
    assert [error["loc"] for error in response.json()["detail"]] == [["query", field]], response.text

"""The operators' commands `make price` and `make refresh-rate` (`delivery price | refresh-rate`), and how
`delivery serve` ends when the app cannot start."""

import os
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest
from sqlalchemy import select

from delivery.jobs import compute_cost
from delivery.models import Package
from delivery.rates import CACHE_KEY, Rate
from delivery.store import create_store
from realstack.net import free_port
from tests.factories import Maker, add_packages, add_session
from tests.fakebank import FakeBank
from tests.helpers import fixture_rate
from tests.stack import Stack


def _delivery(stack: Stack, command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "delivery.cli", command],
        env=stack.env(),
        cwd=stack.workdir,
        capture_output=True,
        text=True,
        timeout=120,
    )


async def test_price_prices_every_package_without_a_cost_and_says_how_many(
    stack: Stack, maker: Maker, bank: FakeBank
) -> None:
    session_id, _ = await add_session(maker)
    await add_packages(maker, session_id=session_id, count=7, weight_kg=Decimal("2.5"))
    await add_packages(maker, session_id=session_id, count=2, delivery_cost_rub=Decimal("10.00"))
    result = _delivery(stack, "price")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "priced 7 packages"
    usd_rub, _ = fixture_rate()
    async with maker() as db:
        costs = (await db.scalars(select(Package.delivery_cost_rub))).all()
    assert sorted(costs, key=str) == sorted(
        [compute_cost(Decimal("2.5"), Decimal("120"), usd_rub)] * 7 + [Decimal("10.00")] * 2, key=str
    )
    again = _delivery(stack, "price")
    assert again.stdout.strip() == "priced 0 packages"


async def test_price_without_a_rate_fails_and_prices_nothing(
    stack: Stack, maker: Maker, bank: FakeBank
) -> None:
    bank.mode = "error"
    session_id, _ = await add_session(maker)
    await add_packages(maker, session_id=session_id, count=3)
    result = _delivery(stack, "price")
    assert result.returncode == 1
    assert "no rate, nothing priced" in result.stderr
    async with maker() as db:
        assert set((await db.scalars(select(Package.delivery_cost_rub))).all()) == {None}


async def test_refresh_rate_asks_the_bank_even_with_a_cached_rate(stack: Stack, bank: FakeBank) -> None:
    store = create_store(stack.settings)
    await store.set(CACHE_KEY, Rate(usd_rub=Decimal("1.5"), date=fixture_rate()[1]).dumps(), ttl=3600)
    result = _delivery(stack, "refresh-rate")
    usd_rub, day = fixture_rate()
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"USD/RUB {usd_rub} on {day}, cached"
    assert bank.requests == 1
    cached = await store.get(CACHE_KEY)
    await store.close()
    assert cached is not None and Rate.loads(cached).usd_rub == usd_rub


async def test_refresh_rate_with_the_bank_down_keeps_the_cached_rate(stack: Stack, bank: FakeBank) -> None:
    bank.mode = "html"
    store = create_store(stack.settings)
    kept = Rate(usd_rub=Decimal("90.1234"), date=fixture_rate()[1])
    await store.set(CACHE_KEY, kept.dumps(), ttl=3600)
    result = _delivery(stack, "refresh-rate")
    cached = await store.get(CACHE_KEY)
    await store.close()
    assert result.returncode == 1
    assert "rate not refreshed" in result.stderr
    assert cached is not None and Rate.loads(cached) == kept


@pytest.mark.parametrize("processes", [1, 2])
def test_serve_exits_with_a_failure_when_the_app_cannot_start(tmp_path: Path, processes: int) -> None:
    """What restarts the API (compose, systemd, an orchestrator) sees that it could not start, with one
    process or several: uvicorn's startup failure code, not the 0 of a requested stop."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("DATABASE_", "REDIS_", "CELERY_", "TEST_"))
    }
    # A driver that is not installed: the app's start fails in every process, on every restart.
    env |= {"DATABASE_URL": "postgresql+psycopg://u:p@127.0.0.1:1/x", "HOST": "127.0.0.1"}
    env |= {"PORT": str(free_port()), "WEB_CONCURRENCY": str(processes)}
    ended = subprocess.run(
        [sys.executable, "-m", "delivery.cli", "serve"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert ended.returncode == 3, ended.stderr[-3000:]
    assert "Application startup failed" in ended.stderr

"""Housekeeping: expired sessions are deleted (their packages kept), the embedded broker's delivered messages
are purged."""

import asyncio
import sqlite3
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import httpx
import pytest
from kombu import Connection
from sqlalchemy import delete, select

from delivery import service
from delivery.broker import MAINTAIN_TASK, create_celery
from delivery.config import EMBEDDED_DIR, Settings
from delivery.db import utcnow
from delivery.maintenance import delete_expired_sessions, purge_embedded_broker
from delivery.models import ClientSession, Package, PackageCount
from tests.factories import add_package, add_session, use_session
from tests.helpers import Maker, register, wait_all_done
from tests.stack import Stack, WorkerProcess

DAY = timedelta(days=1)


async def session_ids(maker: Maker) -> set[int]:
    async with maker() as db:
        return set(await db.scalars(select(ClientSession.id)))


async def expired_session(maker: Maker, *, ago: timedelta = 2 * DAY) -> int:
    session_id, _ = await add_session(maker, expires_at=utcnow() - ago)
    return session_id


# --- sessions, on both stacks ----------------------------------------------------------------------


async def test_expired_sessions_are_deleted_live_ones_kept(maker: Maker) -> None:
    expired = {await expired_session(maker) for _ in range(3)}
    live, _ = await add_session(maker, ttl=3600)

    assert await delete_expired_sessions(maker) == 3

    assert await session_ids(maker) == {live}
    assert await delete_expired_sessions(maker) == 0
    assert not expired & await session_ids(maker)


async def test_an_expired_session_with_packages_keeps_them_readable(maker: Maker) -> None:
    """Operators read a package by id after its session expired: the session stays, and its package."""
    owner = await expired_session(maker)
    package_id = await add_package(maker, session_id=owner, name="Зимняя куртка")
    empty = await expired_session(maker)

    assert await delete_expired_sessions(maker) == 1

    assert await session_ids(maker) == {owner}
    async with maker() as db:
        package = await service.get_package(db, None, package_id)
    assert (package.session_id, package.name) == (owner, "Зимняя куртка")
    assert empty not in await session_ids(maker)


async def test_a_session_expired_within_the_grace_is_kept(maker: Maker) -> None:
    """A registration accepted just before expiry may still await its job, which needs the session."""
    recent = await expired_session(maker, ago=timedelta(hours=1))
    old = await expired_session(maker, ago=2 * DAY)

    assert await delete_expired_sessions(maker, grace=DAY) == 1
    assert await session_ids(maker) == {recent}
    assert old not in await session_ids(maker)

    assert await delete_expired_sessions(maker, now=utcnow() + 2 * DAY, grace=DAY) == 1
    assert await session_ids(maker) == set()


async def test_many_expired_sessions_go_in_batches(maker: Maker) -> None:
    expired = [await expired_session(maker) for _ in range(7)]
    owner = expired[3]
    await add_package(maker, session_id=owner)

    assert await delete_expired_sessions(maker, batch=2) == 6
    assert await session_ids(maker) == {owner}


async def test_a_session_whose_packages_were_deleted_goes_with_its_counts(maker: Maker) -> None:
    """The package counts (rows of zero once its packages are gone) do not hold a session back."""
    session_id = await expired_session(maker)
    package_id = await add_package(maker, session_id=session_id)
    async with maker() as db:
        await db.execute(delete(Package).where(Package.id == package_id))
        await db.commit()
        counts = list(
            await db.scalars(select(PackageCount.packages).where(PackageCount.session_id == session_id))
        )
    assert counts == [0]

    assert await delete_expired_sessions(maker) == 1

    async with maker() as db:
        left = list(await db.scalars(select(PackageCount).where(PackageCount.session_id == session_id)))
    assert left == []
    assert await session_ids(maker) == set()


async def test_a_deleted_session_does_not_authenticate(maker: Maker, client: httpx.AsyncClient) -> None:
    _, token = await add_session(maker, expires_at=utcnow() - 2 * DAY)
    await delete_expired_sessions(maker)
    use_session(client, token)
    assert (await client.get("/packages/")).status_code == 401


# --- the embedded broker --------------------------------------------------------------------------


@pytest.fixture
def broker_file(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path / "broker.sqlite3"


def messages(path: Path) -> list[tuple[int, str]]:
    """(visible, payload) of every row kombu keeps."""
    with sqlite3.connect(path) as connection:
        return [(row[0], row[1]) for row in connection.execute("SELECT visible, payload FROM kombu_message")]


def test_delivered_messages_are_purged_waiting_ones_kept(broker_file: Path) -> None:
    with Connection(f"sqla+sqlite:///{broker_file}") as connection:
        queue = connection.SimpleQueue("jobs")
        for body in ("first", "second", "third"):
            queue.put(body)
        for expected in ("first", "second"):
            message = queue.get(timeout=5)
            assert message.payload == expected
            message.ack()
        assert [visible for visible, _ in messages(broker_file)] == [0, 0, 1]

        # Delivered a moment ago: kept by an hour's margin, purged once the hour has passed.
        assert purge_embedded_broker(broker_file, older_than=timedelta(hours=1)) == 0
        later = datetime.now() + timedelta(hours=2)
        assert purge_embedded_broker(broker_file, older_than=timedelta(hours=1), now=later) == 2
        assert [visible for visible, _ in messages(broker_file)] == [1]

        # The broker goes on: the waiting message is delivered, and new ones are taken.
        assert queue.get(timeout=5).payload == "third"
        queue.put("fourth")
        assert queue.get(timeout=5).payload == "fourth"
        queue.close()


def test_purge_in_batches(broker_file: Path) -> None:
    with Connection(f"sqla+sqlite:///{broker_file}") as connection:
        queue = connection.SimpleQueue("jobs")
        for index in range(12):
            queue.put(index)
        for _ in range(12):
            queue.get(timeout=5).ack()
        queue.close()
    assert purge_embedded_broker(broker_file, older_than=timedelta(0), batch=5) == 12
    assert messages(broker_file) == []


def test_purge_without_a_broker_file(tmp_path: Path) -> None:
    missing = tmp_path / "broker.sqlite3"
    assert purge_embedded_broker(missing, older_than=timedelta(0)) == 0
    assert not missing.exists()


@pytest.mark.parametrize("stack", ["embedded"], indirect=True)  # only the embedded stack has a broker file
async def test_purge_beside_a_running_worker(
    stack: Stack, customer: httpx.AsyncClient, worker: WorkerProcess
) -> None:
    """The embedded stack's own broker file, its worker running: registrations before and after the purge
    complete."""
    broker = stack.workdir / EMBEDDED_DIR / "broker.sqlite3"
    await wait_all_done(customer, [await register(customer) for _ in range(3)])

    assert purge_embedded_broker(broker, older_than=timedelta(0)) >= 3
    assert all(visible for visible, _ in messages(broker))

    statuses = await wait_all_done(customer, [await register(customer) for _ in range(3)])
    assert {status["state"] for status in statuses} == {"registered"}


async def test_the_periodic_job_cleans_on_a_worker(
    stack: Stack, maker: Maker, worker: WorkerProcess, settings: Settings
) -> None:
    """Beat's maintenance job, run by a real worker: an expired session past the grace (STATUS_TTL, so no
    registration of it can still be pending) is gone; a live one stays."""
    old = await expired_session(maker, ago=timedelta(seconds=settings.STATUS_TTL) + DAY)
    live, _ = await add_session(maker)
    celery = create_celery(settings)
    try:
        result = celery.send_task(MAINTAIN_TASK)
        outcome = await asyncio.to_thread(result.get, timeout=60)
    finally:
        celery.close()
    assert outcome["sessions_deleted"] == 1
    remaining = await session_ids(maker)
    assert old not in remaining and live in remaining

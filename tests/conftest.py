"""Fixtures shared by every test: the two stacks, a clean database per test, the app, a worker, the bank.

Every behavioural test runs twice: on the embedded stack (SQLite, diskcache, kombu's SQLAlchemy
transport on SQLite) and on the real one (MariaDB, Redis, RabbitMQ).
With CI=true a missing real service fails.
"""

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from playwright.async_api import Browser
from sqlalchemy import delete, insert, select
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from delivery.config import Settings
from delivery.db import create_engine, create_sessionmaker
from delivery.models import (
    AuditEntry,
    ClientSession,
    CostCalculation,
    DailyCostTotal,
    DeadLetter,
    Operator,
    Package,
    PackageType,
)
from tests.browser import LiveServer, launch_chromium
from tests.factories import app_client
from tests.fakebank import FakeBank
from tests.stack import (
    ADMIN_TOKEN,
    Stack,
    WorkerProcess,
    clear_store,
    prepare_real,
    purge_queues,
    real_stack_down,
)

CI = os.environ.get("CI", "").lower() == "true"
#: The tables each test starts without (the audit trail's rows deleted here only: the service never does).
CLEANED = (CostCalculation, DailyCostTotal, Package, ClientSession, DeadLetter, Operator, AuditEntry)
TYPES = [{"id": 1, "name": "clothes"}, {"id": 2, "name": "electronics"}, {"id": 3, "name": "misc"}]


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--chaos",
        action="store_true",
        help="run tests/chaos and tests/cluster: fault bursts that restart MariaDB, Redis and RabbitMQ, and"
        " that kill a node of a three-node RabbitMQ cluster (`make chaos`, serial)",
    )


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    """The fault bursts restart shared services or kill broker nodes: never beside the other tests (whose
    timing and leftover jobs they would disturb, and be disturbed by), only with --chaos."""
    chaos = collection_path.name in ("chaos", "cluster") and collection_path.parent == Path(__file__).parent
    if chaos and not config.getoption("--chaos"):
        return True
    return None


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Under `--dist loadgroup`, one xdist worker takes a stack's tests: each sets up one stack."""
    for item in items:
        callspec = getattr(item, "callspec", None)
        if callspec is not None and "stack" in callspec.params:
            item.add_marker(pytest.mark.xdist_group(callspec.params["stack"]))


@pytest.fixture(scope="session")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The test process works in its own folder, so the embedded stack's `var/` is private to it."""
    path = tmp_path_factory.mktemp("work")
    os.chdir(path)
    return path


@pytest.fixture(scope="session")
def bank() -> Iterator[FakeBank]:
    fake = FakeBank().start()
    yield fake
    fake.stop()


@pytest.fixture(scope="session", params=["embedded", "real"])
def stack(request: pytest.FixtureRequest, workdir: Path, bank: FakeBank, worker_id: str) -> Iterator[Stack]:
    if request.param == "embedded":
        settings = Stack.embedded_settings(workdir, bank.url)
    else:
        if down := real_stack_down():
            message = f"real stack unavailable: {down}"
            if CI:
                pytest.fail(message)
            pytest.skip(message)
        settings = prepare_real(worker_id, bank.url)
    result = Stack(name=request.param, settings=settings, workdir=workdir)
    result.migrate()
    yield result
    result.close()


@pytest.fixture
def settings(stack: Stack) -> Settings:
    return stack.settings


@pytest.fixture
async def maker(stack: Stack) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    engine = create_engine(stack.settings)
    yield create_sessionmaker(engine)
    await engine.dispose()


@pytest.fixture(autouse=True)
async def clean(request: pytest.FixtureRequest, bank: FakeBank) -> AsyncIterator[None]:
    """Each test starts on an empty database (the seeded types restored), an empty store and a calm bank."""
    bank.reset()
    if "stack" in request.fixturenames:
        stack: Stack = request.getfixturevalue("stack")
        engine = create_engine(stack.settings)
        for attempt in range(5):
            try:
                async with engine.begin() as connection:
                    for model in CLEANED:
                        await connection.execute(delete(model))
                    present = set((await connection.execute(select(PackageType.id))).scalars())
                    missing = [t for t in TYPES if t["id"] not in present]
                    if missing:
                        await connection.execute(insert(PackageType), missing)
                break
            except DBAPIError:  # a deadlock with a job still finishing from the test before
                if attempt == 4:
                    raise
                await asyncio.sleep(0.5)
        await engine.dispose()
        await clear_store(stack.settings)
        await asyncio.to_thread(purge_queues, stack.settings)
    yield


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client for the app, in process, with the app's lifespan run around it."""
    async with app_client(settings) as http:
        yield http


@pytest.fixture
async def customer(client: httpx.AsyncClient) -> httpx.AsyncClient:
    """The same client with a session opened."""
    response = await client.get("/sessions/new/")
    assert response.status_code == 204
    return client


@pytest.fixture
def admin_headers() -> dict[str, str]:
    return {"X-Admin-Token": ADMIN_TOKEN}


@pytest.fixture
def worker(stack: Stack) -> WorkerProcess:
    """A real Celery worker process on this stack, started once and shared by the tests."""
    return stack.shared_worker()


@pytest.fixture
def start_worker(stack: Stack) -> Iterator[type[WorkerProcess]]:
    """Start workers of one's own (to kill them); they are stopped after the test."""
    started: list[WorkerProcess] = []

    class Own(WorkerProcess):
        def __init__(self, **kwargs: object) -> None:
            super().__init__(stack, **kwargs)  # type: ignore[arg-type]
            started.append(self)

    yield Own
    for process in started:
        process.stop()


@pytest.fixture
def beat(stack: Stack, tmp_path: Path) -> Iterator[Path]:
    """`celery beat` running the periodic pricing job every second; its log."""
    log_path = tmp_path / "beat.log"
    args = [
        sys.executable, "-m", "celery", "-A", "delivery.worker", "beat",
        "-s", str(tmp_path / "beat-schedule"), "--loglevel", "INFO",
    ]  # fmt: skip
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            args,
            env=stack.env(COST_RECALC_INTERVAL=1),
            cwd=stack.workdir,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        yield log_path
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
        # The last run it sent expires after one period (1 s) unless the worker ran it at once: let it go by,
        # so that it does not fill the next test's rate cache.
        time.sleep(1.5)


# --- the browser tests' ---


@pytest.fixture
def live_server(settings: Settings) -> Iterator[LiveServer]:
    server = LiveServer(settings).start()
    yield server
    server.stop()


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with launch_chromium() as launched:
        yield launched

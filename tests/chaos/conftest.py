"""The fault bursts: on the real stack alone, serially, with an API process and a worker of their own."""

from collections.abc import Iterator
from pathlib import Path

import pytest

from realstack import machine
from tests.conftest import CI
from tests.fakebank import FakeBank
from tests.stack import ApiProcess, Stack, WorkerProcess, prepare_real, real_stack_down

#: The slot of shared services (database, Redis db, vhost) the fault bursts use, apart from `make test`'s.
CHAOS_SLOT = "gw3"


@pytest.fixture(scope="session")
def stack(workdir: Path, bank: FakeBank) -> Iterator[Stack]:
    machine.ensure_all_up()
    if down := real_stack_down():
        message = f"real stack unavailable: {down}"
        if CI:
            pytest.fail(message)
        pytest.skip(message)
    result = Stack(name="real", settings=prepare_real(CHAOS_SLOT, bank.url), workdir=workdir)
    result.migrate()
    yield result
    result.close()


@pytest.fixture(autouse=True)
def services_restored(stack: Stack) -> Iterator[None]:
    """Whatever a test stopped is running again after it, as it was before, and takes connections."""
    machine.ensure_all_up()
    yield
    machine.ensure_all_up()
    machine.wait_broker_ready(str(stack.settings.CELERY_BROKER_URL))


@pytest.fixture
def api(stack: Stack) -> Iterator[ApiProcess]:
    process = ApiProcess(stack).start()
    yield process
    process.stop()


@pytest.fixture
def worker(stack: Stack) -> Iterator[WorkerProcess]:
    """One worker process, as `make run` starts it; replaced by the test that kills it."""
    process = WorkerProcess(stack).start()
    yield process
    process.stop()

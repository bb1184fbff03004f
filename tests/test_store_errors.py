"""A Redis that is up and answers errors: out of memory, unable to persist, a replica after a failover, a
restart still loading its AOF, a replica whose master is gone, a master short of replicas, a server held by
a script. Each is made real
on a redis-server of the test's own (never the machine's).

What a client relies on: every route that needs the store answers 503 with Retry-After while the store
refuses what the route asks of it (never a 500), what it can still serve is served, and registration flows
again once Redis recovers. The worker takes these refusals as transient: its batch is tried again with its
backoff, and the registration ends registered once.
"""

import asyncio
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from pydantic import AnyUrl

from delivery.config import Settings
from delivery.errors import ServiceUnavailable
from delivery.store import PersistenceFailing, create_store
from realstack.redis_server import RedisServer
from tests.factories import app_client
from tests.helpers import (
    Maker,
    packages_by_registration,
    register,
    status_id_of,
    valid_body,
    wait_done,
    wait_until,
)
from tests.stack import ADMIN_TOKEN, Stack, WorkerProcess

#: Redis errors exist on the real stack alone.
pytestmark = pytest.mark.parametrize("stack", ["real"], indirect=True)

ADMIN = {"X-Admin-Token": ADMIN_TOKEN}
#: A restart reading this many keys of its AOF, each this much slower: long enough for the requests of a test.
LOADING_KEYS = 20_000
LOADING_DELAY_US = 500


@dataclass(frozen=True)
class Fault:
    """A way a live Redis refuses, how to bring it about and to end it, and what it still serves."""

    name: str
    #: Reads (GET, ZRANGE) are refused too, not only writes.
    refuses_reads: bool
    #: PING is refused (so /readyz says the store is away).
    refuses_ping: bool


FAULTS = {
    fault.name: fault
    for fault in (
        Fault("oom", refuses_reads=False, refuses_ping=False),
        Fault("misconf", refuses_reads=False, refuses_ping=True),
        Fault("readonly", refuses_reads=False, refuses_ping=False),
        Fault("loading", refuses_reads=True, refuses_ping=True),
        Fault("masterdown", refuses_reads=True, refuses_ping=True),
        Fault("noreplicas", refuses_reads=False, refuses_ping=False),
        Fault("busy", refuses_reads=True, refuses_ping=True),
    )
}


class FaultyRedis:
    """The Redis under test, and a second one for a failover."""

    def __init__(self, workdir: Path, fault: Fault) -> None:
        self.fault = fault
        self.server = RedisServer(workdir, appendonly=fault.name == "loading").start()
        self.other: RedisServer | None = None
        self._workdir = workdir

    def settings(self, stack: Stack) -> Settings:
        return stack.settings.model_copy(update={"REDIS_URL": AnyUrl(self.server.url)})

    def begin(self, loading_delay_us: int = LOADING_DELAY_US) -> None:
        match self.fault.name:
            case "oom":
                self.server.out_of_memory()
            case "misconf":
                self.server.persistence_failing()
            case "readonly":
                self.other = RedisServer(self._workdir).start()
                self.server.failed_over_to(self.other)
            case "loading":
                self.server.ballast(LOADING_KEYS)
                self.server.restart_loading(loading_delay_us)
                assert self.server.loading()
            case "masterdown":
                self.server.master_lost()
            case "noreplicas":
                self.server.replicas_missing()
            case "busy":
                self.server.busy()

    def end(self) -> None:
        match self.fault.name:
            case "oom":
                self.server.memory_back()
            case "misconf":
                self.server.persistence_back()
            case "readonly" | "masterdown":
                self.server.promoted()
            case "noreplicas":
                self.server.replicas_back()
            case "busy":
                self.server.not_busy()
            case "loading":
                took = self.server.wait_loaded()
                print(f"the AOF was read {took:.1f}s after the refusals were checked")

    def stop(self) -> None:
        for server in (self.server, self.other):
            if server is not None:
                server.stop()


@pytest.fixture(params=list(FAULTS))
def faulty(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[FaultyRedis]:
    redis = FaultyRedis(tmp_path, FAULTS[request.param])
    yield redis
    redis.stop()


def _refused(response: httpx.Response) -> bool:
    assert response.status_code != 500, response.text
    if response.status_code != 503:
        return False
    assert int(response.headers["Retry-After"]) > 0, response.headers
    return True


async def test_every_route_that_needs_the_store_is_503_while_it_refuses(
    stack: Stack, faulty: FaultyRedis
) -> None:
    fault = faulty.fault
    async with app_client(faulty.settings(stack)) as client:
        opened = await client.get("/sessions/new/")
        assert opened.status_code == 204, opened.text
        location = await register(client)  # a status to read back while Redis refuses
        job = await client.post("/admin/jobs/price-packages/", headers=ADMIN)
        assert job.status_code == 202, job.text
        job_url = f"/admin/jobs/{job.json()['task_id']}/"
        assert (await client.get(job_url, headers=ADMIN)).status_code == 200

        await asyncio.to_thread(faulty.begin)
        answers = {
            "POST /packages/": await client.post("/packages/", json=valid_body()),
            "POST /packages/ with a key": await client.post(
                "/packages/", json=valid_body(), headers={"Idempotency-Key": "refused"}
            ),
            # A content type the fast path leaves to FastAPI's handler.
            "POST /packages/ to the handler": await client.post(
                "/packages/",
                content=json.dumps(valid_body()),
                headers={"Content-Type": "application/json; charset=utf-8"},
            ),
            "GET status": await client.get(location),
            "GET backlog": await client.get("/admin/stats/backlog/", headers=ADMIN),
            "GET job": await client.get(job_url, headers=ADMIN),
            "POST job": await client.post("/admin/jobs/price-packages/", headers=ADMIN),
            "GET /readyz": await client.get("/readyz"),
        }
        print({route: answer.status_code for route, answer in answers.items()})
        refused = {route for route, answer in answers.items() if _refused(answer)}
        # The pricing job's publish subscribes to its result, which a replica or a loading server allows.
        expected = {"POST /packages/", "POST /packages/ with a key", "POST /packages/ to the handler"}
        if fault.refuses_reads:
            expected |= {"GET status", "GET backlog", "GET job"}
        if fault.refuses_ping:
            expected |= {"GET /readyz"}
        assert refused == expected, {route: answers[route].text for route in refused ^ expected}
        for route in set(answers) - refused:
            served = 202 if route.startswith("POST") else 200
            assert answers[route].status_code == served, (route, answers[route].text)

        await asyncio.to_thread(faulty.end)
        # Registration flows again, the refused key included (it left nothing behind).
        again = await client.post("/packages/", json=valid_body(), headers={"Idempotency-Key": "refused"})
        assert again.status_code == 202, again.text
        assert (await client.get(location)).status_code == 200


def _batch_retries(worker: WorkerProcess) -> int:
    return worker.log().count("registration batch will retry")


async def test_the_worker_takes_a_refusing_store_as_transient(
    stack: Stack, faulty: FaultyRedis, start_worker: Callable[..., WorkerProcess], maker: Maker
) -> None:
    """Accepted while Redis served; Redis refuses when the worker takes the job: the batch is retried with
    the worker's backoff (no traceback, the job neither failed nor lost), and registered once it recovers."""
    stack.stop_shared_worker()  # on the machine's Redis, it would take the job
    settings = faulty.settings(stack)
    async with app_client(settings) as client:
        opened = await client.get("/sessions/new/")
        assert opened.status_code == 204, opened.text
        location = await register(client)
        # Longer than a worker takes to start and meet it.
        await asyncio.to_thread(faulty.begin, 2 * LOADING_DELAY_US)
        worker = start_worker(REDIS_URL=str(settings.REDIS_URL)).start()
        started = time.monotonic()
        await wait_until(lambda: _batch_retries(worker) >= 1, 30, "the batch retried")
        refused_for = time.monotonic() - started
        log = worker.log()
        assert "Traceback" not in log and "raised unexpected" not in log, log[-4000:]
        assert "registration failed" not in log, log[-4000:]
        # Refusing a while longer: the pool process probes the store after that line, and a fault ended
        # before its first probe would be no fault to it (a busy machine can hold it back that long).
        await asyncio.sleep(2.0)
        await asyncio.to_thread(faulty.end)
        status = await wait_done(client, location, limit=90)
    print(f"{faulty.fault.name}: {_batch_retries(worker)} retries, refused for {refused_for:.1f}s")
    assert status["state"] == "registered", status
    # The pool process watched for the store to take writes again and retried the batch at once, rather
    # than after a backoff: a Redis out of memory or demoted answers a ping all along.
    assert "database and store answer again" in worker.log(), worker.log()[-4000:]
    rows = await packages_by_registration(maker)
    assert [str(r) for r in rows] == [status_id_of(location)]
    assert "Traceback" not in worker.log(), worker.log()[-4000:]


@pytest.mark.parametrize("protocol", ["", "?protocol=2", "?protocol=3"])
async def test_the_store_speaks_the_protocol_its_url_names(
    stack: Stack, tmp_path: Path, protocol: str
) -> None:
    """The store's parser (redis-py's, knowing more error codes) is the one of the URL's protocol: its
    replies read right, and its refusals are classes."""
    server = RedisServer(tmp_path).start()
    store = create_store(stack.settings.model_copy(update={"REDIS_URL": AnyUrl(server.url + protocol)}))

    async def put(key: str) -> tuple[str, str] | None:
        return await store.put_pending(
            key, "pending", ttl=60, index="pending", member=key, score=1.0, fate=f"fate:{key}"
        )

    try:
        async with asyncio.timeout(10):
            assert await put("status:1") is None  # a nil reply
            done = await store.finish_pending([("status:1", "done")], index="pending", members=["status:1"])
            assert done == [True]
            await asyncio.to_thread(server.persistence_failing)
            with pytest.raises(ServiceUnavailable) as refused:
                await put("status:2")
        assert isinstance(refused.value.__cause__, PersistenceFailing), repr(refused.value.__cause__)
    finally:
        await store.close()
        server.stop()

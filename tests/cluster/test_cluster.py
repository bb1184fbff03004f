"""The service on a three-node RabbitMQ cluster with quorum queues: registrations survive the loss of a node.

In the bursts the API (`delivery serve`) and a worker are given the three nodes' URLs with the node that
leads the registration queue listed first, so both are connected to the node that is then lost.
"""

import asyncio
import itertools
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import httpx
from sqlalchemy import select

from delivery.broker import (
    PRICE_TASK,
    PRICING_QUEUE,
    REGISTRATION_QUEUE,
    amqp_publisher,
    create_celery,
    queued_registrations,
)
from delivery.models import Package
from delivery.registration import RegistrationJob
from realstack.cluster import Cluster, Node
from tests.chaos.burst import Burst, open_sessions, registered_exactly_once, send_burst
from tests.fakebank import FakeBank
from tests.helpers import Maker, valid_body, wait_until
from tests.stack import ApiProcess, Stack, WorkerProcess

#: When the fault strikes: enough accepted for jobs to be queued and in the worker's hands.
FAULT_AT = 300
#: How long a cleanly stopped node stays down before it is started again.
DOWN_FOR = 3.0
#: How often the package rows are looked at during a burst.
WATCH_INTERVAL = 0.2


def leader_first(cluster: Cluster, queue: str = REGISTRATION_QUEUE) -> tuple[Node, str]:
    """The queue's leader, and the nodes' URLs with it first (where the clients connect)."""
    leader = cluster.queue_leader(queue)
    others = [node for node in cluster.nodes if node is not leader]
    return leader, ";".join(node.url() for node in [leader, *others])


@contextmanager
def clients_on_the_leader(
    cluster: Cluster, stack: Stack, start_worker: Callable[..., WorkerProcess]
) -> Iterator[tuple[Node, WorkerProcess, ApiProcess]]:
    """A worker and an API connected to the registration queue's leader first (the stack's shared worker
    stopped: the one worker is the one on the leader); the API stopped afterwards."""
    stack.stop_shared_worker()
    leader, urls = leader_first(cluster)
    worker = start_worker(CELERY_BROKER_URL=urls).start()
    api = ApiProcess(stack, CELERY_BROKER_URL=urls).start()
    try:
        yield leader, worker, api
    finally:
        api.stop()


# --- quorum queues, and jobs that wait ---


async def test_queues_are_quorum_queues_on_every_node(cluster: Cluster, worker: WorkerProcess) -> None:
    for queue in (REGISTRATION_QUEUE, PRICING_QUEUE):
        assert cluster.queue_type(queue) == "quorum"
        status = cluster.nodes[0].ctl_output("list_queues", "name", "members", "--no-table-headers", "-q")
        members = next(line for line in status.splitlines() if line.startswith(f"{queue}\t"))
        assert all(node.name in members for node in cluster.nodes), members
    # Quorum queues refuse a global prefetch: the worker set its prefetch per consumer and consumes.
    assert "Global QoS is disabled" in worker.log()


async def test_the_api_and_the_worker_declare_the_queues_alike(cluster: Cluster, stack: Stack) -> None:
    """The API's publisher first on an empty vhost, then the worker's Celery app: the same arguments, or
    RabbitMQ would refuse the second declaration (PRECONDITION_FAILED), and the job is in the queue."""
    vhost = "declared-by-the-api-first"
    cluster.nodes[0].ctl("add_vhost", vhost)
    cluster.nodes[0].ctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
    settings = stack.settings.model_copy(update={"CELERY_BROKER_URL": cluster.urls(vhost)})
    job = RegistrationJob(str(uuid.uuid4()), 1, "parcel", "1.000", 1, "10.00", time.time())
    publisher = amqp_publisher(settings)
    assert publisher is not None
    app = create_celery(settings)
    try:
        await publisher.publish(job)
        with app.connection_for_write() as connection:
            for queue in app.amqp.queues.values():
                queue.bind(connection.default_channel).declare()
        assert await asyncio.to_thread(queued_registrations, app) == 1
        assert cluster.queue_type(REGISTRATION_QUEUE, vhost) == "quorum"
    finally:
        await publisher.close()
        app.close()
        cluster.nodes[0].ctl("delete_vhost", vhost)


async def test_registration_retried_later_through_the_delay_queues(
    customer: httpx.AsyncClient, worker: WorkerProcess, bank: FakeBank, maker: Maker
) -> None:
    """A job waiting for the bank is published again with a countdown, waits in the delay queues (quorum
    queues too) and is registered: here without a cost, the bank failing past its retry window."""
    bank.mode = "error"
    response = await customer.post("/packages/", json=valid_body())
    assert response.status_code == 202, response.text
    status_id = response.json()["status_id"]

    async def registered() -> bool:
        async with maker() as db:
            return (await db.scalar(select(Package).where(Package.registration_id == status_id))) is not None

    await wait_until(registered, 60, "the registration retried through the delay queues is registered")
    status = (await customer.get(f"/packages/status/{status_id}/")).json()
    assert status["state"] == "registered"
    retried = [line for line in worker.log().splitlines() if status_id in line and "retries=" in line]
    assert any("retries=0" not in line for line in retried), "the job never came back with a retry"


async def test_task_with_a_countdown_runs_after_it(stack: Stack, worker: WorkerProcess) -> None:
    """The pricing job's own retries (`self.retry(countdown=...)`) are Celery's: sent with a countdown, a
    run waits in the delay queues, not on a worker, and runs once it is over."""
    app = create_celery(stack.settings)
    try:
        sent = time.monotonic()
        result = app.send_task(PRICE_TASK, countdown=2)
        assert await asyncio.to_thread(result.get, timeout=60) == {"priced": 0}
        assert time.monotonic() - sent >= 2
    finally:
        app.close()


# --- a node lost during a burst ---


@dataclass
class Flow:
    """When registrations were accepted and registered around a fault (monotonic clock)."""

    fault_at: float = 0.0
    accepted_at: list[float] = field(default_factory=list)
    #: registration id -> when its package row was first seen (every WATCH_INTERVAL).
    registered_at: dict[str, float] = field(default_factory=dict)

    def stall(self, times: list[float]) -> float:
        """The longest time without any of `times`, from the fault on: how long until it flowed again."""
        points = [self.fault_at, *sorted(t for t in times if t >= self.fault_at)]
        return max((b - a for a, b in itertools.pairwise(points)), default=0.0)

    @property
    def accepting_stall(self) -> float:
        return self.stall(self.accepted_at)

    @property
    def registering_stall(self) -> float:
        return self.stall(list(self.registered_at.values()))


async def burst_losing_a_node(api: ApiProcess, maker: Maker, lose: Callable[[], None]) -> tuple[Burst, Flow]:
    flow = Flow()
    cookies = await open_sessions(api.url)
    faults: list[asyncio.Task[None]] = []

    def strike() -> None:
        flow.fault_at = time.monotonic()
        lose()

    async def on_accepted(count: int) -> None:
        flow.accepted_at.append(time.monotonic())
        if count == FAULT_AT:
            faults.append(asyncio.create_task(asyncio.to_thread(strike)))

    watching = asyncio.Event()
    watching.set()

    async def watch_rows() -> None:
        # Stopped between two queries, never cancelled inside one: its connection goes back to the pool.
        while watching.is_set():
            async with maker() as db:
                ids = (await db.scalars(select(Package.registration_id))).all()
            now = time.monotonic()
            for registration_id in ids:
                flow.registered_at.setdefault(str(registration_id), now)
            await asyncio.sleep(WATCH_INTERVAL)

    watcher = asyncio.create_task(watch_rows())
    try:
        burst = await send_burst(api.url, cookies, on_accepted=on_accepted)
        assert faults, "the fault never struck"
        await asyncio.gather(*faults)
        await registered_exactly_once(burst, api, maker, priced=True)
    finally:
        watching.clear()
        await watcher
    return burst, flow


def report(
    fault: str, burst: Burst, flow: Flow, cluster: Cluster, record: Callable[[str, object], None]
) -> None:
    connections = {node.name: cluster.connections(node) for node in cluster.running()}
    figures = {
        "accepted": len(burst.accepted),
        "refused_503": burst.refused,
        "no_202_for_s": round(flow.accepting_stall, 1),
        "no_new_package_for_s": round(flow.registering_stall, 1),
        "longest_wait_s": round(burst.longest_wait, 1),
    }
    for key, value in figures.items():
        record(key, value)
    print(f"\ncluster {fault}: {' '.join(f'{k}={v}' for k, v in figures.items())} connections={connections}")


async def test_leader_killed_mid_burst(
    cluster: Cluster,
    stack: Stack,
    start_worker: Callable[..., WorkerProcess],
    maker: Maker,
    record_property: Callable[[str, object], None],
) -> None:
    """SIGKILL to the node leading the registration queue, the node the API and the worker are connected to:
    no registration lost or doubled, only 202 or 503 with Retry-After, and both carry on through the other
    nodes by themselves (the same processes, not restarted)."""
    with clients_on_the_leader(cluster, stack, start_worker) as (leader, worker, api):
        burst, flow = await burst_losing_a_node(api, maker, leader.kill)
        assert not leader.alive()
        assert worker.alive(), worker.log()[-4000:]
        assert api.process is not None and api.process.poll() is None
        assert cluster.queue_leader(REGISTRATION_QUEUE) is not leader
        # A load balancer keeps the API in rotation: its readiness probe reaches another node.
        async with httpx.AsyncClient(base_url=api.url, timeout=10) as client:
            assert (await client.get("/readyz")).status_code == 200
        report("leader SIGKILL", burst, flow, cluster, record_property)


async def test_leader_stopped_and_started_again_mid_burst(
    cluster: Cluster,
    stack: Stack,
    start_worker: Callable[..., WorkerProcess],
    maker: Maker,
    record_property: Callable[[str, object], None],
) -> None:
    """The leader shut down cleanly (`rabbitmqctl stop`, as for an upgrade), started again moments later:
    it rejoins, and the registrations flowed meanwhile through the others."""
    with clients_on_the_leader(cluster, stack, start_worker) as (leader, worker, api):

        def stop_and_start() -> None:
            leader.stop()
            time.sleep(DOWN_FOR)
            cluster.restart(leader)

        burst, flow = await burst_losing_a_node(api, maker, stop_and_start)
        assert leader.alive()
        assert worker.alive(), worker.log()[-4000:]
        report("leader stopped and restarted", burst, flow, cluster, record_property)

"""The stack of tests/cluster: a RabbitMQ cluster of three nodes on this machine (`realstack.cluster`),
beside this machine's own node, which it leaves alone; MariaDB and Redis are the real ones, in a slot of
their own. The service is given the three nodes' URLs (`CELERY_BROKER_URL=a;b;c`) and
`BROKER_QUEUE_TYPE=quorum`. The cluster starts once, for all these tests; with CI=true a cluster that
cannot start is a failure, not a skip.
"""

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from delivery.broker import create_celery
from realstack.cluster import Cluster, ClusterError, rabbitmq_installed
from tests.conftest import CI
from tests.fakebank import FakeBank
from tests.stack import Stack, prepare_real, real_stack_down

HERE = Path(__file__).resolve().parent
#: The slot of shared services (database, Redis db) these tests use: apart from the two stacks' (gw0, gw1)
#: and the fault bursts' (gw3).
CLUSTER_SLOT = "gw2"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under `--dist loadgroup`, one xdist worker takes these tests: one cluster is started."""
    if not config.pluginmanager.hasplugin("xdist"):
        return
    for item in items:
        if HERE in Path(item.path).parents:
            item.add_marker(pytest.mark.xdist_group("cluster"))


def _unavailable(message: str) -> None:
    if CI:
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="package")
def cluster() -> Iterator[Cluster]:
    if missing := rabbitmq_installed():
        _unavailable(f"no RabbitMQ cluster: {missing}")
    nodes = Cluster(f"delivery-test-{os.getpid()}")
    try:
        nodes.start()
    except (ClusterError, OSError) as exc:
        nodes.close()
        _unavailable(f"the RabbitMQ cluster did not start: {exc}")
    yield nodes
    nodes.close()


@pytest.fixture(scope="package")
def stack(cluster: Cluster, workdir: Path, bank: FakeBank) -> Iterator[Stack]:
    """The real stack, its broker the cluster, its queues quorum queues (declared now, led by node 1)."""
    if down := real_stack_down():
        _unavailable(f"real stack unavailable: {down}")
    settings = prepare_real(CLUSTER_SLOT, bank.url).model_copy(
        update={"CELERY_BROKER_URL": cluster.urls(), "BROKER_QUEUE_TYPE": "quorum"}
    )
    result = Stack(name="cluster", settings=settings, workdir=workdir)
    result.migrate()
    app = create_celery(settings)
    with app.connection_for_write() as connection:
        for queue in app.amqp.queues.values():
            queue.bind(connection.default_channel).declare()
    app.close()
    yield result
    result.close()


@pytest.fixture(autouse=True)
def all_nodes_running(cluster: Cluster) -> Iterator[None]:
    """A node that a test stopped or killed is a running member again after it."""
    yield
    for node in cluster.nodes:
        if not node.alive():
            cluster.restart(node)
    cluster.wait_running(cluster.nodes)

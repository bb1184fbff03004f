"""The broker's settings: several nodes of a cluster in CELERY_BROKER_URL, and the queues' type."""

import pytest
from pydantic import ValidationError

from delivery.broker import PRICING_QUEUE, REGISTRATION_QUEUE, create_celery
from delivery.config import Settings

CLUSTER = (
    "amqp://u:p@rabbit-1:5672/delivery;amqp://u:p@rabbit-2:5672/delivery;amqp://u:p@rabbit-3:5672/delivery"
)


def test_several_nodes_separated_by_semicolons_are_one_setting() -> None:
    settings = Settings(CELERY_BROKER_URL=CLUSTER, BROKER_QUEUE_TYPE="quorum")
    assert settings.CELERY_BROKER_URL == CLUSTER
    # Celery (kombu) takes them as its failover list, in this order.
    app = create_celery(settings)
    try:
        with app.connection_for_write() as connection:
            assert connection.alt == CLUSTER.split(";")
    finally:
        app.close()


@pytest.mark.parametrize(
    "value",
    [
        "amqp://u:p@rabbit-1:5672//;",  # an empty part
        "amqp://u:p@rabbit-1:5672//;rabbit-2",  # a part that is no URL
        "not a url",
    ],
)
def test_each_node_must_be_a_url(value: str) -> None:
    with pytest.raises(ValidationError, match="CELERY_BROKER_URL"):
        Settings(CELERY_BROKER_URL=value)


def test_queue_type_is_classic_unless_quorum_is_asked_for(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BROKER_QUEUE_TYPE", raising=False)
    assert Settings(_env_file=None).BROKER_QUEUE_TYPE == "classic"
    with pytest.raises(ValidationError, match="BROKER_QUEUE_TYPE"):
        Settings(BROKER_QUEUE_TYPE="stream")


@pytest.mark.parametrize(
    ("queue_type", "arguments", "exchange"),
    [("classic", None, "direct"), ("quorum", {"x-queue-type": "quorum"}, "topic")],
)
def test_queues_as_declared(queue_type: str, arguments: dict[str, str] | None, exchange: str) -> None:
    """Classic queues keep the direct exchanges they were first declared with (an existing broker refuses
    another type); quorum queues sit behind topic exchanges, which delayed delivery needs."""
    app = create_celery(Settings(CELERY_BROKER_URL="amqp://u:p@rabbit:5672//", BROKER_QUEUE_TYPE=queue_type))
    for name in (REGISTRATION_QUEUE, PRICING_QUEUE):
        queue = app.amqp.queues[name]
        assert (queue.queue_arguments or None) == arguments
        assert queue.exchange.type == exchange
        assert queue.durable
    app.close()

"""GET /types/, and the operations endpoints /healthz and /readyz."""

from typing import Any

import httpx
import pytest
from pydantic import AnyUrl

from delivery.config import Settings
from tests.factories import app_client

TYPES = [{"id": 1, "name": "clothes"}, {"id": 2, "name": "electronics"}, {"id": 3, "name": "misc"}]
#: Nothing listens there: a connection is refused at once.
CLOSED_REDIS = AnyUrl("redis://127.0.0.1:1/0")
CLOSED_BROKER = AnyUrl("amqp://guest:guest@127.0.0.1:1//")
CLOSED_DATABASE = "mysql+asyncmy://root@127.0.0.1:1/delivery"
#: How a 503 may name each service.
NAMES = {"database": ("database",), "store": ("store", "redis"), "broker": ("broker", "rabbitmq", "amqp")}


@pytest.mark.parametrize("path", ["/types/", "/types"])
async def test_types_need_no_session(client: httpx.AsyncClient, path: str) -> None:
    response = await client.get(path, follow_redirects=True)

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    assert response.json() == TYPES


async def test_types_bytes(client: httpx.AsyncClient) -> None:
    response = await client.get("/types/")

    assert (
        response.content
        == b'[{"id":1,"name":"clothes"},{"id":2,"name":"electronics"},{"id":3,"name":"misc"}]'
    )


async def test_types_ignore_a_bad_session(client: httpx.AsyncClient) -> None:
    client.cookies.set("session_id", "never-issued")

    response = await client.get("/types/")

    assert response.status_code == 200
    assert response.json() == TYPES


async def test_healthz(client: httpx.AsyncClient) -> None:
    response = await client.get("/healthz")

    assert response.status_code == 200


async def test_healthz_while_backing_services_are_down(settings: Settings) -> None:
    broken = settings.model_copy(update={"REDIS_URL": CLOSED_REDIS, "CELERY_BROKER_URL": CLOSED_BROKER})
    async with app_client(broken) as http:
        response = await http.get("/healthz")

    assert response.status_code == 200


async def test_readyz_when_everything_answers(client: httpx.AsyncClient) -> None:
    response = await client.get("/readyz")

    assert response.status_code == 200, response.text
    assert response.json()["checks"] == {"database": "ok", "store": "ok", "broker": "ok"}


def assert_not_ready(response: httpx.Response, down: set[str]) -> None:
    assert response.status_code == 503, response.text
    assert response.headers.get("Retry-After", "").isdigit()
    body: dict[str, Any] = response.json()
    detail = str(body["detail"]).lower()
    for service, names in NAMES.items():
        named = any(name in detail for name in names)
        assert named == (service in down), (service, body)


@pytest.mark.parametrize(
    ("update", "down"),
    [
        pytest.param({"REDIS_URL": CLOSED_REDIS}, {"store"}, id="store"),
        pytest.param({"CELERY_BROKER_URL": CLOSED_BROKER}, {"broker"}, id="broker"),
        pytest.param({"DATABASE_URL": CLOSED_DATABASE}, {"database"}, id="database"),
        pytest.param(
            {"REDIS_URL": CLOSED_REDIS, "CELERY_BROKER_URL": CLOSED_BROKER},
            {"store", "broker"},
            id="store+broker",
        ),
    ],
)
async def test_readyz_names_the_service_that_is_down(
    settings: Settings, update: dict[str, Any], down: set[str]
) -> None:
    async with app_client(settings.model_copy(update=update)) as http:
        response = await http.get("/readyz")

    assert_not_ready(response, down)


async def test_types_while_the_database_is_down_is_503(settings: Settings) -> None:
    async with app_client(settings.model_copy(update={"DATABASE_URL": CLOSED_DATABASE})) as http:
        response = await http.get("/types/")

    assert response.status_code == 503, response.text
    assert response.headers.get("Retry-After", "").isdigit()
    assert "database" in str(response.json()["detail"]).lower()

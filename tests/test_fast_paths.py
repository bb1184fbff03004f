"""The fast paths (`delivery.api.fastpath`) answer exactly what FastAPI's handler answers, and
leave to that handler every request they do not take plainly (no cached session, values to refuse or coerce,
parameters repeated, a body to refuse), the body they read included."""

import json
from decimal import Decimal
from typing import Any

import httpx
import pytest
import sqlalchemy.exc
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from delivery.api import fastpath, packages
from delivery.errors import ServiceUnavailable
from tests.factories import add_package, open_session

Maker = async_sessionmaker[AsyncSession]


def forget_sessions(client: httpx.AsyncClient) -> None:
    """Empty the app's session cache: the next read goes through FastAPI's handler (and fills it again)."""
    resources = client.app.state.resources  # type: ignore[attr-defined]
    resources.sessions = type(resources.sessions)()


def forget_types(client: httpx.AsyncClient) -> None:
    client.app.state.types_answer = None  # type: ignore[attr-defined]


def same_answer(full: httpx.Response, fast: httpx.Response) -> None:
    assert (fast.status_code, fast.content) == (full.status_code, full.content)
    skip = {"date", "x-request-id"}
    assert [(k, v) for k, v in fast.headers.items() if k not in skip] == [
        (k, v) for k, v in full.headers.items() if k not in skip
    ]


@pytest.fixture
def taken(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names of the fast paths that answered (not those that handed over to FastAPI's handler)."""
    answered: list[str] = []
    for endpoint, fast in list(fastpath.FAST_PATHS.items()):

        async def recording(request: Any, fast: Any = fast) -> Any:
            response = await fast(request)
            if response is not None:
                answered.append(fast.__name__)
            return response

        monkeypatch.setitem(fastpath.FAST_PATHS, endpoint, recording)
    return answered


async def seven_packages(client: httpx.AsyncClient, maker: Maker) -> list[int]:
    session_id = await open_session(client)
    return [
        await add_package(
            maker,
            session_id=session_id,
            type_id=1 + n % 3,
            delivery_cost_rub=Decimal("12.30") if n % 2 else None,
            transport_company_id=7 if n == 3 else None,
        )
        for n in range(7)
    ]


@pytest.mark.parametrize(
    "query",
    [
        "",
        "page=1&size=20",
        "size=3&page=2",
        "page=3&size=3",
        "page=99&size=3",
        "type=1",
        "type=2&has_cost=true",
        "has_cost=false&type=1&page=1&size=1",
        "has_cost=true",
        "type=2147483647",
        "page=100000000000000&size=100",
    ],
)
async def test_fast_list_answers_as_fastapi(
    client: httpx.AsyncClient, maker: Maker, query: str, taken: list[str]
) -> None:
    await seven_packages(client, maker)
    # The new session is not in the cache yet: FastAPI's handler answers, and caches it.
    full = await client.get(f"/packages/?{query}")
    assert taken == []
    fast = await client.get(f"/packages/?{query}")
    assert taken == ["_fast_list"]

    assert full.status_code == 200, full.text
    same_answer(full, fast)


@pytest.mark.parametrize(
    ("query", "status"),
    [
        ("page=01", 200),
        ("page=+2", 200),
        ("size=%32", 200),
        ("has_cost=1", 200),
        ("has_cost=True", 200),
        ("has_cost=yes", 200),
        ("has_cost=maybe", 422),
        ("page=0", 422),
        ("page=-1", 422),
        ("size=0", 422),
        ("size=101", 422),
        ("type=0", 422),
        ("type=2147483648", 422),
        ("type=abc", 422),
        ("page=", 422),
        ("page=1&page=2", 200),
        ("type=1&unknown=1", 200),
        ("page=1000000000000000", 200),
    ],
)
async def test_other_queries_go_to_fastapi(
    client: httpx.AsyncClient, maker: Maker, query: str, status: int, taken: list[str]
) -> None:
    await seven_packages(client, maker)
    await client.get("/packages/")  # the session cached
    taken.clear()

    response = await client.get(f"/packages/?{query}")
    forget_sessions(client)
    full = await client.get(f"/packages/?{query}")

    assert taken == []
    assert response.status_code == status, response.text
    same_answer(full, response)


async def test_no_session_or_unknown_goes_to_fastapi(customer: httpx.AsyncClient, taken: list[str]) -> None:
    customer.cookies.clear()
    assert (await customer.get("/packages/")).status_code == 401
    customer.cookies.set("session_id", "not-a-session")
    assert (await customer.get("/packages/")).status_code == 401
    assert (await customer.get("/packages/1/")).status_code == 401
    assert taken == []


async def test_fast_package_answers_as_fastapi(
    client: httpx.AsyncClient, maker: Maker, taken: list[str]
) -> None:
    package_ids = await seven_packages(client, maker)
    for package_id in package_ids:
        forget_sessions(client)
        full = await client.get(f"/packages/{package_id}/")
        fast = await client.get(f"/packages/{package_id}/")
        assert full.status_code == 200, full.text
        same_answer(full, fast)
    assert taken == ["_fast_package"] * len(package_ids)

    # Not this session's (or no package at all): 404 from either.
    forget_sessions(client)
    full = await client.get(f"/packages/{max(package_ids) + 1}/")
    fast = await client.get(f"/packages/{max(package_ids) + 1}/")
    assert full.status_code == 404
    same_answer(full, fast)


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        ("0", 404),
        ("-1", 404),
        ("0{first}", 200),
        ("{first}.0", 200),
        ("+{first}", 200),
        ("9223372036854775808", 404),
        ("abc", 422),
    ],
)
async def test_other_package_ids_go_to_fastapi(
    client: httpx.AsyncClient, maker: Maker, raw: str, status: int, taken: list[str]
) -> None:
    (first, *_) = await seven_packages(client, maker)
    await client.get("/packages/")  # the session cached
    taken.clear()
    response = await client.get(f"/packages/{raw.format(first=first)}/")

    assert taken == []
    assert response.status_code == status, response.text


async def test_fast_types_answers_as_fastapi(client: httpx.AsyncClient, taken: list[str]) -> None:
    forget_types(client)
    full = await client.get("/types/")
    fast = await client.get("/types/")

    assert taken == ["_fast_types"]
    assert full.json() == [
        {"id": 1, "name": "clothes"},
        {"id": 2, "name": "electronics"},
        {"id": 3, "name": "misc"},
    ]
    same_answer(full, fast)


PARCEL = {"name": "Winter jacket", "weight_kg": "1.25", "type_id": 1, "content_value_usd": "120"}


async def test_fast_register_answers_as_fastapi(customer: httpx.AsyncClient, taken: list[str]) -> None:
    # The same Idempotency-Key: the same registration, answered by each path.
    headers = {"Idempotency-Key": "fast-path-1"}
    forget_sessions(customer)
    full = await customer.post("/packages/", json=PARCEL, headers=headers)
    assert taken == []
    fast = await customer.post("/packages/", json=PARCEL, headers=headers)
    assert taken == ["_fast_register"]

    assert full.status_code == 202, full.text
    same_answer(full, fast)
    assert fast.headers["location"] == f"/packages/status/{fast.json()['status_id']}/"


async def test_fast_register_stores_and_publishes(customer: httpx.AsyncClient, taken: list[str]) -> None:
    # A process's first registration goes to FastAPI's handler: it reads the types and caches the session.
    assert (await customer.post("/packages/", json=PARCEL)).status_code == 202
    taken.clear()
    accepted = await customer.post("/packages/", json=PARCEL)
    assert taken == ["_fast_register"]
    assert accepted.status_code == 202, accepted.text

    status = await customer.get(accepted.headers["location"])
    assert status.status_code == 200, status.text
    assert status.json()["status_id"] == accepted.json()["status_id"]
    assert status.json()["state"] in ("pending", "registered")


async def test_a_type_this_process_has_not_read_goes_to_fastapi(
    customer: httpx.AsyncClient, taken: list[str]
) -> None:
    # The fast path has read the body when it hands over: the handler reads it again.
    assert (await customer.post("/packages/", json=PARCEL)).status_code == 202
    customer.app.state.resources.type_ids = frozenset()  # type: ignore[attr-defined]
    taken.clear()
    response = await customer.post("/packages/", json=PARCEL)

    assert taken == []
    assert response.status_code == 202, response.text
    assert customer.app.state.resources.type_ids == {1, 2, 3}  # type: ignore[attr-defined]


DEEP = b"[" * 50_000 + b"]" * 50_000


@pytest.mark.parametrize(
    ("body", "headers", "status"),
    [
        ({**PARCEL, "weight_kg": ""}, {}, 422),
        ({**PARCEL, "type_id": 99}, {}, 422),
        ({**PARCEL, "extra": 1}, {}, 422),
        ({**PARCEL, "content_value_usd": 1.005}, {}, 422),
        ([PARCEL], {}, 422),
        (b'{"name": "x", "weight_kg": ', {"content-type": "application/json"}, 422),
        (DEEP[:60_000], {"content-type": "application/json"}, 400),
        (b"\xff\xfe", {"content-type": "application/json"}, 422),
        (PARCEL, {"Idempotency-Key": ""}, 422),
        (PARCEL, {"Idempotency-Key": "k" * 256}, 422),
        (PARCEL, {"content-type": "application/json; charset=utf-8"}, 202),
        (PARCEL, {"content-type": "text/plain"}, 422),
    ],
)
async def test_other_registrations_go_to_fastapi(
    customer: httpx.AsyncClient, body: Any, headers: dict[str, str], status: int, taken: list[str]
) -> None:
    def post() -> Any:
        if isinstance(body, bytes):
            return customer.post("/packages/", content=body, headers=headers)
        if "content-type" in headers:
            return customer.post("/packages/", content=json.dumps(body), headers=headers)
        return customer.post("/packages/", json=body, headers=headers)

    await customer.get("/packages/")  # the session cached
    taken.clear()
    response = await post()
    forget_sessions(customer)
    full = await post()

    assert taken == []
    assert response.status_code == status, response.text
    if status != 202:
        same_answer(full, response)


async def test_repeated_idempotency_keys_go_to_fastapi(customer: httpx.AsyncClient, taken: list[str]) -> None:
    headers = [("Idempotency-Key", "one"), ("Idempotency-Key", "two"), ("content-type", "application/json")]
    await customer.get("/packages/")  # the session cached
    taken.clear()
    response = await customer.post("/packages/", content=json.dumps(PARCEL), headers=headers)
    forget_sessions(customer)
    full = await customer.post("/packages/", content=json.dumps(PARCEL), headers=headers)

    assert taken == []
    assert response.status_code == 202, response.text
    same_answer(full, response)  # the first key counts: the same registration


@pytest.mark.parametrize(
    ("error", "status", "detail"),
    [
        (ServiceUnavailable("store"), 503, "store is unavailable, try again later"),
        (sqlalchemy.exc.OperationalError("SELECT 1", {}, Exception("gone")), 503, "database is unavailable"),
        (RuntimeError("a bug"), 500, "internal error"),
    ],
)
async def test_a_fast_path_error_is_answered_as_the_handlers_answer_it(
    customer: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch, error: Exception, status: int, detail: str
) -> None:
    async def failing(request: Any) -> Any:
        raise error

    await customer.get("/packages/")  # the session cached
    monkeypatch.setitem(fastpath.FAST_PATHS, packages.list_packages, failing)
    response = await customer.get("/packages/", headers={"X-Request-ID": "req-1"})

    assert response.status_code == status
    assert response.json()["detail"].startswith(detail)
    assert response.headers["x-request-id"] == "req-1"
    assert ("retry-after" in response.headers) == (status == 503)


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [("HEAD", "/types/", 405), ("PUT", "/packages/", 405), ("GET", "/packages/status/abc/", 422)],
)
async def test_other_methods_and_paths_go_to_fastapi(
    customer: httpx.AsyncClient, method: str, path: str, status: int, taken: list[str]
) -> None:
    await customer.get("/packages/")  # the session cached
    taken.clear()
    response = await customer.request(method, path)

    assert taken == []
    assert response.status_code == status


async def test_a_body_over_the_limit_goes_to_fastapi(customer: httpx.AsyncClient, taken: list[str]) -> None:
    await customer.get("/packages/")  # the session cached
    taken.clear()
    response = await customer.post("/packages/", json={**PARCEL, "name": "x" * 70_000})

    assert taken == []
    assert response.status_code == 413
    assert response.json() == {"detail": "request body over 64 KiB"}
    assert "x-request-id" in response.headers

"""The reads' fast path (`delivery.api.packages.ReadRoute`) answers exactly what FastAPI's handler answers,
and leaves to that handler every request it does not take plainly (no cached session, values to refuse or
coerce, parameters repeated)."""

from decimal import Decimal
from typing import Any

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from delivery.api import packages
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
    for endpoint, fast in list(packages._FAST_PATHS.items()):

        async def recording(request: Any, fast: Any = fast) -> Any:
            response = await fast(request)
            if response is not None:
                answered.append(fast.__name__)
            return response

        monkeypatch.setitem(packages._FAST_PATHS, endpoint, recording)
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

"""GET /packages/ and /packages/{id}/: ownership, order, filters, pages, exact totals and decimals, one query
a page."""

import asyncio
import random
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, TypeVar

import httpx
import pytest
from sqlalchemy import delete, event, func, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from delivery import service
from delivery.jobs import create_package, create_packages, price_pending
from delivery.models import BLOCK_BITS, ClientSession, Package, PackageBlock
from delivery.rates import Rate
from delivery.registration import RegistrationJob
from delivery.service import bind_transport_company
from tests.factories import add_package, add_packages, add_session, open_session, use_session

Maker = async_sessionmaker[AsyncSession]
PACKAGE_KEYS = {
    "id",
    "name",
    "weight_kg",
    "type",
    "content_value_usd",
    "delivery_cost_rub",
    "transport_company_id",
    "created_at",
}
CLOTHES = {"id": 1, "name": "clothes"}
ELECTRONICS = {"id": 2, "name": "electronics"}
MISC = {"id": 3, "name": "misc"}


async def list_packages(client: httpx.AsyncClient, **params: Any) -> dict[str, Any]:
    response = await client.get("/packages/", params=params)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def ids(page: dict[str, Any]) -> list[int]:
    return [item["id"] for item in page["items"]]


def assert_error_names(response: httpx.Response, location: list[str]) -> None:
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert isinstance(detail, list)
    assert any(error["loc"] == location for error in detail), detail


T = TypeVar("T")


def app_engine(client: httpx.AsyncClient) -> Engine:
    engine: Engine = client.app.state.resources.engine.sync_engine  # type: ignore[attr-defined]
    return engine


@contextmanager
def recorded(client: httpx.AsyncClient, entry: Callable[[str, Any], T]) -> Iterator[list[T]]:
    """`entry(statement, parameters)` of each SQL statement the app's engine sends while the block runs."""
    engine = app_engine(client)
    seen: list[T] = []

    def record(_conn: Any, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        seen.append(entry(statement, parameters))

    event.listen(engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", record)


def statements(client: httpx.AsyncClient) -> AbstractContextManager[list[str]]:
    """The SQL statements the app's engine sends while the block runs."""
    return recorded(client, lambda statement, _: statement)


def executed(client: httpx.AsyncClient) -> AbstractContextManager[list[tuple[str, Any]]]:
    """The SQL statements the app's engine sends while the block runs, with their parameters."""
    return recorded(client, lambda statement, parameters: (statement, parameters))


# --- the shape of a package ---


async def test_package_shape_and_exact_decimals(client: httpx.AsyncClient, maker: Maker) -> None:
    session_id = await open_session(client)
    package_id = await add_package(
        maker,
        session_id=session_id,
        type_id=1,
        name="Winter jacket",
        weight_kg=Decimal("1.25"),
        content_value_usd=Decimal("120"),
        delivery_cost_rub=Decimal("5617.16"),
    )

    (item,) = (await list_packages(client))["items"]

    assert set(item) == PACKAGE_KEYS
    assert item["id"] == package_id
    assert item["name"] == "Winter jacket"
    assert item["weight_kg"] == "1.250"
    assert item["type"] == CLOTHES
    assert item["content_value_usd"] == "120.00"
    assert item["delivery_cost_rub"] == "5617.16"
    assert item["transport_company_id"] is None


async def test_decimals_are_strings_with_fixed_places_in_the_raw_json(
    client: httpx.AsyncClient, maker: Maker
) -> None:
    session_id = await open_session(client)
    await add_package(
        maker,
        session_id=session_id,
        weight_kg=Decimal("2"),
        content_value_usd=Decimal("0.5"),
        delivery_cost_rub=Decimal("10.1"),
    )

    response = await client.get("/packages/")

    assert response.status_code == 200
    text = response.text
    assert '"weight_kg":"2.000"' in text.replace(" ", "")
    assert '"content_value_usd":"0.50"' in text.replace(" ", "")
    assert '"delivery_cost_rub":"10.10"' in text.replace(" ", "")


async def test_the_answers_bytes_are_compact_json_with_decimals_at_their_places(
    client: httpx.AsyncClient, maker: Maker
) -> None:
    session_id = await open_session(client)
    stamp = datetime(2024, 2, 29, 23, 59, 58, 123456, tzinfo=UTC)
    priced = await add_package(
        maker,
        session_id=session_id,
        type_id=2,
        name="Зимняя куртка",
        weight_kg=Decimal("1.5"),
        content_value_usd=Decimal("12"),
        delivery_cost_rub=Decimal("5617.1"),
        transport_company_id=7,
        created_at=stamp,
    )
    unpriced = await add_package(
        maker,
        session_id=session_id,
        weight_kg=Decimal("1000"),
        content_value_usd=Decimal("0"),
        created_at=stamp,
    )
    priced_json = (
        f'{{"id":{priced},"name":"Зимняя куртка","weight_kg":"1.500","type":{{"id":2,"name":"electronics"}},'
        '"content_value_usd":"12.00","delivery_cost_rub":"5617.10","transport_company_id":7,'
        '"created_at":"2024-02-29T23:59:58.123456Z"}'
    )
    unpriced_json = (
        f'{{"id":{unpriced},"name":"Winter jacket","weight_kg":"1000.000","type":{{"id":1,"name":"clothes"}},'
        '"content_value_usd":"0.00","delivery_cost_rub":null,"transport_company_id":null,'
        '"created_at":"2024-02-29T23:59:58.123456Z"}'
    )

    page = await client.get("/packages/", params={"size": 1})
    detail = await client.get(f"/packages/{priced}/")

    assert page.headers["content-type"] == detail.headers["content-type"] == "application/json"
    assert page.content == f'{{"items":[{unpriced_json}],"total":2,"page":1,"size":1,"pages":2}}'.encode()
    assert detail.content == priced_json.encode()


async def test_cost_not_calculated_is_null(client: httpx.AsyncClient, maker: Maker) -> None:
    session_id = await open_session(client)
    package_id = await add_package(maker, session_id=session_id, delivery_cost_rub=None)

    (item,) = (await list_packages(client))["items"]
    detail = (await client.get(f"/packages/{package_id}/")).json()

    assert item["delivery_cost_rub"] is None
    assert detail["delivery_cost_rub"] is None
    assert "delivery_cost_rub" in detail


@pytest.mark.parametrize(
    ("weight", "value", "cost", "expected"),
    [
        pytest.param(
            Decimal("999.999"),
            Decimal("999999999.99"),
            Decimal("12345678901.23"),
            ("999.999", "999999999.99", "12345678901.23"),
            id="largest",
        ),
        pytest.param(
            Decimal("1000"),
            Decimal("1000000000"),
            Decimal("123456789012.34"),
            ("1000.000", "1000000000.00", "123456789012.34"),
            id="upper-bounds",
        ),
        pytest.param(
            Decimal("0.001"), Decimal("0"), Decimal("0.01"), ("0.001", "0.00", "0.01"), id="smallest"
        ),
        pytest.param(
            Decimal("0.1"),
            Decimal("0.1"),
            Decimal("0.3"),
            ("0.100", "0.10", "0.30"),
            id="not-binary-fractions",
        ),
    ],
)
async def test_exact_values_survive_the_round_trip(
    client: httpx.AsyncClient,
    maker: Maker,
    weight: Decimal,
    value: Decimal,
    cost: Decimal,
    expected: tuple[str, str, str],
) -> None:
    session_id = await open_session(client)
    package_id = await add_package(
        maker, session_id=session_id, weight_kg=weight, content_value_usd=value, delivery_cost_rub=cost
    )

    (item,) = (await list_packages(client))["items"]
    detail = (await client.get(f"/packages/{package_id}/")).json()

    for body in (item, detail):
        assert (body["weight_kg"], body["content_value_usd"], body["delivery_cost_rub"]) == expected


async def test_created_at_is_utc_iso_8601(client: httpx.AsyncClient, maker: Maker) -> None:
    session_id = await open_session(client)
    stamp = datetime(2024, 2, 29, 23, 59, 58, 123456, tzinfo=UTC)
    await add_package(maker, session_id=session_id, created_at=stamp)
    before = datetime.now(UTC)
    await add_package(maker, session_id=session_id)
    after = datetime.now(UTC)

    newer, older = (await list_packages(client))["items"]

    for item in (newer, older):
        assert item["created_at"].endswith(("Z", "+00:00")), item["created_at"]
    assert datetime.fromisoformat(older["created_at"]) == stamp
    created = datetime.fromisoformat(newer["created_at"])
    assert before - timedelta(seconds=1) <= created <= after + timedelta(seconds=1)


async def test_transport_company_id(client: httpx.AsyncClient, maker: Maker) -> None:
    session_id = await open_session(client)
    await add_package(maker, session_id=session_id, transport_company_id=None)
    await add_package(maker, session_id=session_id, transport_company_id=7)

    bound, unbound = (await list_packages(client))["items"]

    assert bound["transport_company_id"] == 7
    assert unbound["transport_company_id"] is None


# --- the list: ownership, order, filters, pages ---


async def test_list_is_newest_first(client: httpx.AsyncClient, maker: Maker) -> None:
    session_id = await open_session(client)
    first = await add_package(maker, session_id=session_id, name="first", type_id=1)
    second = await add_package(maker, session_id=session_id, name="second", type_id=2)
    third = await add_package(maker, session_id=session_id, name="third", type_id=3)

    page = await list_packages(client)

    assert ids(page) == [third, second, first]
    assert [item["name"] for item in page["items"]] == ["third", "second", "first"]
    assert [item["type"] for item in page["items"]] == [MISC, ELECTRONICS, CLOTHES]
    assert (page["total"], page["page"], page["size"], page["pages"]) == (3, 1, 20, 1)


async def test_list_is_in_id_order_not_creation_time(client: httpx.AsyncClient, maker: Maker) -> None:
    session_id = await open_session(client)
    older_id = await add_package(maker, session_id=session_id, created_at=datetime(2030, 1, 1, tzinfo=UTC))
    newer_id = await add_package(maker, session_id=session_id, created_at=datetime(2020, 1, 1, tzinfo=UTC))

    assert ids(await list_packages(client)) == [newer_id, older_id]


async def test_empty_list(customer: httpx.AsyncClient) -> None:
    page = await list_packages(customer)

    assert page["items"] == []
    assert page["total"] == 0
    assert (page["page"], page["size"]) == (1, 20)


async def test_list_shows_only_this_sessions_packages(client: httpx.AsyncClient, maker: Maker) -> None:
    other_id, other_token = await add_session(maker)
    theirs = await add_packages(maker, session_id=other_id, count=3, type_id=2)
    mine_id = await open_session(client)
    mine = [
        await add_package(maker, session_id=mine_id, type_id=2),
        await add_package(maker, session_id=mine_id, type_id=2, delivery_cost_rub=Decimal("1.00")),
    ]
    theirs.append(await add_package(maker, session_id=other_id, type_id=2, delivery_cost_rub=Decimal("2.00")))

    for params in (
        {},
        {"type": 2},
        {"has_cost": "true"},
        {"has_cost": "false"},
        {"type": 2, "has_cost": "true"},
    ):
        page = await list_packages(client, **params)
        assert not set(ids(page)) & set(theirs), params
    page = await list_packages(client)
    assert ids(page) == mine[::-1]
    assert page["total"] == 2

    use_session(client, other_token)
    page = await list_packages(client)
    assert ids(page) == theirs[::-1]
    assert page["total"] == 4


async def filter_fixture(client: httpx.AsyncClient, maker: Maker) -> dict[str, tuple[int, bool]]:
    """Six packages of this session: name -> (type id, has a cost), inserted in this order."""
    session_id = await open_session(client)
    layout = {
        "c1": (1, True),
        "e1": (2, False),
        "c2": (1, False),
        "m1": (3, True),
        "e2": (2, True),
        "c3": (1, True),
    }
    for name, (type_id, priced) in layout.items():
        await add_package(
            maker,
            session_id=session_id,
            name=name,
            type_id=type_id,
            delivery_cost_rub=Decimal("100.00") if priced else None,
        )
    return layout


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        pytest.param({}, ["c3", "e2", "m1", "c2", "e1", "c1"], id="none"),
        pytest.param({"type": 1}, ["c3", "c2", "c1"], id="type=1"),
        pytest.param({"type": 2}, ["e2", "e1"], id="type=2"),
        pytest.param({"type": 3}, ["m1"], id="type=3"),
        pytest.param({"has_cost": "true"}, ["c3", "e2", "m1", "c1"], id="has_cost=true"),
        pytest.param({"has_cost": "false"}, ["c2", "e1"], id="has_cost=false"),
        pytest.param({"type": 1, "has_cost": "true"}, ["c3", "c1"], id="type=1&has_cost=true"),
        pytest.param({"type": 1, "has_cost": "false"}, ["c2"], id="type=1&has_cost=false"),
        pytest.param({"type": 3, "has_cost": "false"}, [], id="type=3&has_cost=false"),
        pytest.param({"type": 99}, [], id="unknown type"),
    ],
)
async def test_filters(
    client: httpx.AsyncClient, maker: Maker, params: dict[str, Any], expected: list[str]
) -> None:
    layout = await filter_fixture(client, maker)

    page = await list_packages(client, **params)

    assert [item["name"] for item in page["items"]] == expected
    assert page["total"] == len(expected)
    for item in page["items"]:
        type_id, priced = layout[item["name"]]
        assert item["type"]["id"] == type_id
        assert (item["delivery_cost_rub"] is not None) == priced


async def test_filter_combines_with_pages(client: httpx.AsyncClient, maker: Maker) -> None:
    await filter_fixture(client, maker)

    first = await list_packages(client, type=1, has_cost="true", size=1, page=1)
    second = await list_packages(client, type=1, has_cost="true", size=1, page=2)
    third = await list_packages(client, type=1, has_cost="true", size=1, page=3)

    assert [item["name"] for item in first["items"]] == ["c3"]
    assert [item["name"] for item in second["items"]] == ["c1"]
    assert third["items"] == []
    for page in (first, second, third):
        assert (page["total"], page["pages"], page["size"]) == (2, 2, 1)


async def test_pagination(client: httpx.AsyncClient, maker: Maker) -> None:
    session_id = await open_session(client)
    created = await add_packages(maker, session_id=session_id, count=7)
    newest_first = created[::-1]

    pages = [await list_packages(client, size=3, page=n) for n in (1, 2, 3)]

    assert [ids(page) for page in pages] == [newest_first[0:3], newest_first[3:6], newest_first[6:7]]
    for n, page in enumerate(pages, start=1):
        assert (page["total"], page["page"], page["size"], page["pages"]) == (7, n, 3, 3)


@pytest.mark.parametrize("page_number", [4, 5, 1000, 2**63, 10**22])  # an offset past any integer column
async def test_page_past_the_end(client: httpx.AsyncClient, maker: Maker, page_number: int) -> None:
    session_id = await open_session(client)
    await add_packages(maker, session_id=session_id, count=7)

    page = await list_packages(client, size=3, page=page_number)

    assert page["items"] == []
    assert (page["total"], page["page"], page["size"], page["pages"]) == (7, page_number, 3, 3)


async def test_exact_multiple_of_size(client: httpx.AsyncClient, maker: Maker) -> None:
    session_id = await open_session(client)
    await add_packages(maker, session_id=session_id, count=6)

    last = await list_packages(client, size=3, page=2)
    past = await list_packages(client, size=3, page=3)

    assert len(last["items"]) == 3
    assert last["pages"] == 3 - 1
    assert past["items"] == []


async def test_default_size_is_20(client: httpx.AsyncClient, maker: Maker) -> None:
    session_id = await open_session(client)
    created = await add_packages(maker, session_id=session_id, count=21)

    first = await list_packages(client)
    second = await list_packages(client, page=2)

    assert ids(first) == created[::-1][:20]
    assert ids(second) == [created[0]]
    assert (first["size"], first["pages"], first["total"]) == (20, 2, 21)


async def test_size_100_is_allowed(client: httpx.AsyncClient, maker: Maker) -> None:
    session_id = await open_session(client)
    created = await add_packages(maker, session_id=session_id, count=101)

    page = await list_packages(client, size=100)

    assert ids(page) == created[::-1][:100]
    assert (page["size"], page["total"], page["pages"]) == (100, 101, 2)


@pytest.mark.parametrize(
    ("params", "location"),
    [
        pytest.param({"size": 0}, ["query", "size"], id="size=0"),
        pytest.param({"size": 101}, ["query", "size"], id="size=101"),
        pytest.param({"size": -1}, ["query", "size"], id="size=-1"),
        pytest.param({"size": "ten"}, ["query", "size"], id="size=ten"),
        pytest.param({"page": 0}, ["query", "page"], id="page=0"),
        pytest.param({"page": -1}, ["query", "page"], id="page=-1"),
        pytest.param({"page": "1.5"}, ["query", "page"], id="page=1.5"),
        pytest.param({"type": "abc"}, ["query", "type"], id="type=abc"),
        pytest.param({"has_cost": "maybe"}, ["query", "has_cost"], id="has_cost=maybe"),
        pytest.param({"type": 1, "has_cost": "maybe"}, ["query", "has_cost"], id="good type, bad has_cost"),
    ],
)
async def test_bad_query_values_are_422_naming_the_parameter(
    customer: httpx.AsyncClient, params: dict[str, Any], location: list[str]
) -> None:
    response = await customer.get("/packages/", params=params)

    assert_error_names(response, location)


async def test_list_without_trailing_slash_keeps_the_query(client: httpx.AsyncClient, maker: Maker) -> None:
    await filter_fixture(client, maker)

    response = await client.get("/packages", params={"type": 2, "size": 1}, follow_redirects=True)

    assert response.status_code == 200, response.text
    page = response.json()
    assert [item["name"] for item in page["items"]] == ["e2"]
    assert (page["total"], page["size"]) == (2, 1)


# --- one package ---


async def test_detail_has_the_same_shape_as_the_list(client: httpx.AsyncClient, maker: Maker) -> None:
    session_id = await open_session(client)
    priced = await add_package(
        maker, session_id=session_id, type_id=2, delivery_cost_rub=Decimal("42.5"), transport_company_id=3
    )
    unpriced = await add_package(maker, session_id=session_id, type_id=3, name="Lamp")

    listed = {item["id"]: item for item in (await list_packages(client))["items"]}

    for package_id in (priced, unpriced):
        response = await client.get(f"/packages/{package_id}/")
        assert response.status_code == 200, response.text
        assert set(response.json()) == PACKAGE_KEYS
        assert response.json() == listed[package_id]
    assert listed[priced]["delivery_cost_rub"] == "42.50"
    assert listed[priced]["type"] == ELECTRONICS
    assert listed[unpriced]["type"] == MISC
    assert listed[unpriced]["name"] == "Lamp"


async def test_detail_without_trailing_slash(client: httpx.AsyncClient, maker: Maker) -> None:
    session_id = await open_session(client)
    package_id = await add_package(maker, session_id=session_id, name="No slash")

    response = await client.get(f"/packages/{package_id}", follow_redirects=True)

    assert response.status_code == 200, response.text
    assert response.json()["id"] == package_id
    assert response.json()["name"] == "No slash"


async def test_another_sessions_package_is_indistinguishable_from_an_unknown_one(
    client: httpx.AsyncClient, maker: Maker
) -> None:
    other_id, other_token = await add_session(maker)
    theirs = await add_package(maker, session_id=other_id)
    await open_session(client)
    unknown = theirs + 1000

    foreign = await client.get(f"/packages/{theirs}/")
    missing = await client.get(f"/packages/{unknown}/")

    assert foreign.status_code == 404
    assert missing.status_code == 404
    assert foreign.content == missing.content
    assert foreign.headers["content-type"] == missing.headers["content-type"]
    assert "detail" in foreign.json()
    use_session(client, other_token)
    assert (await client.get(f"/packages/{theirs}/")).status_code == 200


#: Integers that can name no package: ids start at 1 and end at the largest BIGINT.
NO_PACKAGE = ["0", "-1", "-9223372036854775808", "9223372036854775808", "1" + "0" * 30]


@pytest.mark.parametrize("raw_id", NO_PACKAGE)
async def test_an_integer_that_names_no_package_is_404(
    customer: httpx.AsyncClient, admin_headers: dict[str, str], raw_id: str
) -> None:
    """On every `{package_id}` in a path; 422 stays for what is not an integer."""
    detail = await customer.get(f"/packages/{raw_id}/")
    bind = await customer.post(
        f"/packages/{raw_id}/transport-company/", json={"company_id": 7}, headers=admin_headers
    )
    assert [detail.status_code, bind.status_code] == [404, 404], [detail.text, bind.text]
    assert detail.json() == bind.json() == {"detail": "package not found"}


@pytest.mark.parametrize("raw_id", ["abc", "1.5", "1e3", "%20"])
async def test_non_integer_id_is_422(customer: httpx.AsyncClient, raw_id: str) -> None:
    response = await customer.get(f"/packages/{raw_id}/")

    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert any(error["loc"][0] == "path" for error in detail), detail


async def test_detail_needs_a_session(client: httpx.AsyncClient, maker: Maker) -> None:
    session_id, _ = await add_session(maker)
    package_id = await add_package(maker, session_id=session_id)

    response = await client.get(f"/packages/{package_id}/")

    assert response.status_code == 401


# --- cost: one statement a page, the total from the kept counts ---


@pytest.mark.parametrize("size", [100, 5])
async def test_a_page_costs_one_statement_and_no_count_of_packages(
    client: httpx.AsyncClient, maker: Maker, size: int
) -> None:
    session_id = await open_session(client)
    for type_id in (1, 2, 3, 1):
        await add_packages(maker, session_id=session_id, count=25, type_id=type_id)

    with statements(client) as seen:
        page = await list_packages(client, size=size)

    assert len(page["items"]) == size
    assert page["total"] == 100
    assert {item["type"]["id"] for item in page["items"]} == ({1, 2, 3} if size == 100 else {1})
    on_packages = [s for s in seen if "packages" in s.lower()]
    assert len(on_packages) == 1, on_packages
    # The total comes from package_counts: no COUNT walks the session's packages.
    assert "count(" not in on_packages[0].lower(), on_packages
    # The types come with the page, not from queries of their own.
    assert not [s for s in seen if "package_types" in s.lower() and "packages" not in s.lower()], seen


async def test_filtered_page_costs_one_statement(client: httpx.AsyncClient, maker: Maker) -> None:
    await filter_fixture(client, maker)

    with statements(client) as seen:
        page = await list_packages(client, type=1, has_cost="true")

    assert page["total"] == 2
    assert len([s for s in seen if "packages" in s.lower()]) == 1, seen


# --- the totals stay exact, whoever writes ---

RATE = Rate(usd_rub=Decimal("78.1959"), date=datetime(2025, 6, 26, tzinfo=UTC).date())


def registration(session_id: int, type_id: int) -> RegistrationJob:
    return RegistrationJob(
        registration_id=str(uuid.uuid4()),
        session_id=session_id,
        name="parcel",
        weight_kg="1.250",
        type_id=type_id,
        content_value_usd="120.00",
        accepted_at=time.time(),
    )


async def totals(client: httpx.AsyncClient) -> dict[str, int]:
    """The list's total for each filter the page offers."""
    queries: dict[str, dict[str, Any]] = {
        "all": {},
        "priced": {"has_cost": "true"},
        "unpriced": {"has_cost": "false"},
        "clothes": {"type": 1},
        "clothes unpriced": {"type": 1, "has_cost": "false"},
        "misc priced": {"type": 3, "has_cost": "true"},
    }
    found = {}
    for name, params in queries.items():
        page = await list_packages(client, **params, size=1)
        assert page["pages"] == page["total"], page
        found[name] = page["total"]
    return found


async def test_totals_stay_exact_through_registration_and_pricing(
    client: httpx.AsyncClient, maker: Maker
) -> None:
    session_id = await open_session(client)
    other_session, _ = await add_session(maker)
    # Registered during a bank outage (no cost), and with a cost; the job running twice registers once.
    unpriced = [registration(session_id, type_id) for type_id in (1, 1, 3)]
    for job in unpriced:
        await create_package(maker, job, None)
    await create_package(maker, unpriced[0], None)
    await create_package(maker, registration(session_id, 3), RATE)
    await create_package(maker, registration(other_session, 1), None)

    assert await totals(client) == {
        "all": 4,
        "priced": 1,
        "unpriced": 3,
        "clothes": 2,
        "clothes unpriced": 2,
        "misc priced": 1,
    }

    assert await price_pending(maker, RATE) == 4  # the other session's package too
    assert await price_pending(maker, RATE) == 0

    assert await totals(client) == {
        "all": 4,
        "priced": 4,
        "unpriced": 0,
        "clothes": 2,
        "clothes unpriced": 0,
        "misc priced": 2,
    }
    # Binding a transport company changes no count.
    package_id = (await list_packages(client))["items"][0]["id"]
    async with maker() as db:
        await bind_transport_company(db, package_id, 7)
    assert (await totals(client))["all"] == 4


async def test_totals_follow_packages_written_outside_the_jobs(
    client: httpx.AsyncClient, maker: Maker
) -> None:
    """An operator's fix in SQL (a cost cleared, a package moved to another type or session, a package
    deleted) keeps the totals exact too."""
    other_session, other_token = await add_session(maker)
    session_id = await open_session(client)
    first, second, third, fourth = await add_packages(
        maker, session_id=session_id, count=4, delivery_cost_rub=Decimal("10.00")
    )

    async with maker() as db:
        await db.execute(update(Package).where(Package.id == first).values(delivery_cost_rub=None))
        await db.execute(update(Package).where(Package.id == second).values(type_id=3))
        await db.execute(delete(Package).where(Package.id == third))
        await db.execute(update(Package).where(Package.id == fourth).values(session_id=other_session))
        await db.commit()

    assert await totals(client) == {
        "all": 2,
        "priced": 1,
        "unpriced": 1,
        "clothes": 1,
        "clothes unpriced": 1,
        "misc priced": 1,
    }
    use_session(client, other_token)
    assert await totals(client) == {
        "all": 1,
        "priced": 1,
        "unpriced": 0,
        "clothes": 1,
        "clothes unpriced": 0,
        "misc priced": 0,
    }


# --- deep pages: their start from package_blocks ---


async def spread_packages(maker: Maker, session_id: int, count: int) -> dict[int, tuple[int, bool]]:
    """`count` packages whose ids run over several blocks of ids: id -> (type id, has a cost)."""
    layout = {}
    async with maker() as db:
        for n in range(count):
            package_id = (5 << BLOCK_BITS) + n * 997 + (n % 5) * 4000
            type_id, priced = 1 + n % 3, n % 4 < 2
            package = Package(
                id=package_id,
                registration_id=uuid.uuid4(),
                session_id=session_id,
                type_id=type_id,
                name=f"p{n}",
                weight_kg=Decimal("1.000"),
                content_value_usd=Decimal("2.00"),
                delivery_cost_rub=Decimal("3.00") if priced else None,
            )
            db.add(package)
            layout[package_id] = (type_id, priced)
        await db.commit()
    return layout


async def blocks_and_packages(maker: Maker) -> tuple[dict[tuple[Any, ...], int], dict[tuple[Any, ...], int]]:
    """package_blocks' counts, and the same counted from packages."""
    async with maker() as db:
        kept = {
            (s, b, t, bool(c)): n
            for s, b, t, c, n in (
                await db.execute(
                    select(
                        PackageBlock.session_id,
                        PackageBlock.block,
                        PackageBlock.type_id,
                        PackageBlock.has_cost,
                        PackageBlock.packages,
                    )
                )
            ).all()
            if n
        }
        rows = (
            await db.execute(select(Package.id, Package.session_id, Package.type_id, Package.has_cost))
        ).all()
    counted: dict[tuple[Any, ...], int] = {}
    for package_id, session_id, type_id, has_cost in rows:
        key = (session_id, package_id >> BLOCK_BITS, type_id, bool(has_cost))
        counted[key] = counted.get(key, 0) + 1
    return kept, counted


def wanted(layout: dict[int, tuple[int, bool]], params: dict[str, Any]) -> list[int]:
    """The ids a list with `params` holds, newest first."""
    return [
        package_id
        for package_id, (type_id, priced) in sorted(layout.items(), reverse=True)
        if params.get("type", type_id) == type_id
        and params.get("has_cost", str(priced).lower()) == str(priced).lower()
    ]


DEEP_QUERIES: list[dict[str, Any]] = [{}, {"type": 2}, {"has_cost": "true"}, {"type": 1, "has_cost": "false"}]


@pytest.mark.parametrize("size", [1, 7, 20])
async def test_deep_pages_are_the_pages(
    client: httpx.AsyncClient, maker: Maker, monkeypatch: pytest.MonkeyPatch, size: int
) -> None:
    """Every page read from package_blocks is the page OFFSET gives: pages that start in a block, span
    blocks, end past the list."""
    session_id = await open_session(client)
    layout = await spread_packages(maker, session_id, 90)
    other_id, _ = await add_session(maker)
    await spread_packages(maker, other_id, 0)
    monkeypatch.setattr(service, "DEEP_SKIP", 1)

    for params in DEEP_QUERIES:
        want = wanted(layout, params)
        pages = -(-len(want) // size)
        for page in range(1, pages + 2):
            with statements(client) as seen:
                body = await list_packages(client, **params, page=page, size=size)
            assert ids(body) == want[(page - 1) * size : page * size], (params, page)
            assert (body["total"], body["pages"]) == (len(want), pages), (params, page)
            if page > 1:  # from a block map, checked against its session's changes
                assert any("package_changes" in s for s in seen), seen


async def test_blocks_stay_exact(client: httpx.AsyncClient, maker: Maker) -> None:
    """Inserted, priced, moved, deleted: package_blocks counts what packages hold."""
    session_id = await open_session(client)
    other_id, _ = await add_session(maker)
    layout = await spread_packages(maker, session_id, 40)
    await add_packages(maker, session_id=other_id, count=5)
    some = sorted(layout)[::3]

    async with maker() as db:
        await db.execute(update(Package).where(Package.id == some[0]).values(delivery_cost_rub=None))
        await db.execute(
            update(Package).where(Package.id == some[1]).values(delivery_cost_rub=Decimal("1.00"))
        )
        await db.execute(update(Package).where(Package.id == some[2]).values(type_id=3))
        await db.execute(update(Package).where(Package.id == some[3]).values(session_id=other_id))
        await db.execute(update(Package).where(Package.id == some[4]).values(id=some[4] + (9 << BLOCK_BITS)))
        await db.execute(delete(Package).where(Package.id == some[5]))
        await db.commit()
    assert await price_pending(maker, RATE) > 0

    kept, counted = await blocks_and_packages(maker)
    assert kept == counted


async def test_kept_block_maps_follow_the_list(
    client: httpx.AsyncClient, maker: Maker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A deep page read again costs one statement (its list's block map is kept); once packages are added
    above it, removed or priced, the kept map no longer agrees and every page is still the page OFFSET
    gives."""
    session_id = await open_session(client)
    layout = await spread_packages(maker, session_id, 90)
    monkeypatch.setattr(service, "DEEP_SKIP", 1)
    size = 7

    async def every_page() -> None:
        for params in DEEP_QUERIES:
            want = wanted(layout, params)
            for page in range(1, -(-len(want) // size) + 2):
                body = await list_packages(client, **params, page=page, size=size)
                assert ids(body) == want[(page - 1) * size : page * size], (params, page)
                assert body["total"] == len(want), (params, page)

    await every_page()
    with statements(client) as seen:
        await list_packages(client, page=5, size=size)
    assert len(seen) == 1, seen

    # Newer packages, one gone, two priced, one unpriced.
    for type_id in (1, 2, 1):
        layout[await add_package(maker, session_id=session_id, type_id=type_id)] = (type_id, False)
    middle = sorted(layout)[40:44]
    async with maker() as db:
        await db.execute(delete(Package).where(Package.id == middle[0]))
        await db.execute(
            update(Package).where(Package.id.in_(middle[1:3])).values(delivery_cost_rub=Decimal("4.00"))
        )
        await db.execute(update(Package).where(Package.id == middle[3]).values(delivery_cost_rub=None))
        await db.commit()
    del layout[middle[0]]
    layout.update({package_id: (layout[package_id][0], True) for package_id in middle[1:3]})
    layout[middle[3]] = (layout[middle[3]][0], False)

    await every_page()


async def package_changes(maker: Maker, *session_ids: int) -> list[int]:
    async with maker() as db:
        rows = (await db.execute(select(ClientSession.id, ClientSession.package_changes))).all()
    found = {row.id: row.package_changes for row in rows}
    return [found[session_id] for session_id in session_ids]


async def test_package_changes_count_what_moves_a_package(client: httpx.AsyncClient, maker: Maker) -> None:
    """Each insert, pricing, unpricing, move between sessions or types, and delete adds one to the changes
    of every session it touches; a change that moves no package in a list (its name) adds none."""
    mine = await open_session(client)
    other, _ = await add_session(maker)
    before = await package_changes(maker, mine, other)
    first, second = await add_packages(maker, session_id=mine, count=2)
    assert await package_changes(maker, mine, other) == [before[0] + 2, before[1]]

    steps: list[tuple[Any, list[int]]] = [
        (update(Package).where(Package.id == first).values(name="renamed"), [0, 0]),
        (update(Package).where(Package.id == first).values(delivery_cost_rub=Decimal("5.00")), [1, 0]),
        (update(Package).where(Package.id == first).values(delivery_cost_rub=Decimal("6.00")), [0, 0]),
        (update(Package).where(Package.id == first).values(delivery_cost_rub=None), [1, 0]),
        (update(Package).where(Package.id == first).values(type_id=2), [1, 0]),
        (update(Package).where(Package.id == second).values(session_id=other), [1, 1]),
        (delete(Package).where(Package.id == second), [0, 1]),
    ]
    for statement, added in steps:
        was = await package_changes(maker, mine, other)
        async with maker() as db:
            await db.execute(statement)
            await db.commit()
        assert await package_changes(maker, mine, other) == [
            w + a for w, a in zip(was, added, strict=True)
        ], str(statement)


async def test_a_deep_page_starts_from_the_nearest_place_its_map_knows(
    client: httpx.AsyncClient, maker: Maker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The index is walked only from the nearest place the list's block map knows before the page: a page
    read again, and the page after it, walk no package before their own; a change to another session's
    packages leaves the map as it is, a change to this session's has it read again."""
    session_id = await open_session(client)
    other_id, _ = await add_session(maker)
    # 120 packages in one block of ids: a page deep in it walks from the block's start unless told better.
    layout = await spread_packages(maker, session_id, 0)
    async with maker() as db:
        for n in range(120):
            package_id = (7 << BLOCK_BITS) + 3 * n
            db.add(
                Package(
                    id=package_id,
                    registration_id=uuid.uuid4(),
                    session_id=session_id,
                    type_id=1,
                    name=f"p{n}",
                    weight_kg=Decimal("1.000"),
                    content_value_usd=Decimal("2.00"),
                )
            )
            layout[package_id] = (1, False)
        await db.commit()
    monkeypatch.setattr(service, "DEEP_SKIP", 1)
    size = 10
    _, page_statement = service._deep_statements(False, False)
    compiled = page_statement.compile(dialect=app_engine(client).dialect)
    assert compiled.positiontup is not None
    walk_at = compiled.positiontup.index("walk")

    async def read(page: int) -> tuple[int | None, int]:
        """The packages the page's statement walked before the page (None: no deep page statement), and
        how many statements about packages the page took; the page checked against OFFSET's."""
        with executed(client) as seen:
            body = await list_packages(client, page=page, size=size)
        assert ids(body) == wanted(layout, {})[(page - 1) * size : page * size], page
        walks = [parameters[walk_at] for statement, parameters in seen if statement == str(compiled)]
        return (walks[-1] if walks else None), len([s for s, _ in seen if "package" in s])

    assert await read(5) == (40, 2)  # the map read, then the page from the block's start
    assert await read(5) == (0, 1)  # again: from where it started last time
    assert await read(6) == (0, 1)  # the next: from where page 5 ended
    assert await read(8) == (10, 1)  # from the nearest place before it, page 6's end

    await add_packages(maker, session_id=other_id, count=1)
    assert await read(8) == (0, 1)

    layout[await add_package(maker, session_id=session_id, type_id=1)] = (1, False)
    walked, statements_sent = await read(8)
    assert statements_sent == 3  # the page at the kept map's changes, the map read again, the page
    assert walked is not None and walked > 0
    assert await read(8) == (0, 1)


async def test_concurrent_registration_batches_of_the_same_sessions_never_deadlock(maker: Maker) -> None:
    """Four writers registering batches of the same sessions at once, as a worker's pool processes do: every
    package created, none chosen as a deadlock's victim, each session's changes counting its packages."""
    sessions = [(await add_session(maker))[0] for _ in range(4)]
    rounds, size = 25, 8

    async def writer(seed: int) -> int:
        chooser = random.Random(seed)
        created = 0
        for _ in range(rounds):
            batch = [
                RegistrationJob(
                    registration_id=str(uuid.uuid4()),
                    session_id=chooser.choice(sessions),
                    name="concurrent",
                    weight_kg="1.000",
                    type_id=chooser.randint(1, 3),
                    content_value_usd="2.00",
                    accepted_at=time.time(),
                )
                for _ in range(size)
            ]
            created += len(await create_packages(maker, batch, RATE))
        return created

    assert await asyncio.gather(*(writer(seed) for seed in range(4))) == [rounds * size] * 4
    async with maker() as db:
        rows = (await db.execute(select(Package.session_id, func.count()).group_by(Package.session_id))).all()
    counted = {row[0]: row[1] for row in rows}
    assert await package_changes(maker, *sessions) == [counted.get(s, 0) for s in sessions]

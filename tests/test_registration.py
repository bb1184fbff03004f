"""Registering a package (POST /packages/) and following it (GET /packages/status/{id}/), as a client does.

Validation, the 202 and its status, the cost to the kopeck end to end with a real worker, and Idempotency-Key.
"""

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from decimal import Decimal
from functools import cache
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import delete

from delivery.api.deps import TYPE_IDS_TTL
from delivery.config import Settings
from delivery.models import PackageType
from tests.fakebank import FIXTURES, FakeBank
from tests.helpers import (
    Json,
    Maker,
    expected_cost,
    fixture_rate,
    package_count,
    packages_by_registration,
    register,
    status_id_of,
    store_keys,
    valid_body,
    wait_all_done,
    wait_done,
)
from tests.stack import WorkerProcess, clear_store

BANK_FIXTURES = sorted(path.name for path in FIXTURES.glob("daily_json*.js"))


@asynccontextmanager
async def other_session(client: httpx.AsyncClient) -> AsyncIterator[httpx.AsyncClient]:
    """A second client of the same app with a session of its own."""
    app: FastAPI = client.app  # type: ignore[attr-defined]
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://testserver"
    ) as other:
        assert (await other.get("/sessions/new/")).status_code == 204
        yield other


def _without(field: str) -> Json:
    body = valid_body()
    del body[field]
    return body


# (body, the field the 422 must name)
INVALID: list[Any] = [
    *(
        pytest.param(_without(f), f, id=f"missing-{f}")
        for f in ("name", "weight_kg", "type_id", "content_value_usd")
    ),
    pytest.param(valid_body(colour="red"), "colour", id="unknown-field"),
    pytest.param(valid_body(name=123), "name", id="name-number"),
    pytest.param(valid_body(name=None), "name", id="name-null"),
    pytest.param(valid_body(name=""), "name", id="name-empty"),
    pytest.param(valid_body(name=" \t  "), "name", id="name-whitespace-only"),
    pytest.param(valid_body(name=f"  {'a' * 256}  "), "name", id="name-256-after-trim"),
    pytest.param(valid_body(weight_kg=True), "weight_kg", id="weight-bool"),
    pytest.param(valid_body(weight_kg=None), "weight_kg", id="weight-null"),
    pytest.param(valid_body(weight_kg="heavy"), "weight_kg", id="weight-not-a-number"),
    pytest.param(valid_body(weight_kg="NaN"), "weight_kg", id="weight-nan"),
    pytest.param(valid_body(weight_kg="Infinity"), "weight_kg", id="weight-infinity"),
    pytest.param(valid_body(weight_kg="0"), "weight_kg", id="weight-zero"),
    pytest.param(valid_body(weight_kg=0), "weight_kg", id="weight-zero-number"),
    pytest.param(valid_body(weight_kg="-1"), "weight_kg", id="weight-negative"),
    pytest.param(valid_body(weight_kg="1000.001"), "weight_kg", id="weight-over-1000"),
    pytest.param(valid_body(weight_kg=1000.001), "weight_kg", id="weight-over-1000-number"),
    pytest.param(valid_body(weight_kg="1.2345"), "weight_kg", id="weight-4-places"),
    pytest.param(valid_body(weight_kg=1.2345), "weight_kg", id="weight-4-places-number"),
    # A string must be the plain decimal the schema documents (its pattern).
    pytest.param(valid_body(weight_kg=""), "weight_kg", id="weight-empty-string"),
    pytest.param(valid_body(weight_kg="1e2"), "weight_kg", id="weight-exponent-string"),
    pytest.param(valid_body(weight_kg=" 1.5"), "weight_kg", id="weight-padded-string"),
    pytest.param(valid_body(weight_kg="01.5"), "weight_kg", id="weight-leading-zero-string"),
    pytest.param(valid_body(weight_kg="+1.5"), "weight_kg", id="weight-signed-string"),
    pytest.param(valid_body(content_value_usd=""), "content_value_usd", id="value-empty-string"),
    pytest.param(valid_body(content_value_usd="1_000"), "content_value_usd", id="value-underscore-string"),
    pytest.param(valid_body(content_value_usd=True), "content_value_usd", id="value-bool"),
    pytest.param(valid_body(content_value_usd="-0.01"), "content_value_usd", id="value-negative"),
    pytest.param(valid_body(content_value_usd=-0.01), "content_value_usd", id="value-negative-number"),
    pytest.param(valid_body(content_value_usd="1000000000.01"), "content_value_usd", id="value-over-max"),
    pytest.param(valid_body(content_value_usd="1.234"), "content_value_usd", id="value-3-places"),
    pytest.param(valid_body(content_value_usd=1.234), "content_value_usd", id="value-3-places-number"),
    pytest.param(valid_body(type_id="1"), "type_id", id="type-id-string"),
    pytest.param(valid_body(type_id=1.5), "type_id", id="type-id-fraction"),
    pytest.param(valid_body(type_id=True), "type_id", id="type-id-bool"),
    pytest.param(valid_body(type_id=None), "type_id", id="type-id-null"),
    pytest.param(valid_body(type_id=0), "type_id", id="type-id-zero"),
    pytest.param(valid_body(type_id=99), "type_id", id="type-id-unknown"),
]


def _names(detail: Any, field: str) -> bool:
    return isinstance(detail, list) and any(field in error["loc"] for error in detail)


@pytest.mark.parametrize(("body", "field"), INVALID)
async def test_invalid_body_is_422_naming_the_field(
    customer: httpx.AsyncClient, body: Json, field: str
) -> None:
    response = await customer.post("/packages/", json=body)
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert _names(detail, field), detail
    assert all(error["loc"][0] == "body" for error in detail), detail
    assert "Location" not in response.headers


async def test_a_type_removed_while_the_api_runs_is_refused(
    customer: httpx.AsyncClient, settings: Settings, maker: Maker
) -> None:
    """Refused with 422 naming `type_id`, and nothing stored or queued: its job could only fail."""
    accepted = await customer.post("/packages/", json=valid_body(type_id=3))
    assert accepted.status_code == 202, accepted.text
    async with maker() as db:
        await db.execute(delete(PackageType).where(PackageType.id == 3))
        await db.commit()
    await asyncio.sleep(TYPE_IDS_TTL)

    refused = await customer.post("/packages/", json=valid_body(type_id=3))

    assert refused.status_code == 422, refused.text
    assert _names(refused.json()["detail"], "type_id"), refused.text
    assert await store_keys(settings, "status:") == [f"status:{accepted.json()['status_id']}"]
    assert (await customer.post("/packages/", json=valid_body(type_id=2))).status_code == 202


@pytest.mark.parametrize(
    ("content", "content_type"),
    [
        pytest.param(b"name=Jacket&weight_kg=1", "application/json", id="form-data-as-json"),
        pytest.param(b'{"name": "Jacket", "weight_kg": ', "application/json", id="truncated-json"),
        pytest.param(b"[]", "application/json", id="json-array"),
        pytest.param(b'"Jacket"', "application/json", id="json-string"),
    ],
)
async def test_non_json_body_is_422(customer: httpx.AsyncClient, content: bytes, content_type: str) -> None:
    response = await customer.post("/packages/", content=content, headers={"Content-Type": content_type})
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert isinstance(detail, list) and detail and all(error["loc"][0] == "body" for error in detail), detail


async def test_invalid_posts_queue_nothing(
    customer: httpx.AsyncClient, worker: WorkerProcess, settings: Settings, maker: Maker
) -> None:
    """A batch of rejected bodies leaves neither a status nor a job behind: only the valid one registers."""
    for case in INVALID:
        body, _field = case.values
        assert (await customer.post("/packages/", json=body)).status_code == 422
    assert (
        await customer.post("/packages/", content=b"{", headers={"Content-Type": "application/json"})
    ).status_code == 422
    assert await store_keys(settings, "status:") == []

    location = await register(customer)
    status = await wait_done(customer, location)
    assert status["state"] == "registered", status
    listed = (await customer.get("/packages/")).json()
    assert listed["total"] == 1 and listed["items"][0]["id"] == status["package_id"], listed
    assert await package_count(maker) == 1
    assert await store_keys(settings, "status:") == [f"status:{status_id_of(location)}"]


async def test_edge_values_are_accepted_and_stored_exactly(
    customer: httpx.AsyncClient, worker: WorkerProcess
) -> None:
    """The boundaries that must pass, JSON numbers taken exactly like strings, and the name trimmed."""
    usd_rub, _ = fixture_rate()
    cases: list[tuple[Json, Json]] = [
        # (body, what the package reads back)
        (valid_body(name=f"  {'я' * 255}  "), {"name": "я" * 255}),
        (valid_body(name="  Winter jacket\t"), {"name": "Winter jacket"}),
        (valid_body(name="x", type_id=3), {"name": "x", "type": {"id": 3, "name": "misc"}}),
        (valid_body(type_id=3.0), {"type": {"id": 3, "name": "misc"}}),
        (valid_body(weight_kg="1000"), {"weight_kg": "1000.000"}),
        (valid_body(weight_kg="1.2500", content_value_usd="0.100"), {"weight_kg": "1.250"}),
        (valid_body(weight_kg="0.001"), {"weight_kg": "0.001"}),
        (valid_body(content_value_usd="0"), {"content_value_usd": "0.00"}),
        (valid_body(content_value_usd="1000000000"), {"content_value_usd": "1000000000.00"}),
        (valid_body(content_value_usd="1000000000.00"), {"content_value_usd": "1000000000.00"}),
        (
            valid_body(weight_kg=1.25, content_value_usd=120),
            {"weight_kg": "1.250", "content_value_usd": "120.00"},
        ),
        # Binary floats would make these 2.67499999... and 0.07000000000000000666...: exact only as decimals.
        (
            valid_body(weight_kg=2.675, content_value_usd=0.07),
            {"weight_kg": "2.675", "content_value_usd": "0.07"},
        ),
        (
            valid_body(weight_kg="2.675", content_value_usd="0.07"),
            {"weight_kg": "2.675", "content_value_usd": "0.07"},
        ),
        (
            valid_body(weight_kg=1e2, content_value_usd=1e9),
            {"weight_kg": "100.000", "content_value_usd": "1000000000.00"},
        ),
    ]
    locations = await asyncio.gather(*(register(customer, body) for body, _ in cases))
    statuses = await wait_all_done(customer, locations)
    for (body, expected), status in zip(cases, statuses, strict=True):
        assert status["state"] == "registered", (body, status)
        package = (await customer.get(f"/packages/{status['package_id']}/")).json()
        assert package | expected == package, (body, package)
        assert package["delivery_cost_rub"] == expected_cost(
            package["weight_kg"], package["content_value_usd"], usd_rub
        ), (body, package)


# --- the 202 and the status ---


async def test_registration_needs_a_session(client: httpx.AsyncClient, settings: Settings) -> None:
    response = await client.post("/packages/", json=valid_body())
    assert response.status_code == 401, response.text
    assert (await client.get(f"/packages/status/{uuid.uuid4()}/")).status_code == 401
    client.cookies.set("session_id", "a-token-the-server-never-issued")
    assert (await client.post("/packages/", json=valid_body())).status_code == 401
    assert await store_keys(settings, "status:") == []


async def test_accepted_then_pending_then_registered(
    customer: httpx.AsyncClient, worker: WorkerProcess, bank: FakeBank, maker: Maker
) -> None:
    bank.delay = 1.5  # a cold cache and a slow bank: the job is still running when we first look
    response = await customer.post("/packages/", json=valid_body())
    assert response.status_code == 202, response.text
    body = response.json()
    assert set(body) == {"status_id"}, body
    status_id = uuid.UUID(body["status_id"])
    assert status_id.version == 4 and str(status_id) == body["status_id"]
    location = response.headers["Location"]
    assert location == f"/packages/status/{status_id}/"

    pending = await customer.get(location)
    assert pending.status_code == 200, pending.text
    assert pending.json() == {
        "status_id": str(status_id),
        "state": "pending",
        "done": False,
        "error": False,
        "error_message": None,
        "package_id": None,
    }

    status = await wait_done(customer, location)
    package_id = status["package_id"]
    assert isinstance(package_id, int)
    assert status == {
        "status_id": str(status_id),
        "state": "registered",
        "done": True,
        "error": False,
        "error_message": None,
        "package_id": package_id,
    }
    without_slash = await customer.get(location.rstrip("/"), follow_redirects=True)
    assert without_slash.status_code == 200 and without_slash.json() == status
    package = (await customer.get(f"/packages/{package_id}/")).json()
    assert package["name"] == "Winter jacket" and package["type"] == {"id": 1, "name": "clothes"}
    rows = await packages_by_registration(maker)
    assert list(rows) == [status_id] and [row.id for row in rows[status_id]] == [package_id]


async def test_status_of_another_session_unknown_or_malformed(
    customer: httpx.AsyncClient, worker: WorkerProcess
) -> None:
    location = await register(customer)
    assert (await customer.get(location)).status_code == 200
    await wait_done(customer, location)  # no job of this test left to run into the next one
    async with other_session(customer) as other:
        foreign = await other.get(location)
        unknown = await other.get(f"/packages/status/{uuid.uuid4()}/")
        # Never reveal that another session's registration exists: the same answer as an unknown one.
        assert foreign.status_code == 404, foreign.text
        assert unknown.status_code == 404, unknown.text
        assert foreign.json() == unknown.json()
    assert (await customer.get(f"/packages/status/{uuid.uuid4()}/")).status_code == 404
    malformed = await customer.get("/packages/status/not-a-uuid/")
    assert malformed.status_code == 422, malformed.text
    assert any("status_id" in error["loc"] for error in malformed.json()["detail"])


# --- the cost, to the kopeck, for each recorded answer of the bank ---


@cache
def _half_kopeck_tie(usd_rub: Decimal) -> tuple[str, str] | None:
    """A weight and value whose exact cost ends in half a kopeck after an even digit, if the rate allows one:
    there ROUND_HALF_UP rounds up where banker's rounding would not."""
    sign, digits, exponent = usd_rub.as_tuple()
    assert sign == 0 and isinstance(exponent, int)
    rate = int("".join(map(str, digits)))
    # 0.002 kg * 0.5 + cents / 10**4 is m / 10**4 for m = 10 + cents, so the cost is m * rate / 10**scale.
    scale = 4 - exponent
    if scale < 3:
        return None
    unit = 10 ** (scale - 3)
    for m in range(11, 2 * 10 ** (scale - 2) + 11):
        product = m * rate
        if product % unit == 0 and (product // unit) % 10 == 5 and (product // unit // 10) % 2 == 0:
            cents = m - 10
            return "0.002", str(Decimal(cents).scaleb(-2))
    return None


@pytest.mark.parametrize("fixture", BANK_FIXTURES)
async def test_cost_to_the_kopeck(
    customer: httpx.AsyncClient, worker: WorkerProcess, bank: FakeBank, maker: Maker, fixture: str
) -> None:
    bank.fixture = fixture
    usd_rub, rate_date = fixture_rate(fixture)
    inputs = [
        ("1.25", "120"),
        ("0.001", "0"),
        ("0.001", "0.01"),
        ("1000", "1000000000"),
        ("999.999", "999999999.99"),
        ("2.675", "0.07"),
        ("13.337", "4242.42"),
    ]
    if (tie := _half_kopeck_tie(usd_rub)) is not None:
        inputs.append(tie)
    locations = await asyncio.gather(
        *(register(customer, valid_body(weight_kg=w, content_value_usd=v)) for w, v in inputs)
    )
    statuses = await wait_all_done(customer, locations)
    assert bank.requests == 1, "one fetch of the rate serves every job of the cache period"
    rows = await packages_by_registration(maker)
    for (weight, value), location, status in zip(inputs, locations, statuses, strict=True):
        assert status["state"] == "registered", status
        package = (await customer.get(f"/packages/{status['package_id']}/")).json()
        assert package["delivery_cost_rub"] == expected_cost(weight, value, usd_rub), (weight, value, package)
        (row,) = rows[uuid.UUID(status_id_of(location))]
        assert row.id == status["package_id"]
        assert row.usd_rub_rate == usd_rub and row.rate_date == rate_date, (row.usd_rub_rate, row.rate_date)
        assert row.delivery_cost_rub == Decimal(package["delivery_cost_rub"])


# --- Idempotency-Key ---


async def test_same_idempotency_key_same_registration(
    customer: httpx.AsyncClient, worker: WorkerProcess, maker: Maker
) -> None:
    first = await customer.post("/packages/", json=valid_body(), headers={"Idempotency-Key": "order-1"})
    second = await customer.post("/packages/", json=valid_body(), headers={"Idempotency-Key": "order-1"})
    assert first.status_code == second.status_code == 202, (first.text, second.text)
    assert first.json() == second.json(), (first.json(), second.json())
    assert first.headers["Location"] == second.headers["Location"]

    racing = await asyncio.gather(
        *(
            customer.post("/packages/", json=valid_body(), headers={"Idempotency-Key": "order-2"})
            for _ in range(8)
        )
    )
    assert {r.status_code for r in racing} == {202}, [(r.status_code, r.text) for r in racing]
    assert len({r.json()["status_id"] for r in racing}) == 1, [r.json() for r in racing]
    assert racing[0].json() != first.json()

    locations = [first.headers["Location"], racing[0].headers["Location"]]
    statuses = await wait_all_done(customer, locations)
    assert [s["state"] for s in statuses] == ["registered", "registered"], statuses
    again = await customer.post("/packages/", json=valid_body(), headers={"Idempotency-Key": "order-1"})
    assert again.status_code == 202 and again.json() == first.json(), (again.text, first.text)
    assert (await customer.get(again.headers["Location"])).json() == statuses[0]
    await asyncio.sleep(0.5)  # a second job, had one been queued, would have had time to run
    rows = await packages_by_registration(maker)
    assert sorted(map(str, rows)) == sorted(status_id_of(loc) for loc in locations), (rows, locations)
    assert all(len(group) == 1 for group in rows.values()), rows


async def test_same_idempotency_key_from_two_sessions(
    customer: httpx.AsyncClient, worker: WorkerProcess, maker: Maker
) -> None:
    headers = {"Idempotency-Key": "shared-key"}
    async with other_session(customer) as other:
        mine = await customer.post("/packages/", json=valid_body(name="mine"), headers=headers)
        theirs = await other.post("/packages/", json=valid_body(name="theirs"), headers=headers)
        assert mine.status_code == theirs.status_code == 202
        assert mine.json()["status_id"] != theirs.json()["status_id"]
        my_status = await wait_done(customer, mine.headers["Location"])
        their_status = await wait_done(other, theirs.headers["Location"])
        assert (await other.get(f"/packages/{their_status['package_id']}/")).json()["name"] == "theirs"
        assert (await other.get(mine.headers["Location"])).status_code == 404
    assert (await customer.get(f"/packages/{my_status['package_id']}/")).json()["name"] == "mine"
    assert await package_count(maker) == 2


async def test_a_store_that_forgot_still_gives_one_registration(
    customer: httpx.AsyncClient, worker: WorkerProcess, settings: Settings, maker: Maker
) -> None:
    """The status store lost everything (Redis restarted without persistence) after a registration:
    its status still reads `registered` (from the package), and the same Idempotency-Key sent again is
    the same registration, not a second package."""
    headers = {"Idempotency-Key": "order-before-the-restart"}
    first = await customer.post("/packages/", json=valid_body(), headers=headers)
    assert first.status_code == 202, first.text
    registered = await wait_done(customer, first.headers["Location"])
    assert registered["state"] == "registered", registered

    await clear_store(settings)
    assert (await customer.get(first.headers["Location"])).json() == registered

    again = await customer.post("/packages/", json=valid_body(), headers=headers)
    assert again.status_code == 202, again.text
    assert again.json() == first.json()
    assert await wait_done(customer, again.headers["Location"]) == registered
    await asyncio.sleep(0.5)  # a second package, had the job made one, would be there by now
    rows = await packages_by_registration(maker)
    assert [str(r) for r in rows] == [first.json()["status_id"]]

    async with other_session(customer) as other:  # the fallback answers the owner alone
        assert (await other.get(first.headers["Location"])).status_code == 404

    # Once the store forgot the key, the same key for another parcel is a new registration, never the old one.
    await clear_store(settings)
    other_parcel = await customer.post("/packages/", json=valid_body(name="another parcel"), headers=headers)
    assert other_parcel.status_code == 202, other_parcel.text
    assert other_parcel.json() != first.json()
    second = await wait_done(customer, other_parcel.headers["Location"])
    assert second["state"] == "registered" and second["package_id"] != registered["package_id"], second
    assert (await customer.get(f"/packages/{second['package_id']}/")).json()["name"] == "another parcel"


@pytest.mark.parametrize(
    ("key", "accepted"),
    [
        pytest.param("k" * 255, True, id="255-chars"),
        pytest.param("k" * 256, False, id="256-chars"),
        pytest.param("", False, id="empty"),
    ],
)
async def test_idempotency_key_length(
    customer: httpx.AsyncClient, worker: WorkerProcess, settings: Settings, key: str, accepted: bool
) -> None:
    response = await customer.post("/packages/", json=valid_body(), headers={"Idempotency-Key": key})
    if accepted:
        assert response.status_code == 202, response.text
        assert (await wait_done(customer, response.headers["Location"]))["state"] == "registered"
        return
    assert response.status_code == 422, response.text
    assert any(
        "idempotency-key" in [str(part).lower() for part in e["loc"]] for e in response.json()["detail"]
    )
    assert await store_keys(settings, "status:") == []

"""Operator endpoints: the X-Admin-Token guard, binding a transport company, and jobs run on demand."""

import asyncio
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from delivery.api import create_app
from delivery.config import Settings
from delivery.models import ClientSession, CostCalculation, Package
from delivery.service import hash_token
from tests.factories import add_session, add_unpriced_packages
from tests.fakebank import FakeBank
from tests.stack import Stack, WorkerProcess

Maker = async_sessionmaker[AsyncSession]
Json = dict[str, Any]

#: USD/RUB in tests/fixtures/cbr/daily_json.js, the fake bank's answer.
FIXTURE_USD_RUB = Decimal("78.1959")
JOB_TIMEOUT = 60.0
CONTENDERS = 200


# --- helpers ---


async def _session_id(maker: Maker, customer: httpx.AsyncClient) -> int:
    """The database id of the session whose cookie `customer` holds."""
    token = customer.cookies["session_id"]
    async with maker() as db:
        return (
            await db.execute(select(ClientSession.id).where(ClientSession.token_hash == hash_token(token)))
        ).scalar_one()


async def _packages(maker: Maker, ids: Sequence[int]) -> dict[int, Package]:
    async with maker() as db:
        return {p.id: p for p in (await db.scalars(select(Package).where(Package.id.in_(ids)))).all()}


def _cost(weight: str, value: str, usd_rub: Decimal) -> Decimal:
    """The contract's formula, written out here rather than borrowed from the code under test."""
    raw = (Decimal(weight) * Decimal("0.5") + Decimal(value) * Decimal("0.01")) * usd_rub
    return raw.quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)


async def _wait_for_job(client: httpx.AsyncClient, task_id: str, headers: dict[str, str]) -> Json:
    """Poll the job's state until it is finished (SUCCESS or FAILURE)."""
    deadline = time.monotonic() + JOB_TIMEOUT
    while True:
        response = await client.get(f"/admin/jobs/{task_id}/", headers=headers)
        assert response.status_code == 200, response.text
        body: Json = response.json()
        if body["state"] in ("SUCCESS", "FAILURE"):
            return body
        assert time.monotonic() < deadline, f"job {task_id} did not finish: {body}"
        await asyncio.sleep(0.1)


# --- the guard ---

#: (method, path, JSON body) of every operator endpoint; the package and the task need not exist.
ENDPOINTS: list[tuple[str, str, Json | None]] = [
    ("POST", "/packages/1/transport-company/", {"company_id": 7}),
    ("GET", "/admin/stats/daily-costs/?date=2025-06-26", None),
    ("POST", "/admin/jobs/price-packages/", None),
    ("GET", f"/admin/jobs/{uuid.uuid4()}/", None),
]
ENDPOINT_IDS = ["transport-company", "daily-costs", "price-packages", "job-state"]


@pytest.fixture
async def unconfigured(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """A client for an app whose ADMIN_TOKEN is unset."""
    app = create_app(settings.model_copy(update={"ADMIN_TOKEN": None}))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
            yield http


async def _call(
    client: httpx.AsyncClient, endpoint: tuple[str, str, Json | None], headers: dict[str, str] | None = None
) -> httpx.Response:
    method, path, body = endpoint
    return await client.request(method, path, json=body, headers=headers)


@pytest.mark.parametrize("endpoint", ENDPOINTS, ids=ENDPOINT_IDS)
async def test_no_token_is_401(client: httpx.AsyncClient, endpoint: tuple[str, str, Json | None]) -> None:
    response = await _call(client, endpoint)
    assert response.status_code == 401, response.text
    assert "X-Admin-Token" in response.json()["detail"]


@pytest.mark.parametrize("token", ["wrong", "test-admin-token-", "TEST-ADMIN-TOKEN", ""])
@pytest.mark.parametrize("endpoint", ENDPOINTS, ids=ENDPOINT_IDS)
async def test_wrong_token_is_403(
    client: httpx.AsyncClient, endpoint: tuple[str, str, Json | None], token: str
) -> None:
    response = await _call(client, endpoint, {"X-Admin-Token": token})
    assert response.status_code == 403, response.text
    assert isinstance(response.json()["detail"], str)


@pytest.mark.parametrize("endpoint", ENDPOINTS, ids=ENDPOINT_IDS)
@pytest.mark.parametrize("send", ["none", "the test token", "another"])
async def test_unconfigured_token_is_403_saying_so(
    unconfigured: httpx.AsyncClient,
    admin_headers: dict[str, str],
    endpoint: tuple[str, str, Json | None],
    send: str,
) -> None:
    headers = {"none": {}, "the test token": admin_headers, "another": {"X-Admin-Token": "x"}}[send]
    response = await _call(unconfigured, endpoint, headers)
    assert response.status_code == 403, response.text
    assert "not configured" in response.json()["detail"]


@pytest.mark.parametrize("endpoint", ENDPOINTS, ids=ENDPOINT_IDS)
async def test_session_cookie_is_no_token(
    customer: httpx.AsyncClient, endpoint: tuple[str, str, Json | None]
) -> None:
    assert customer.cookies.get("session_id")
    response = await _call(customer, endpoint)
    assert response.status_code == 401, response.text
    response = await _call(customer, endpoint, {"X-Admin-Token": "wrong"})
    assert response.status_code == 403, response.text


async def test_guard_comes_before_validation(client: httpx.AsyncClient) -> None:
    """An unauthenticated caller learns nothing about the input rules."""
    response = await client.post("/packages/1/transport-company/", json={"company_id": 0})
    assert response.status_code == 401, response.text
    response = await client.get("/admin/stats/daily-costs/?date=yesterday")
    assert response.status_code == 401, response.text


async def test_right_token_passes_the_guard(client: httpx.AsyncClient, admin_headers: dict[str, str]) -> None:
    """The control for the tests above: the same calls with the token get past the guard."""
    response = await _call(client, ENDPOINTS[0], admin_headers)
    assert response.status_code == 404, response.text  # no package 1 in an empty database
    response = await _call(client, ENDPOINTS[1], admin_headers)
    assert response.status_code == 200, response.text
    response = await _call(client, ENDPOINTS[3], admin_headers)
    assert response.status_code == 200, response.text


async def test_paths_without_the_slash(client: httpx.AsyncClient, admin_headers: dict[str, str]) -> None:
    response = await client.get(
        "/admin/stats/daily-costs?date=2025-06-26", headers=admin_headers, follow_redirects=True
    )
    assert response.status_code == 200, response.text
    assert response.json()["date"] == "2025-06-26"
    response = await client.post(
        "/packages/1/transport-company", json={"company_id": 7}, headers=admin_headers, follow_redirects=True
    )
    assert response.status_code == 404, response.text


# --- binding a transport company ---


@pytest.fixture
async def package_id(maker: Maker, customer: httpx.AsyncClient) -> int:
    """One package of the customer's session, without a cost or a company."""
    session_id = await _session_id(maker, customer)
    (pid,) = await add_unpriced_packages(maker, session_id, [(2, "1.25", "120")])
    return pid


async def test_bind_returns_the_package(
    customer: httpx.AsyncClient, admin_headers: dict[str, str], package_id: int
) -> None:
    before = (await customer.get(f"/packages/{package_id}/")).json()
    assert before["transport_company_id"] is None

    response = await customer.post(
        f"/packages/{package_id}/transport-company/", json={"company_id": 7}, headers=admin_headers
    )
    assert response.status_code == 200, response.text
    assert response.json() == before | {"transport_company_id": 7}
    assert response.json()["weight_kg"] == "1.250"
    assert response.json()["type"] == {"id": 2, "name": "electronics"}

    # the owner sees it, in the package and in the list
    assert (await customer.get(f"/packages/{package_id}/")).json() == response.json()
    listed = (await customer.get("/packages/")).json()
    assert listed["items"] == [response.json()]


@pytest.mark.parametrize("company_id", [7.0, 2**53 - 1], ids=["integral-number", "largest-documented"])
async def test_bind_takes_every_integer_the_schema_documents(
    client: httpx.AsyncClient, admin_headers: dict[str, str], package_id: int, company_id: float
) -> None:
    """JSON Schema counts 7.0 as an integer; the documented maximum is one."""
    response = await client.post(
        f"/packages/{package_id}/transport-company/", json={"company_id": company_id}, headers=admin_headers
    )
    assert response.status_code == 200, response.text
    assert response.json()["transport_company_id"] == int(company_id)


async def test_bind_same_company_again_is_200(
    client: httpx.AsyncClient, admin_headers: dict[str, str], package_id: int
) -> None:
    url = f"/packages/{package_id}/transport-company/"
    first = await client.post(url, json={"company_id": 7}, headers=admin_headers)
    again = await client.post(url, json={"company_id": 7}, headers=admin_headers)
    assert first.status_code == again.status_code == 200, again.text
    assert again.json() == first.json()
    assert again.json()["transport_company_id"] == 7


async def test_bind_another_company_is_409_naming_the_holder(
    client: httpx.AsyncClient, admin_headers: dict[str, str], maker: Maker, package_id: int
) -> None:
    url = f"/packages/{package_id}/transport-company/"
    assert (await client.post(url, json={"company_id": 7}, headers=admin_headers)).status_code == 200
    response = await client.post(url, json={"company_id": 8}, headers=admin_headers)
    assert response.status_code == 409, response.text
    body = response.json()
    assert set(body) == {"detail", "transport_company_id"}
    assert isinstance(body["detail"], str)
    assert body["detail"]
    assert body["transport_company_id"] == 7
    assert (await _packages(maker, [package_id]))[package_id].transport_company_id == 7


async def test_bind_unknown_package_is_404(client: httpx.AsyncClient, admin_headers: dict[str, str]) -> None:
    response = await client.post(
        "/packages/999999/transport-company/", json={"company_id": 7}, headers=admin_headers
    )
    assert response.status_code == 404, response.text
    assert isinstance(response.json()["detail"], str)


async def test_bind_package_id_not_an_integer_is_422(
    client: httpx.AsyncClient, admin_headers: dict[str, str]
) -> None:
    response = await client.post(
        "/packages/abc/transport-company/", json={"company_id": 7}, headers=admin_headers
    )
    assert response.status_code == 422, response.text
    assert any("package_id" in error["loc"] for error in response.json()["detail"])


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"company_id": 0}, "company_id"),
        ({"company_id": -3}, "company_id"),
        ({"company_id": 2**53}, "company_id"),
        ({"company_id": "7"}, "company_id"),
        ({"company_id": 7.5}, "company_id"),
        ({"company_id": True}, "company_id"),
        ({"company_id": None}, "company_id"),
        ({}, "company_id"),
        ({"company_id": 7, "priority": 1}, "priority"),
    ],
    ids=[
        "zero",
        "negative",
        "past-the-json-safe-integers",
        "string",
        "float",
        "bool",
        "null",
        "missing",
        "extra-field",
    ],
)
async def test_bind_invalid_body_is_422(
    client: httpx.AsyncClient,
    admin_headers: dict[str, str],
    maker: Maker,
    package_id: int,
    body: Json,
    field: str,
) -> None:
    response = await client.post(
        f"/packages/{package_id}/transport-company/", json=body, headers=admin_headers
    )
    assert response.status_code == 422, response.text
    assert any(field in error["loc"] for error in response.json()["detail"]), response.text
    assert (await _packages(maker, [package_id]))[package_id].transport_company_id is None


async def test_first_company_wins_under_concurrency(
    client: httpx.AsyncClient, admin_headers: dict[str, str], maker: Maker, package_id: int, stack: Stack
) -> None:
    """200 companies at once: one gets the package, all the others are told who did."""
    url = f"/packages/{package_id}/transport-company/"
    started = time.perf_counter()
    responses = await asyncio.gather(
        *(client.post(url, json={"company_id": c}, headers=admin_headers) for c in range(1, CONTENDERS + 1))
    )
    elapsed = time.perf_counter() - started
    print(f"\n{CONTENDERS} concurrent binds on the {stack.name} stack: {elapsed:.2f}s")

    codes = Counter(r.status_code for r in responses)
    assert codes == {200: 1, 409: CONTENDERS - 1}, codes
    (winner,) = [c for c, r in enumerate(responses, start=1) if r.status_code == 200]
    assert responses[winner - 1].json()["transport_company_id"] == winner
    holders = {r.json()["transport_company_id"] for r in responses if r.status_code == 409}
    assert holders == {winner}
    assert (await _packages(maker, [package_id]))[package_id].transport_company_id == winner


# --- jobs on demand ---


async def test_price_job_on_demand(
    client: httpx.AsyncClient, admin_headers: dict[str, str], maker: Maker, worker: WorkerProcess
) -> None:
    session_id = (await add_session(maker))[0]
    specs = [(1, "1.25", "120"), (2, "0.5", "999.99"), (3, "1000", "1000000000"), (1, "0.001", "0")]
    ids = await add_unpriced_packages(maker, session_id, specs)

    response = await client.post("/admin/jobs/price-packages/", headers=admin_headers)
    assert response.status_code == 202, response.text
    assert set(response.json()) == {"task_id"}
    task_id = response.json()["task_id"]
    assert isinstance(task_id, str)
    assert task_id

    state = await _wait_for_job(client, task_id, admin_headers)
    assert state == {"task_id": task_id, "state": "SUCCESS", "result": {"priced": len(ids)}, "error": None}

    packages = await _packages(maker, ids)
    for pid, (_, weight, value) in zip(ids, specs, strict=True):
        assert packages[pid].delivery_cost_rub == _cost(weight, value, FIXTURE_USD_RUB)
        assert packages[pid].usd_rub_rate == FIXTURE_USD_RUB
    async with maker() as db:
        logged = (await db.scalars(select(CostCalculation.package_id))).all()
    assert sorted(logged) == sorted(ids)


async def test_unknown_job_is_pending(client: httpx.AsyncClient, admin_headers: dict[str, str]) -> None:
    """Celery cannot tell an unknown id from a job not yet started: both read as PENDING."""
    task_id = str(uuid.uuid4())
    response = await client.get(f"/admin/jobs/{task_id}/", headers=admin_headers)
    assert response.status_code == 200, response.text
    assert response.json() == {"task_id": task_id, "state": "PENDING", "result": None, "error": None}


async def test_price_job_with_the_bank_down_fails_visibly(
    client: httpx.AsyncClient,
    admin_headers: dict[str, str],
    maker: Maker,
    worker: WorkerProcess,
    bank: FakeBank,
) -> None:
    bank.mode = "error"
    ids = await add_unpriced_packages(maker, (await add_session(maker))[0], [(1, "2", "50"), (3, "1", "10")])

    response = await client.post("/admin/jobs/price-packages/", headers=admin_headers)
    assert response.status_code == 202, response.text
    task_id = response.json()["task_id"]
    state = await _wait_for_job(client, task_id, admin_headers)

    assert state["task_id"] == task_id
    assert state["state"] == "FAILURE"
    assert state["result"] is None
    assert isinstance(state["error"], str)
    assert "rate" in state["error"].lower() or "bank" in state["error"].lower(), state["error"]
    assert bank.requests >= 1
    packages = await _packages(maker, ids)
    assert [packages[pid].delivery_cost_rub for pid in ids] == [None, None]
    async with maker() as db:
        assert (await db.scalars(select(CostCalculation))).all() == []

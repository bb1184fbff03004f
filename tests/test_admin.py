"""Operator endpoints: the X-Admin-Token guard, binding a transport company, and jobs run on demand."""

import asyncio
import contextlib
import socket
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator, Sequence
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from delivery import service
from delivery.api import create_app
from delivery.config import Settings
from delivery.errors import TransportCompanyConflict
from delivery.jobs import price_pending
from delivery.models import ClientSession, CostCalculation, Package
from delivery.rates import Rate
from delivery.service import hash_token
from tests.factories import add_session, add_unpriced_packages, app_client
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
    ("GET", "/admin/stats/daily-costs/?from=2025-06-01&to=2025-06-30", None),
    ("GET", "/admin/stats/backlog/", None),
    ("POST", "/admin/jobs/price-packages/", None),
    ("GET", f"/admin/jobs/{uuid.uuid4()}/", None),
    ("GET", "/admin/dead-letters/", None),
    ("POST", "/admin/dead-letters/requeue/", None),
]
ENDPOINT_IDS = [
    "transport-company",
    "daily-costs",
    "daily-costs-range",
    "backlog",
    "price-packages",
    "job-state",
    "dead-letters",
    "dead-letters-requeue",
]


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
    response = await client.get("/admin/stats/daily-costs/?from=2025-06-27&to=2025-06-26")
    assert response.status_code == 401, response.text


async def test_right_token_passes_the_guard(client: httpx.AsyncClient, admin_headers: dict[str, str]) -> None:
    """The control for the tests above: the same calls with the token get past the guard."""
    response = await _call(client, ENDPOINTS[0], admin_headers)
    assert response.status_code == 404, response.text  # no package 1 in an empty database
    for endpoint in (
        ENDPOINTS[1],
        ENDPOINTS[2],
        ENDPOINTS[3],
        ENDPOINTS[5],
    ):  # all but the binding and the job
        response = await _call(client, endpoint, admin_headers)
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


async def _bind_in_a_session_that_loaded_it_unbound(
    maker: Maker, package_id: int, company_id: int, *, holder: int | None
) -> Package:
    """`service.bind_transport_company` on its second pass, pinned down: its session holds the package as a
    first pass loaded it (no company) — it was created after the first UPDATE looked — and meanwhile
    `holder` (if any) bound it."""
    async with maker() as db:
        loaded = await service.get_package(db, None, package_id)
        assert loaded.transport_company_id is None
        if holder is not None:
            async with maker() as other:
                await service.bind_transport_company(other, package_id, holder)
        return await asyncio.wait_for(service.bind_transport_company(db, package_id, company_id), timeout=10)


async def test_bind_answers_the_package_as_bound_now(maker: Maker, package_id: int) -> None:
    package = await _bind_in_a_session_that_loaded_it_unbound(maker, package_id, 7, holder=None)
    assert package.transport_company_id == 7
    assert (await _packages(maker, [package_id]))[package_id].transport_company_id == 7


async def test_bind_sees_a_company_that_won_between_passes(maker: Maker, package_id: int) -> None:
    with pytest.raises(TransportCompanyConflict) as conflict:
        await _bind_in_a_session_that_loaded_it_unbound(maker, package_id, 8, holder=7)
    assert conflict.value.holder_id == 7
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
    # Operators see the run in the backlog.
    run = (await _backlog(client, admin_headers))["last_pricing_run"]
    assert run["outcome"] == "ok" and run["priced"] == len(ids), run


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
    run = (await _backlog(client, admin_headers))["last_pricing_run"]
    assert run["outcome"] == "no_rate" and run["priced"] == 0, run
    # The operators' log: a bank away is expected, said in a warning, no traceback for the run.
    ours = [line for line in worker.log().splitlines() if task_id in line]
    assert any("raised expected" in line for line in ours), ours
    assert not any("raised unexpected" in line for line in ours), ours
    assert "pricing run without a rate" in worker.log()


# --- the backlog ---


async def _backlog(client: httpx.AsyncClient, headers: dict[str, str]) -> Json:
    response = await client.get("/admin/stats/backlog/", headers=headers)
    assert response.status_code == 200, response.text
    body: Json = response.json()
    return body


async def test_backlog_counts_what_waits(
    customer: httpx.AsyncClient, admin_headers: dict[str, str], maker: Maker, stack: Stack
) -> None:
    stack.stop_shared_worker()  # so that the registrations below stay pending
    assert await _backlog(customer, admin_headers) == {
        "packages_without_cost": 0,
        "registrations_pending": 0,
        "registrations_pending_exact": True,
        "last_cost_calculated_at": None,
        "last_pricing_run": None,
        "dead_letters": 0,
        "oldest_dead_letter_at": None,
    }
    session_id = (await add_session(maker))[0]
    await add_unpriced_packages(maker, session_id, [(1, "1", "1"), (2, "2", "2"), (3, "3", "3")])
    # Accepted, with no worker to take them: pending until one does.
    body = {"name": "Winter jacket", "weight_kg": "1.25", "type_id": 1, "content_value_usd": "120"}
    for _ in range(2):
        assert (await customer.post("/packages/", json=body)).status_code == 202

    answer = await _backlog(customer, admin_headers)
    assert answer["packages_without_cost"] == 3
    assert answer["registrations_pending"] == 2
    assert answer["registrations_pending_exact"] is True
    assert answer["last_cost_calculated_at"] is None

    priced_at = datetime(2025, 6, 26, 10, 15, 30, tzinfo=UTC)
    assert await price_pending(maker, Rate(FIXTURE_USD_RUB, priced_at.date()), clock=lambda: priced_at) == 3
    answer = await _backlog(customer, admin_headers)
    assert answer["packages_without_cost"] == 0
    assert datetime.fromisoformat(answer["last_cost_calculated_at"]) == priced_at


@contextlib.contextmanager
def _redis_down(how: str) -> Iterator[str]:
    """The URL of a Redis that is down: nothing listening ("refused"), or a listener that never answers
    ("silent": connections wait in its backlog, as with a hung server)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        if how == "silent":
            sock.listen(8)
            yield f"redis://127.0.0.1:{port}/0"
            return
    yield f"redis://127.0.0.1:{port}/0"


@pytest.mark.parametrize("stack", ["real"], indirect=True)  # the embedded result backend is a folder
@pytest.mark.parametrize("how", ["refused", "silent"])
async def test_job_state_with_the_result_backend_down_is_503_at_once(
    settings: Settings, admin_headers: dict[str, str], how: str
) -> None:
    """Redis (Celery's result backend) not answering: 503 with Retry-After within a couple of seconds,
    not a 500 after the backend's retries."""
    with _redis_down(how) as url:
        async with app_client(settings.model_copy(update={"REDIS_URL": url})) as client:
            started = time.monotonic()
            response = await client.get(f"/admin/jobs/{uuid.uuid4()}/", headers=admin_headers)
            elapsed = time.monotonic() - started
    assert response.status_code == 503, response.text
    assert int(response.headers["Retry-After"]) > 0
    assert "unavailable" in response.json()["detail"]
    assert elapsed < 5.0

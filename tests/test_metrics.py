"""`/metrics`: what operators graph, from the API and (through the shared directory) from the worker."""

import asyncio
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.factories import Maker, add_packages, open_session
from tests.helpers import register, valid_body, wait_all_done
from tests.stack import ApiProcess, Stack, WorkerProcess


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def test_requests_are_counted_by_route_template_and_status(customer: httpx.AsyncClient) -> None:
    await customer.get("/packages/12345/")
    response = await customer.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    samples = _samples(response.text)
    key = (
        "delivery_http_requests_total",
        (("method", "GET"), ("route", "/packages/{package_id}/"), ("status", "404")),
    )
    assert samples[key] >= 1
    latency = (
        "delivery_http_request_duration_seconds_count",
        (("method", "GET"), ("route", "/packages/{package_id}/")),
    )
    assert samples[latency] >= 1


async def test_packages_awaiting_a_cost_are_counted_at_scrape_time(
    customer: httpx.AsyncClient, maker: Maker
) -> None:
    session_id = await open_session(customer)
    await add_packages(maker, session_id=session_id, count=4)
    await add_packages(maker, session_id=session_id, count=2, delivery_cost_rub=Decimal("10.00"))
    samples = _samples((await customer.get("/metrics")).text)
    assert samples[("delivery_packages_awaiting_cost", ())] == 4


async def test_the_workers_metrics_reach_the_apis_endpoint(
    stack: Stack, start_worker: Callable[..., WorkerProcess], tmp_path: Path
) -> None:
    shared = tmp_path / "metrics"
    shared.mkdir()
    stack.stop_shared_worker()
    start_worker(PROMETHEUS_MULTIPROC_DIR=str(shared)).start()
    api = ApiProcess(stack, PROMETHEUS_MULTIPROC_DIR=str(shared)).start()
    try:
        async with httpx.AsyncClient(base_url=api.url) as http:
            await http.get("/sessions/new/")
            locations = await asyncio.gather(*(register(http, valid_body(name=f"p{i}")) for i in range(3)))
            await wait_all_done(http, locations)
            samples = _samples((await http.get("/metrics")).text)
    finally:
        api.stop()
    assert samples[("delivery_registrations_accepted_total", ())] == 3
    assert samples[("delivery_registrations_total", (("outcome", "registered"),))] == 3
    assert samples[("delivery_bank_fetches_total", (("outcome", "ok"),))] == 1
    assert samples[("delivery_rate_cache_lookups_total", (("result", "miss"),))] >= 1
    assert samples[("delivery_bank_fetch_duration_seconds_count", ())] == 1

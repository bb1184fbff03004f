"""`/metrics`: what operators graph, from the API and (through the shared directory) from the worker."""

import asyncio
import fcntl
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select

from delivery.broker import create_celery, publish_registration
from delivery.models import Package
from delivery.registration import RegistrationJob
from tests.factories import Maker, add_packages, open_session
from tests.fakebank import FakeBank
from tests.helpers import register, status_id_of, valid_body, wait_all_done, wait_until
from tests.stack import ApiProcess, Stack, WorkerProcess, clear_store


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


async def test_requests_are_counted_by_the_host_that_answered(customer: httpx.AsyncClient) -> None:
    """Containers that share one metrics directory each serve the same sums; this count tells their shares
    apart."""
    key = ("delivery_http_requests_by_host_total", (("host", socket.gethostname().replace("_", "-")),))
    before = _samples((await customer.get("/metrics")).text).get(key, 0.0)
    for _ in range(3):
        await customer.get("/types/")
    after = _samples((await customer.get("/metrics")).text)[key]
    assert after - before >= 4  # the three, and the first scrape


async def test_every_rate_limit_rule_is_exported_before_it_refuses_anything(
    customer: httpx.AsyncClient,
) -> None:
    """A rule that refused nothing yet shows 0, so a dashboard of its refusals has data from the start."""
    samples = _samples((await customer.get("/metrics")).text)
    for rule in ("registrations", "reads", "sessions"):
        for name in ("delivery_rate_limited_total", "delivery_rate_limit_unchecked_total"):
            assert (name, (("rule", rule),)) in samples, (name, rule)


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


# --- several API processes (`delivery serve` with WEB_CONCURRENCY) ---

TYPES_200 = ("delivery_http_requests_total", (("method", "GET"), ("route", "/types/"), ("status", "200")))
API_PROCESSES = ("delivery_api_processes", ())


def _children(api: ApiProcess) -> list[int]:
    return api.children()


def _serving(api: ApiProcess) -> set[int]:
    return {int(str(line["process"])) for line in api.json_lines() if line.get("name") == "delivery.access"}


def _identity(pid: int) -> str:
    """The process identity in the names of its metrics files: host and pid (a pid alone repeats across
    containers, whose first process is always 1)."""
    return f"{socket.gethostname().replace('_', '-')}-{pid}"


async def test_metrics_add_up_every_api_process(stack: Stack, tmp_path: Path) -> None:
    shared = tmp_path / "metrics"
    shared.mkdir()
    api = ApiProcess(stack, WEB_CONCURRENCY=2, PROMETHEUS_MULTIPROC_DIR=str(shared)).start()
    sent = 0
    try:

        async def both_processes_served() -> bool:
            nonlocal sent
            # A connection each: the processes share the listening socket, the kernel picks who accepts.
            async with httpx.AsyncClient(base_url=api.url) as http:
                assert (await http.get("/types/")).status_code == 200
            sent += 1
            return len(_serving(api)) == 2

        await wait_until(both_processes_served, 60, "requests served by both API processes")
        async with httpx.AsyncClient(base_url=api.url) as http:
            samples = _samples((await http.get("/metrics")).text)
        served_by = _serving(api)
    finally:
        api.stop()
    assert samples[TYPES_200] == sent
    for pid in served_by:
        assert (shared / f"counter_{_identity(pid)}.db").exists(), sorted(p.name for p in shared.iterdir())


async def test_a_killed_api_process_leaves_no_stale_gauge(stack: Stack, tmp_path: Path) -> None:
    shared = tmp_path / "metrics"
    shared.mkdir()
    api = ApiProcess(stack, WEB_CONCURRENCY=2, PROMETHEUS_MULTIPROC_DIR=str(shared)).start()

    def processes_gauge() -> float:
        return _samples(httpx.get(f"{api.url}/metrics").text).get(API_PROCESSES, -1)

    try:
        await wait_until(lambda: processes_gauge() == 2 and len(_children(api)) == 2, 30, "two processes")
        victim = _children(api)[0]
        os.kill(victim, signal.SIGKILL)
        await wait_until(
            lambda: victim not in _children(api) and len(_children(api)) == 2, 30, "the process restarted"
        )
        await wait_until(lambda: len(_children(api)) == 2 and processes_gauge() == 2, 30, "the gauge at 2")
        assert [path.name for path in shared.glob(f"gauge_live*_{_identity(victim)}.db")] == []
        assert processes_gauge() == 2
    finally:
        api.stop()
    assert sorted(path.name for path in shared.glob("gauge_live*")) == [], "a stopped process left its gauge"


#: A process starting as an API process does: it claims its identity once told to, then says so.
_STARTING = """
import sys
from delivery import metrics
sys.stdin.readline()
metrics.start_api_process()
print("started", flush=True)
"""


def test_a_starting_process_waits_for_a_sweep_that_holds_its_lock(tmp_path: Path) -> None:
    """Pids repeat (pid 1 in every container): the lock file of a dead process can carry the identity a new
    process starts with, and another process's sweep holds that lock while it removes the dead one's
    gauges. The new process waits for it, rather than dying at start."""
    shared = tmp_path / "metrics"
    shared.mkdir()
    env = os.environ | {"PROMETHEUS_MULTIPROC_DIR": str(shared)}
    child = subprocess.Popen(
        [sys.executable, "-c", _STARTING], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        # The lock of the identity the child has, held as `metrics.sweep_dead_processes` holds it.
        with (shared / f"{_identity(child.pid)}.lock").open("a") as sweeping:
            fcntl.flock(sweeping, fcntl.LOCK_EX | fcntl.LOCK_NB)
            assert child.stdin is not None
            child.stdin.write("go\n")
            child.stdin.flush()
            time.sleep(1.0)
            assert child.poll() is None, "the starting process died while a sweep held its lock"
        out, _ = child.communicate(timeout=10)
    finally:
        child.kill()
        child.wait()
    assert child.returncode == 0 and out == "started\n", out


async def test_a_package_is_counted_once_however_often_its_job_runs(
    stack: Stack,
    start_worker: Callable[..., WorkerProcess],
    tmp_path: Path,
    maker: Maker,
    bank: FakeBank,
) -> None:
    """A job run again (redelivered, or published again by the recovery) whose package exists counts
    nothing more, and a run without a rate does not count the priced package as registered without one."""
    shared = tmp_path / "metrics"
    shared.mkdir()
    stack.stop_shared_worker()
    worker = start_worker(PROMETHEUS_MULTIPROC_DIR=str(shared)).start()
    api = ApiProcess(stack, PROMETHEUS_MULTIPROC_DIR=str(shared)).start()
    celery = create_celery(stack.settings)
    try:
        async with httpx.AsyncClient(base_url=api.url) as http:
            await http.get("/sessions/new/")
            body = valid_body()
            location = await register(http, body)
            await wait_all_done(http, [location])
            registration_id = status_id_of(location)
            async with maker() as db:
                package = await db.scalar(
                    select(Package).where(Package.registration_id == uuid.UUID(registration_id))
                )
            assert package is not None and package.delivery_cost_rub is not None
            # Long accepted: a run without a rate registers at once, without a cost.
            job = RegistrationJob(
                registration_id, package.session_id, body["name"], body["weight_kg"], body["type_id"],
                body["content_value_usd"], accepted_at=0.0,
            )  # fmt: skip
            for bank_mode in ("error", "ok"):
                bank.mode = bank_mode
                await clear_store(stack.settings)  # the rate cache with it
                # Logged after the job's outcome was counted, once per run.
                outcome_line = f"registration_id={registration_id} package_id={package.id}"
                runs = worker.log().count(outcome_line)
                await asyncio.to_thread(publish_registration, celery, job)
                await wait_until(
                    lambda line=outcome_line, before=runs: worker.log().count(line) > before,
                    60,
                    "the job run again",
                )
            samples = _samples((await http.get("/metrics")).text)
    finally:
        celery.close()
        api.stop()
    assert samples.get(("delivery_registrations_total", (("outcome", "registered"),))) == 1, samples
    assert samples.get(("delivery_registrations_total", (("outcome", "registered_without_cost"),)), 0) == 0

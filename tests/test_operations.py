"""What operators rely on: request ids, structured logs, graceful shutdown of the API and the worker."""

import asyncio
import gc
import json
import logging
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, MutableMapping
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

from bench.load import HttpConnection
from delivery.api import app as app_module
from delivery.api import create_app
from delivery.broker import BATCH_SIZE, PUBLISH_GROUP, REGISTER_TASK, create_celery
from delivery.config import Settings
from delivery.logs import ContextFilter, formatter, request_id
from delivery.registration import RegistrationJob
from delivery.worker import jobs_batches
from tests.factories import open_session
from tests.fakebank import FakeBank
from tests.helpers import (
    Maker,
    packages_by_registration,
    register,
    status_id_of,
    valid_body,
    wait_all_done,
    wait_until,
)
from tests.stack import ApiProcess, Stack, WorkerProcess


@pytest.fixture
def api(stack: Stack) -> Iterator[ApiProcess]:
    process = ApiProcess(stack).start()
    yield process
    process.stop()


async def test_request_id_is_returned_made_or_kept(customer: httpx.AsyncClient) -> None:
    made = await customer.get("/types/")
    assert len(made.headers["X-Request-ID"]) == 32
    kept = await customer.get("/types/", headers={"X-Request-ID": "abc-123"})
    assert kept.headers["X-Request-ID"] == "abc-123"
    replaced = await customer.get("/types/", headers={"X-Request-ID": "bad id\twith spaces"})
    assert replaced.headers["X-Request-ID"] not in ("bad id\twith spaces", "")


async def test_each_request_logs_json_lines_with_its_request_id(api: ApiProcess) -> None:
    async with httpx.AsyncClient(base_url=api.url) as http:
        await http.get("/sessions/new/", headers={"X-Request-ID": "req-open"})
        response = await http.post("/packages/", json=valid_body(), headers={"X-Request-ID": "req-register"})
        assert response.status_code == 202
    # The access line is written once the response has gone out: give it a moment to reach the file.
    await wait_until(lambda: "POST /packages/ status=202" in api.log(), 5, "the access line")
    lines = api.json_lines()
    assert lines, "the API logs JSON lines with LOG_FORMAT=json"
    by_request = [line for line in lines if line.get("request_id") == "req-register"]
    messages = [str(line["message"]) for line in by_request]
    assert any(message.startswith("registration accepted") for message in messages)
    assert any(message.startswith("POST /packages/ status=202") for message in messages)
    assert all({"time", "level", "name", "message"} <= set(line) for line in lines)


async def test_control_characters_cannot_forge_a_text_log_line(stack: Stack) -> None:
    """A newline (or a carriage return, an escape sequence) sent in a path is written escaped."""
    api = ApiProcess(stack, LOG_FORMAT="text").start()
    try:
        async with httpx.AsyncClient(base_url=api.url) as http:
            response = await http.get("/x%0AFORGED%0D%1B[2Kstatus=200")
            assert response.status_code == 404
        await wait_until(lambda: "FORGED" in api.log(), 5, "the access line")
    finally:
        api.stop()
    lines = api.log().splitlines()
    assert not [line for line in lines if line.startswith("FORGED")], lines
    assert any("GET /x\\nFORGED\\r\\x1b[2Kstatus=200 status=404" in line for line in lines), lines


def test_every_value_of_a_text_line_is_escaped() -> None:
    """The logger's name, the message's arguments and the context alike, not only the path."""
    record = logging.LogRecord("bad\rname", logging.INFO, __file__, 1, "value=%s", ("a\nb\u2028c",), None)
    token = request_id.set("id\n1")
    try:
        ContextFilter().filter(record)
    finally:
        request_id.reset(token)
    line = formatter("text").format(record)
    assert line.splitlines() == [line]
    assert "bad\\rname" in line and "request_id=id\\n1" in line and "value=a\\nb\\u2028c" in line


async def test_a_slow_api_process_is_not_killed_by_its_supervisor(stack: Stack) -> None:
    """A process that does not answer uvicorn's supervisor for a few seconds — starting on a loaded machine,
    importing everything afresh — is left to finish, not killed and started again, and again."""
    api = ApiProcess(stack, WEB_CONCURRENCY=2).start()
    try:
        await wait_until(lambda: len(api.children()) == 2, 30, "two API processes")
        slow = api.children()[0]
        os.kill(slow, signal.SIGSTOP)
        await asyncio.sleep(8)
        os.kill(slow, signal.SIGCONT)
        await asyncio.sleep(1)
        assert slow in api.children(), api.log()[-3000:]
    finally:
        api.stop()


async def test_a_killed_api_process_is_replaced_at_once(stack: Stack) -> None:
    """A process that dies (the kernel kills it for memory) while the supervisor waits for its answer to a
    ping is started again at once, not after the 30 s that a process that stopped answering is given."""
    api = ApiProcess(stack, WEB_CONCURRENCY=2).start()
    try:
        await wait_until(lambda: len(api.children()) == 2, 30, "two API processes")
        first = api.children()
        victim = first[1]
        os.kill(victim, signal.SIGSTOP)
        await asyncio.sleep(
            2
        )  # the supervisor pings every half second: it is waiting for the victim's answer
        os.kill(victim, signal.SIGKILL)
        await wait_until(
            lambda: victim not in api.children() and len(api.children()) == 2, 10, "the process replaced"
        )
        async with httpx.AsyncClient(base_url=api.url) as http:
            assert (await http.get("/healthz")).status_code == 200
        (replacement,) = set(api.children()) - set(first)
        warnings = [
            (line["level"], line["message"])
            for line in api.json_lines()
            if line["name"] == "delivery.supervisor"
        ]
        assert warnings == [
            (
                "WARNING",
                f"API process {victim} was killed by SIGKILL; process {replacement} started in its place",
            )
        ]
    finally:
        api.stop()


async def test_an_idle_connection_outlives_a_client_pools_expiry(api: ApiProcess) -> None:
    """A client's pool keeps an idle connection for a while (httpx 5 s, aiohttp 15 s, a proxy 60 s) and then
    sends on it. Were the server to close it at that same moment, the request would fail: the server keeps an
    idle connection longer than the pools do (75 s), so that moment never comes."""
    # One connection, never opened again: if the server closed it, the request fails (IncompleteReadError).
    connection = HttpConnection("127.0.0.1", api.port)
    try:
        assert (await connection.request("GET", "/healthz", {}))[0] == 200
        await asyncio.sleep(6)
        assert (await connection.request("GET", "/types/", {}))[0] == 200
    finally:
        await connection.close()


async def test_job_lines_carry_the_registration_id(
    customer: httpx.AsyncClient, stack: Stack, start_worker: Callable[..., WorkerProcess]
) -> None:
    stack.stop_shared_worker()
    worker = start_worker(LOG_FORMAT="json").start()
    location = await register(customer)
    await wait_all_done(customer, [location])
    registration_id = status_id_of(location)
    job_lines = [
        json.loads(line)
        for line in worker.log().splitlines()
        if line.startswith("{") and registration_id in line
    ]
    assert job_lines
    for line in job_lines:
        if line["name"].startswith("delivery."):
            assert line["registration_id"] == registration_id, line


async def test_a_batch_holds_at_most_batch_size_jobs_and_a_job_line_names_its_job_alone(
    customer: httpx.AsyncClient,
    stack: Stack,
    start_worker: Callable[..., WorkerProcess],
    maker: Maker,
) -> None:
    """Messages of several jobs each (as the API's publisher groups them), queued before the worker starts:
    the worker's batches stay within BATCH_SIZE jobs, not messages, and every line that names a
    registration names one, the one it is about."""
    stack.stop_shared_worker()
    session_id = await open_session(customer)
    now = time.time()
    jobs = [
        RegistrationJob(str(uuid.uuid4()), session_id, f"parcel {n}", "1.000", 1, "10.00", now)
        for n in range(3 * PUBLISH_GROUP)
    ]
    celery = create_celery(stack.settings)
    try:
        for start in range(0, len(jobs), PUBLISH_GROUP):
            group = jobs[start : start + PUBLISH_GROUP]
            await asyncio.to_thread(
                celery.send_task, REGISTER_TASK, args=[job.to_json() for job in group], ignore_result=True
            )
    finally:
        celery.close()
    worker = start_worker(LOG_FORMAT="json", concurrency=1).start()
    ids = {job.registration_id for job in jobs}
    registered = {uuid.UUID(job_id) for job_id in ids}
    deadline = time.monotonic() + 60
    while set(await packages_by_registration(maker)) != registered:
        assert time.monotonic() < deadline, worker.log()[-3000:]
        await asyncio.sleep(0.2)

    lines = [json.loads(line) for line in worker.log().splitlines() if line.startswith("{")]
    taken = [str(line["message"]) for line in lines if "registration batch taken" in str(line["message"])]
    sizes = [int(message.split("size=")[1].split()[0]) for message in taken]
    named = [line for line in lines if line.get("registration_id")]
    misnamed = [
        line
        for line in named
        if line["registration_id"] not in ids
        or f"registration_id={line['registration_id']}" not in str(line["message"])
    ]
    assert (misnamed[:3], sum(sizes), max(sizes) <= BATCH_SIZE) == ([], len(jobs), True), sizes
    assert len(named) >= len(jobs), "a line about each job"


@pytest.mark.parametrize(
    ("jobs", "batches"),
    [
        ([], []),
        ([64, 64, 64], [[64], [64], [64]]),
        ([1] * 150, [[1] * 100, [1] * 50]),
        ([30, 80, 20], [[30], [80, 20]]),
        ([150, 1], [[150], [1]]),  # a message is never split: alone, it may pass the bound
        ([0, 100, 1], [[0, 100], [1]]),
    ],
)
def test_batches_are_cut_by_their_jobs(jobs: list[int], batches: list[list[int]]) -> None:
    """The worker's messages (here by how many jobs each holds) cut into batches of at most 100 jobs, in
    order."""
    messages = [SimpleNamespace(args=[{}] * count, request_dict={}) for count in jobs]
    cut = jobs_batches(messages, 100)  # type: ignore[arg-type]
    assert [[len(message.args) for message in batch] for batch in cut] == batches


def test_a_job_that_failed_before_is_a_batch_of_its_own() -> None:
    """Jobs tried again after a failure (one that may have killed its pool process) each run alone; the
    others are batched as ever."""
    failed = [0, 1, 0, 0, 2, 1, 0]
    messages = [
        SimpleNamespace(args=[{"n": n}], request_dict={"failed_deliveries": count} if count else {})
        for n, count in enumerate(failed)
    ]
    cut = jobs_batches(messages, 100)  # type: ignore[arg-type]
    assert [[message.args[0]["n"] for message in batch] for batch in cut] == [[0], [1], [2, 3], [4], [5], [6]]


async def test_api_finishes_an_in_flight_request_on_sigterm(api: ApiProcess) -> None:
    """A request whose body is still arriving when SIGTERM comes is answered, then the server exits."""
    async with httpx.AsyncClient(base_url=api.url) as http:
        opened = await http.get("/sessions/new/")
    cookie = opened.headers["set-cookie"].split(";", 1)[0]
    body = json.dumps(valid_body()).encode()
    reader, writer = await asyncio.open_connection("127.0.0.1", api.port)
    writer.write(
        b"POST /packages/ HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
        + f"Cookie: {cookie}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        + body[:10]
    )
    await writer.drain()
    await asyncio.sleep(0.3)
    assert api.process is not None
    api.process.send_signal(signal.SIGTERM)
    await asyncio.sleep(0.3)
    writer.write(body[10:])
    await writer.drain()
    status_line = await asyncio.wait_for(reader.readline(), 15)
    writer.close()
    assert status_line.startswith(b"HTTP/1.1 202"), status_line
    # uvicorn exits by re-raising the signal once it has shut down gracefully.
    assert api.process.wait(timeout=30) in (0, -signal.SIGTERM)


async def test_worker_stopped_with_sigterm_mid_burst_loses_nothing(
    customer: httpx.AsyncClient,
    stack: Stack,
    start_worker: Callable[..., WorkerProcess],
    maker: Maker,
    bank: FakeBank,
) -> None:
    # The burst's jobs go to the workers stopped and started here, and no job an earlier test left with the
    # shared worker (one it holds for a later retry) lands among this test's rows.
    stack.stop_shared_worker()
    bank.delay = 0.5  # the first job holds the rate lock for a while: the burst is in flight at SIGTERM
    first = start_worker(concurrency=2).start()
    locations = await asyncio.gather(*(register(customer) for _ in range(40)))
    await asyncio.sleep(0.8)
    assert first.process is not None
    first.process.send_signal(signal.SIGTERM)
    assert first.process.wait(timeout=60) == 0, first.log()[-3000:]
    start_worker(concurrency=2).start()
    statuses = await wait_all_done(customer, locations, limit=90)
    assert {status["state"] for status in statuses} == {"registered"}
    rows = await packages_by_registration(maker)
    assert {str(registration) for registration in rows} == {status_id_of(loc) for loc in locations}
    assert all(len(packages) == 1 for packages in rows.values())


def test_an_exception_in_a_finaliser_is_a_json_line_too() -> None:
    """Python reports an exception it cannot raise (a finaliser's, as a Celery result's during a Redis
    restart) past logging: with LOG_FORMAT=json it must still be one JSON object per line."""
    script = (
        "from delivery.logs import configure_logging; configure_logging()\n"
        "class Finalised:\n"
        "    def __del__(self):\n"
        "        raise ConnectionError('the store went away')\n"
        "Finalised()\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "LOG_LEVEL"} | {"LOG_FORMAT": "json"}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True)
    lines = [json.loads(line) for line in done.stderr.splitlines()]
    (record,) = lines
    assert record["level"] == "WARNING"
    assert "ConnectionError: the store went away" in record["exc_info"]


def test_log_level_debug_echoes_sql_and_info_does_not(tmp_path: Path) -> None:
    script = (
        "import logging; from delivery.logs import configure_logging; configure_logging();"
        "logging.getLogger('sqlalchemy.engine.Engine').info('SELECT 1')"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("LOG_LEVEL", "LOG_FORMAT")}
    quiet = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True
    )
    loud = subprocess.run(
        [sys.executable, "-c", script],
        env=env | {"LOG_LEVEL": "DEBUG"},
        capture_output=True,
        text=True,
        check=True,
    )
    assert "SELECT 1" not in quiet.stderr
    assert "SELECT 1" in loud.stderr


async def test_the_heap_is_frozen_once_the_app_has_started(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the start made is set aside from the garbage collector's scans (gc.freeze), once per process."""
    monkeypatch.setattr(app_module, "_heap_settled", False)
    gc.unfreeze()
    app = create_app(settings)
    inbox: asyncio.Queue[dict[str, str]] = asyncio.Queue()
    sent: list[str] = []

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message["type"])

    await inbox.put({"type": "lifespan.startup"})
    lifespan = asyncio.create_task(
        app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}, inbox.get, send)
    )
    try:
        await wait_until(lambda: "lifespan.startup.complete" in sent, 30, "the app's start")
        assert gc.get_freeze_count() > 0
        tracked = {id(o) for o in gc.get_objects()}
        assert id(app.state.resources) not in tracked  # made by the start, frozen
        app_module.settle_heap()  # once per process: a second call leaves the frozen set as it is
        assert id(app.state.resources) not in {id(o) for o in gc.get_objects()}
    finally:
        gc.unfreeze()
        await inbox.put({"type": "lifespan.shutdown"})
        await asyncio.wait_for(lifespan, 30)
    assert sent[-1] == "lifespan.shutdown.complete"

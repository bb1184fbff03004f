"""The rate limits: each rule, its answer and fields, counting once a request on the fast paths and FastAPI's,
one count for every API process, the client address (forged forwarding headers change nothing), and the
limiter failing open with the store down.

Limits are set low per test, over a day's window unless a test waits one out: no window ends during a test.
"""

import asyncio
import logging
import os
import re
import signal
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import pytest
from prometheus_client import REGISTRY

from delivery.config import Settings
from delivery.ratelimit import DEADLINE, PAUSE
from realstack.net import free_port, port_open
from realstack.processes import Service
from tests.factories import app_client
from tests.helpers import register, valid_body
from tests.stack import ADMIN_TOKEN, ApiProcess, Stack

DAY = 86400
#: `"name";r=<remaining>;t=<seconds>`, the RateLimit field of one window.
SERVICE_LIMIT = re.compile(r'"(?P<name>[a-z0-9-]+)";r=(?P<r>\d+);t=(?P<t>\d+)')


@asynccontextmanager
async def limited(settings: Settings, **limits: str) -> AsyncIterator[httpx.AsyncClient]:
    """An in-process app whose limits are those given (the others raised, as in every test)."""
    async with app_client(settings.model_copy(update=limits)) as http:
        yield http


def assert_refused(response: httpx.Response, rule: str, quota: int, window: int) -> int:
    """A 429 of `rule` as the contract states it; its Retry-After."""
    assert response.status_code == 429, response.text
    assert set(response.json()) == {"detail"}
    assert rule in response.json()["detail"]
    retry_after = int(response.headers["Retry-After"])
    assert 1 <= retry_after <= window
    assert response.headers["RateLimit-Policy"] == f'"{rule}";q={quota};w={window}'
    fields = SERVICE_LIMIT.fullmatch(response.headers["RateLimit"])
    assert fields is not None, response.headers["RateLimit"]
    assert (fields["name"], fields["r"], int(fields["t"])) == (rule, "0", retry_after)
    assert response.headers["x-request-id"]
    return retry_after


def refused(rule: str) -> float:
    return REGISTRY.get_sample_value("delivery_rate_limited_total", {"rule": rule}) or 0.0


def unchecked(rule: str) -> float:
    return REGISTRY.get_sample_value("delivery_rate_limit_unchecked_total", {"rule": rule}) or 0.0


class TestRules:
    async def test_registrations_per_session(self, settings: Settings) -> None:
        """The fast path (plain JSON) and FastAPI's handler (a charset named) count against one limit; another
        session has its own."""
        async with limited(settings, RATE_LIMIT_REGISTRATIONS="3/day") as http:
            await http.get("/sessions/new/")
            before = refused("registrations")
            for content_type in ("application/json", "application/json; charset=utf-8", "application/json"):
                response = await http.post(
                    "/packages/", content=httpx.Request("POST", "/", json=valid_body()).content,
                    headers={"Content-Type": content_type},
                )  # fmt: skip
                assert response.status_code == 202, response.text
            for content_type in ("application/json", "application/json; charset=utf-8"):
                response = await http.post(
                    "/packages/", json=valid_body(), headers={"Content-Type": content_type}
                )
                assert_refused(response, "registrations", 3, DAY)
            assert refused("registrations") == before + 2

            http.cookies.clear()
            await http.get("/sessions/new/")
            await register(http)

    async def test_a_request_the_fast_path_hands_on_is_counted_once(self, settings: Settings) -> None:
        """A body the fast path leaves to FastAPI's handler (a value to refuse) is one request, not two."""
        async with limited(settings, RATE_LIMIT_REGISTRATIONS="2/day") as http:
            await http.get("/sessions/new/")
            response = await http.post("/packages/", json=valid_body(weight_kg="-1"))
            assert response.status_code == 422
            await register(http)
            assert_refused(await http.post("/packages/", json=valid_body()), "registrations", 2, DAY)

    async def test_reads_per_session_share_one_limit(self, settings: Settings) -> None:
        """A status, the list and one package are reads of one budget, by fast path or not, whatever their
        answer; registering is not a read."""
        async with limited(settings, RATE_LIMIT_READS="4/day") as http:
            await http.get("/sessions/new/")
            location = await register(http)
            assert (await http.get(location)).status_code == 200
            assert (await http.get("/packages/")).status_code == 200
            assert (await http.get("/packages/1/")).status_code == 404
            assert (await http.get("/packages/?size=1000")).status_code == 422  # FastAPI's handler
            for path in (location, "/packages/", "/packages/1/", "/packages/?size=1000"):
                assert_refused(await http.get(path), "reads", 4, DAY)
            await register(http)

    async def test_sessions_per_client_address(self, settings: Settings) -> None:
        async with limited(settings, RATE_LIMIT_SESSIONS="3/day") as http:
            for _ in range(3):
                assert (await http.get("/sessions/new/")).status_code == 204
            response = await http.get("/sessions/new/")
            assert_refused(response, "sessions", 3, DAY)
            assert "set-cookie" not in response.headers

    async def test_wrong_operator_keys_per_client_address(self, settings: Settings) -> None:
        """Right keys and a missing header count nothing; over the limit of wrong ones, the right key is
        refused too (else a guess's answer would still tell it was right)."""
        right, wrong = {"X-Admin-Token": ADMIN_TOKEN}, {"X-Admin-Token": "guess"}
        path = "/admin/stats/backlog/"
        async with limited(settings, RATE_LIMIT_OPERATOR_KEYS="2/day") as http:
            for _ in range(3):
                assert (await http.get(path, headers=right)).status_code == 200
                assert (await http.get(path)).status_code == 401
            for _ in range(2):
                assert (await http.get(path, headers=wrong)).status_code == 403
            assert_refused(await http.get(path, headers=wrong), "operator-keys", 2, DAY)
            assert_refused(await http.get(path, headers=right), "operator-keys", 2, DAY)

    async def test_several_windows(self, settings: Settings) -> None:
        """A rule of several windows names each in the fields; the one spent sets Retry-After."""
        async with limited(settings, RATE_LIMIT_SESSIONS="5/day;2/hour") as http:
            for _ in range(2):
                assert (await http.get("/sessions/new/")).status_code == 204
            response = await http.get("/sessions/new/")
            assert response.status_code == 429
            assert (
                response.headers["RateLimit-Policy"]
                == '"sessions-86400s";q=5;w=86400, "sessions-3600s";q=2;w=3600'
            )
            day, hour = (SERVICE_LIMIT.fullmatch(part) for part in response.headers["RateLimit"].split(", "))
            assert day is not None and hour is not None
            assert (day["name"], day["r"], hour["name"], hour["r"]) == (
                "sessions-86400s",
                "2",
                "sessions-3600s",
                "0",
            )
            assert response.headers["Retry-After"] == hour["t"]

    async def test_operations_endpoints_are_never_limited(self, settings: Settings) -> None:
        every = (
            "RATE_LIMIT_REGISTRATIONS",
            "RATE_LIMIT_READS",
            "RATE_LIMIT_SESSIONS",
            "RATE_LIMIT_OPERATOR_KEYS",
        )
        async with limited(settings, **dict.fromkeys(every, "1/day")) as http:
            await http.get("/sessions/new/")
            assert (await http.get("/sessions/new/")).status_code == 429
            for _ in range(3):
                for path in ("/healthz", "/readyz", "/metrics", "/types/"):
                    assert (await http.get(path)).status_code == 200, path

    async def test_served_again_after_retry_after(self, settings: Settings) -> None:
        async with limited(settings, RATE_LIMIT_SESSIONS="2/2 seconds") as http:
            for _ in range(5):
                response = await http.get("/sessions/new/")
                if response.status_code == 429:
                    break
            retry_after = assert_refused(response, "sessions", 2, 2)
            await asyncio.sleep(retry_after)
            assert (await http.get("/sessions/new/")).status_code == 204

    async def test_limits_off(self, settings: Settings) -> None:
        async with limited(settings, RATE_LIMIT_ENABLED=False, RATE_LIMIT_SESSIONS="1/day") as http:  # type: ignore[arg-type]
            for _ in range(3):
                assert (await http.get("/sessions/new/")).status_code == 204

    async def test_the_429_is_documented(self, client: httpx.AsyncClient) -> None:
        paths = (await client.get("/openapi.json")).json()["paths"]
        limited_routes = [("/packages/", "post"), ("/packages/", "get"), ("/packages/{package_id}/", "get")]
        limited_routes += [("/packages/status/{status_id}/", "get"), ("/sessions/new/", "get")]
        for path, method in [*limited_routes, ("/admin/stats/backlog/", "get")]:
            answer = paths[path][method]["responses"]["429"]
            assert set(answer["headers"]) == {"Retry-After", "RateLimit", "RateLimit-Policy"}, path
        for path in ("/healthz", "/readyz", "/metrics", "/types/"):
            assert "429" not in paths[path]["get"]["responses"], path


def new_session(url: str, **headers: str) -> int:
    """GET /sessions/new/ on a connection of its own; the status."""
    with httpx.Client(base_url=url) as http:
        return http.get("/sessions/new/", headers=headers).status_code


async def test_a_limit_is_one_for_all_api_processes(stack: Stack) -> None:
    """Each of two processes serves while the other is stopped: the second finds what the first counted."""
    api = ApiProcess(stack, WEB_CONCURRENCY=2, RATE_LIMIT_SESSIONS="4/day").start()
    try:
        for _ in range(50):
            children = api.children()
            if len(children) == 2:
                break
            await asyncio.sleep(0.2)
        first, second = children
        os.kill(second, signal.SIGSTOP)
        try:
            served_first = [await asyncio.to_thread(new_session, api.url) for _ in range(3)]
        finally:
            os.kill(second, signal.SIGCONT)
        os.kill(first, signal.SIGSTOP)
        try:
            served_second = [await asyncio.to_thread(new_session, api.url) for _ in range(3)]
        finally:
            os.kill(first, signal.SIGCONT)
        assert (served_first, served_second) == ([204, 204, 204], [204, 429, 429])
    finally:
        api.stop()


#: What a client anywhere can send to name another address.
FORGED = (
    {"X-Forwarded-For": "203.0.113.7"},
    {"X-Forwarded-For": "198.51.100.1, 203.0.113.8"},
    {"X-Real-IP": "203.0.113.9"},
    {"Forwarded": "for=203.0.113.10"},
)


async def test_forged_forwarding_headers_change_nothing(stack: Stack) -> None:
    """With no proxy trusted (FORWARDED_ALLOW_IPS unset), the address is the connection's, whatever the
    request says: every request here counts for 127.0.0.1."""
    api = ApiProcess(stack, RATE_LIMIT_SESSIONS="3/day").start()
    try:
        statuses = [await asyncio.to_thread(new_session, api.url, **headers) for headers in FORGED]
        assert statuses == [204, 204, 204, 429]
    finally:
        api.stop()


async def test_a_trusted_proxy_gives_the_client_address(stack: Stack) -> None:
    """From a proxy of FORWARDED_ALLOW_IPS, the client is the last address of its X-Forwarded-For (only that
    header: X-Real-IP and Forwarded are nobody's word here)."""
    api = ApiProcess(stack, RATE_LIMIT_SESSIONS="2/day", FORWARDED_ALLOW_IPS="127.0.0.1").start()
    try:
        first = {"X-Forwarded-For": "203.0.113.7"}
        statuses = [await asyncio.to_thread(new_session, api.url, **first) for _ in range(3)]
        assert statuses == [204, 204, 429]
        second = {"X-Forwarded-For": "203.0.113.7, 198.51.100.1", "X-Real-IP": "203.0.113.7"}
        statuses = [await asyncio.to_thread(new_session, api.url, **second) for _ in range(3)]
        assert statuses == [204, 204, 429]
        # Without the header the proxy's own address counts, whatever else the request says.
        statuses = [await asyncio.to_thread(new_session, api.url, **headers) for headers in FORGED[2:]]
        assert statuses == [204, 204]
        assert await asyncio.to_thread(new_session, api.url) == 429
    finally:
        api.stop()


class RedisServer(Service):
    """A redis-server of the test's own, to stop."""

    def __init__(self, stack: Stack) -> None:
        self.port = free_port()
        args = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "no"]  # fmt: skip
        super().__init__(f"redis-{self.port}", args, env=dict(os.environ), cwd=stack.workdir)

    def start(self) -> "RedisServer":
        super().start()
        deadline = time.monotonic() + 10
        while not port_open(self.port, timeout=0.2):
            self._check_alive()
            assert time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.05)
        return self


@pytest.mark.parametrize("stack", ["real"], indirect=True)  # the embedded store is a folder
async def test_the_limiter_fails_open_with_the_store_down(
    stack: Stack, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    """Reads go on, at once but for the first, each counted as unchecked, the failure logged once per
    pause."""
    redis_server = RedisServer(stack).start()
    try:
        own = settings.model_copy(update={"REDIS_URL": f"redis://127.0.0.1:{redis_server.port}/0"})
        async with app_client(own) as http:
            await http.get("/sessions/new/")
            assert (await http.get("/packages/")).status_code == 200
            redis_server.stop()
            before = unchecked("reads")
            began = time.monotonic()
            with caplog.at_level(logging.WARNING, logger="delivery.ratelimit"):
                for _ in range(10):
                    started = time.monotonic()
                    assert (await http.get("/packages/")).status_code == 200
                    assert time.monotonic() - started < DEADLINE + 0.5
            assert unchecked("reads") == before + 10
            # One warning, and one more for each pause that ended meanwhile (the store tried again).
            warnings = [r.getMessage() for r in caplog.records if r.name == "delivery.ratelimit"]
            assert 1 <= len(warnings) <= 1 + (time.monotonic() - began) // PAUSE, warnings
            assert "rate limits not checked" in warnings[0] and "rule=reads" in warnings[0]
    finally:
        redis_server.stop()

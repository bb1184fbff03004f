"""`make compose-check`: the service as it ships, run on a Docker engine and proved as a client would.

Builds the images (deploy/offline/build.sh: from Debian's packages, for an engine that reaches no
registry), runs compose.yaml with the offline override and this check's own override (a bank serving the
recorded daily rates, named by CBR_DAILY_URL) under a project name of its own, and talks to it through the
proxy's published port on 127.0.0.1 only. Ends with one line, `compose-check passed: ...`, with its figures;
a failed step ends it with `compose-check failed: ...` and a non-zero exit (the project is taken down with
its volumes either way, unless KEEP=1).

Environment: DOCKER_HOST (the engine; deploy/check/engine.sh starts one where none answers), PROJECT (the
compose project name, deliverycheck), PORT (the proxy's published port, 18000), SKIP_BUILD=1 (the images as
they are).
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.chaos.burst import body  # noqa: E402  (the project's burst parcels)
from tests.helpers import expected_cost, fixture_rate  # noqa: E402

DOCKER = "/usr/bin/docker"
COMPOSE = "/usr/bin/docker-compose"
PROJECT = os.environ.get("PROJECT", "deliverycheck")
PORT = int(os.environ.get("PORT", "18000"))
BASE_URL = f"http://127.0.0.1:{PORT}"
#: The cluster profile's API, behind its own proxy (DELIVERY_CLUSTER_PORT).
CLUSTER_PORT = PORT + 1
CLUSTER_URL = f"http://127.0.0.1:{CLUSTER_PORT}"
CLUSTER_NODES = ("rabbitmq-1", "rabbitmq-2", "rabbitmq-3")
CLUSTER_APP = ("api-cluster", "worker-cluster", "beat-cluster", "proxy-cluster")
#: Where the bursts and their verification go: the proxy, or the cluster profile's API.
ENDPOINT = {"url": BASE_URL}
#: How long a node stays cut off from the other two.
PARTITION_SECONDS = 20.0
PROMETHEUS_PORT = PORT + 90
DASHBOARDS = ROOT / "deploy/grafana/dashboards"
#: Grafana's $__rate_interval over a range that holds the check's bursts.
RATE_INTERVAL = "5m"
#: Dashboard series that only a fault the check does not make would create (the bank always answers).
NO_DATA_EXPECTED = ('outcome="failed"',)
EDGE_SUBNET = os.environ.get("EDGE_SUBNET", "172.30.81.0/24")
HEALTHY_WITHIN = 120.0
SESSIONS = 8
CONCURRENCY = 32
#: How long a refused registration waits before it is sent again, and when the check gives up on it.
RETRY_PAUSE = 0.2
GIVE_UP_AFTER = 120.0
#: The most a burst may take to be registered after its last 202.
SETTLE_LIMIT = 180.0
#: The size and the pace (registrations a second) of a burst with a fault in it.
FAULT_BURST = 500
FAULT_PACE = 25.0
#: Services that are healthy when running (no health check of their own), and the one-shot migration.
NO_HEALTHCHECK = {"beat", "prometheus"}
ONE_SHOT = {"migrate"}
APP_UID = "10001"
FIXTURES = next(
    path for path in (ROOT.parent / "shared/fixtures/cbr", ROOT / "tests/fixtures/cbr") if path.is_dir()
)

CHECK_OVERRIDE = """\
# The check's own additions: the bank, serving the recorded daily rates (CBR_DAILY_URL in the check's .env).
services:
  bank:
    image: delivery:latest
    command: ["python", "-m", "http.server", "8080", "--directory", "/srv/cbr"]
    volumes: ["{fixtures}:/srv/cbr:ro"]
    healthcheck:
      test: ["CMD", "python", "-c", "import urllib.request as r; r.urlopen('http://127.0.0.1:8080/')"]
      interval: 5s
      timeout: 3s
      retries: 10
"""


class CheckFailed(Exception):
    pass


def expect(condition: bool, message: str) -> None:
    if not condition:
        raise CheckFailed(message)


def run(*args: str, check: bool = True, capture: bool = True, timeout: float = 900) -> str:
    result = subprocess.run(args, capture_output=capture, text=True, timeout=timeout, check=False)
    if check and result.returncode != 0:
        raise CheckFailed(f"{' '.join(args)} exited {result.returncode}: {(result.stderr or '')[-2000:]}")
    return result.stdout or ""


class Project:
    """The compose project: a copy of compose.yaml and deploy/ with the check's env files and override."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        shutil.copy(ROOT / "compose.yaml", directory / "compose.yaml")
        shutil.copytree(ROOT / "deploy", directory / "deploy")
        password, rabbit_password = secrets.token_hex(16), secrets.token_hex(16)
        self.admin_token = secrets.token_hex(24)
        env = (ROOT / ".env.example").read_text()
        replacements = {
            "DATABASE_URL": f"mysql+asyncmy://delivery:{password}@mariadb:3306/delivery",
            "CELERY_BROKER_URL": f"amqp://delivery:{rabbit_password}@rabbitmq:5672//",
            "CBR_DAILY_URL": "http://bank:8080/daily_json.js",
            "COOKIE_SECURE": "false",  # the check talks plain HTTP to the proxy
            "ADMIN_TOKEN": self.admin_token,
            "WEB_CONCURRENCY": "1",  # two api containers on a machine of two cores
            # The bursts send from a few sessions and one address far faster than customers do: the limits
            # are raised as the bench's are (the wrong-key limit stays as shipped).
            "RATE_LIMIT_REGISTRATIONS": "1000000/minute",
            "RATE_LIMIT_READS": "1000000/minute",
            "RATE_LIMIT_SESSIONS": "1000000/minute",
        }
        lines = []
        for line in env.splitlines():
            key = line.split("=", 1)[0]
            lines.append(f"{key}={replacements[key]}" if key in replacements and "=" in line else line)
        lines += [
            "LOG_FORMAT=json",
            f"DELIVERY_PORT=127.0.0.1:{PORT}",
            f"DELIVERY_TLS_PORT=127.0.0.1:{PORT + 443}",
        ]
        lines += [f"EDGE_SUBNET={EDGE_SUBNET}", f"PROMETHEUS_PORT={PROMETHEUS_PORT}"]
        lines += [f"DELIVERY_CLUSTER_PORT=127.0.0.1:{CLUSTER_PORT}"]
        (directory / ".env").write_text("\n".join(lines) + "\n")
        (directory / "deploy/mariadb.env").write_text(
            f"MARIADB_DATABASE=delivery\nMARIADB_USER=delivery\nMARIADB_PASSWORD={password}\n"
            "MARIADB_RANDOM_ROOT_PASSWORD=yes\n"
        )
        (directory / "deploy/rabbitmq.env").write_text(
            f"RABBITMQ_DEFAULT_USER=delivery\nRABBITMQ_DEFAULT_PASS={rabbit_password}\n"
            f"RABBITMQ_ERLANG_COOKIE={secrets.token_hex(20)}\n"
        )
        nodes = ";".join(f"amqp://delivery:{rabbit_password}@{node}:5672//" for node in CLUSTER_NODES)
        (directory / "deploy/cluster.env").write_text(
            f"CELERY_BROKER_URL={nodes}\nBROKER_QUEUE_TYPE=quorum\n"
        )
        (directory / "check.yaml").write_text(CHECK_OVERRIDE.format(fixtures=FIXTURES))
        self.files = ["compose.yaml", "deploy/offline/compose.yaml", "check.yaml"]

    def compose(self, *args: str, check: bool = True, timeout: float = 900) -> str:
        command = [COMPOSE, "--ansi", "never", "-p", PROJECT, "--project-directory", str(self.directory)]
        for name in self.files:
            command += ["-f", str(self.directory / name)]
        # Every profile: `up` names its services (Grafana's image is not built here), and `down` takes all.
        command += ["--profile", "monitoring", "--profile", "cluster"]
        return run(*command, *args, check=check, timeout=timeout)

    def containers(self, service: str | None = None, all_: bool = False) -> list[dict[str, Any]]:
        filters = ["--filter", f"label=com.docker.compose.project={PROJECT}"]
        if service:
            filters += ["--filter", f"label=com.docker.compose.service={service}"]
        ids = run(DOCKER, "ps", "-q", *(["-a"] if all_ else []), *filters).split()
        if not ids:
            return []
        inspected: list[dict[str, Any]] = json.loads(run(DOCKER, "inspect", *ids))
        return inspected


# --- health ---


def wait_healthy(
    project: Project, services: set[str], started: float, within: float = HEALTHY_WITHIN
) -> float:
    """Seconds from `started` until every container of `services` is healthy (or running, without a check)."""
    while True:
        states = {}
        seen = set()
        for container in project.containers(all_=True):
            service = container["Config"]["Labels"]["com.docker.compose.service"]
            if service not in services:
                continue
            seen.add(service)
            state = container["State"]
            if service in ONE_SHOT:
                states[container["Name"]] = state["Status"] == "exited" and state["ExitCode"] == 0
            elif service in NO_HEALTHCHECK:
                # Running, and not started again by its restart policy after failing.
                states[container["Name"]] = state["Status"] == "running" and container["RestartCount"] == 0
            else:
                states[container["Name"]] = state.get("Health", {}).get("Status") == "healthy"
        if services <= seen and all(states.values()):
            return time.monotonic() - started
        if time.monotonic() - started > within:
            raise CheckFailed(
                f"not healthy within {within:.0f} s: {[n for n, ok in states.items() if not ok]}"
            )
        time.sleep(1)


# --- the burst ---


@dataclass
class Burst:
    accepted: dict[str, tuple[str, int]] = field(default_factory=dict)  # status id -> (cookie, index)
    answers: Counter[int] = field(default_factory=Counter)
    broken: list[str] = field(default_factory=list)
    started: float = 0.0
    last_accepted: float = 0.0
    request_ids: set[str] = field(default_factory=set)


async def open_sessions(count: int = SESSIONS) -> list[str]:
    async with httpx.AsyncClient(base_url=BASE_URL, timeout=30) as client:
        cookies = []
        for _ in range(count):
            response = await client.get("/sessions/new/")
            expect(response.status_code == 204, f"/sessions/new/ answered {response.status_code}")
            cookies.append(response.cookies["session_id"])
        return cookies


async def send_burst(
    cookies: list[str],
    first: int,
    size: int,
    *,
    tag: str,
    on_accepted: Callable[[int], Awaitable[None]] | None = None,
    gateway_retry: bool = False,
    pace: float | None = None,
) -> Burst:
    """POST registrations `first`..`first+size-1`, each with its Idempotency-Key, as a careful client: a
    503 (with Retry-After) is sent again after a pause; with `gateway_retry`, so is the proxy's 502/504 (an
    api container died under the request: its outcome is unknown, the same key makes a retry safe). With
    `pace`, the n-th registration is not sent before n / pace seconds: a burst long enough for a fault."""
    burst = Burst(started=time.monotonic())
    indexes = iter(range(first, first + size))
    limits = httpx.Limits(
        max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY, keepalive_expiry=30
    )

    async def register(client: httpx.AsyncClient, index: int) -> None:
        cookie = cookies[index % len(cookies)]
        if pace is not None:
            await asyncio.sleep(max(0.0, burst.started + (index - first) / pace - time.monotonic()))
        started = time.monotonic()
        attempt = 0
        while True:
            attempt += 1
            request_id = f"{tag}-{index}-{attempt}"
            headers = {
                "Idempotency-Key": f"check-{index}",
                "Cookie": f"session_id={cookie}",
                "X-Request-ID": request_id,
            }
            try:
                response = await client.post("/packages/", json=body(index), headers=headers)
            except httpx.TransportError as exc:
                burst.broken.append(f"registration {index}: {exc!r}")
                return
            burst.answers[response.status_code] += 1
            if response.status_code == 202:
                burst.request_ids.add(request_id)
                burst.accepted[response.json()["status_id"]] = (cookie, index)
                burst.last_accepted = time.monotonic()
                if on_accepted is not None:
                    await on_accepted(len(burst.accepted))
                return
            retry = response.status_code == 503 and int(response.headers.get("Retry-After", "0")) > 0
            retry = retry or (gateway_retry and response.status_code in (502, 504))
            if not retry:
                burst.broken.append(f"registration {index}: {response.status_code} {response.text[:300]}")
                return
            if time.monotonic() - started > GIVE_UP_AFTER:
                burst.broken.append(
                    f"registration {index}: still {response.status_code} after {GIVE_UP_AFTER:.0f}s"
                )
                return
            await asyncio.sleep(RETRY_PAUSE)

    async def connection(client: httpx.AsyncClient) -> None:
        for index in indexes:
            await register(client, index)

    async with httpx.AsyncClient(
        base_url=ENDPOINT["url"], limits=limits, timeout=httpx.Timeout(60.0)
    ) as client:
        await asyncio.gather(*(connection(client) for _ in range(CONCURRENCY)))
    return burst


async def session_packages(client: httpx.AsyncClient, cookie: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    page = 1
    while True:
        response = await client.get(
            "/packages/", params={"page": page, "size": 100}, headers={"Cookie": f"session_id={cookie}"}
        )
        if response.status_code == 503 and int(response.headers.get("Retry-After", "0")) > 0:
            await asyncio.sleep(RETRY_PAUSE)  # a backing service restarting: a client tries again
            continue
        expect(response.status_code == 200, f"list answered {response.status_code}: {response.text[:200]}")
        data = response.json()
        items += data["items"]
        if page >= data["pages"]:
            return items
        page += 1


async def registered_exactly_once(
    cookies: list[str], expected: dict[str, set[int]], since: float
) -> tuple[float, int]:
    """Every session's list holds exactly its accepted parcels, once each, each with the exact cost at the
    bank's rate. `expected`: cookie -> the parcel indexes it had accepted (all bursts so far). Returns the
    seconds from `since` until the last was registered, and the number of packages."""
    rate, _ = fixture_rate()
    deadline = time.monotonic() + SETTLE_LIMIT
    async with httpx.AsyncClient(base_url=ENDPOINT["url"], timeout=30) as client:
        while True:
            lists = await asyncio.gather(*(session_packages(client, cookie) for cookie in cookies))
            done = all(
                len(items) >= len(expected[cookie]) and all(item["delivery_cost_rub"] for item in items)
                for cookie, items in zip(cookies, lists, strict=True)
            )
            if done:
                took = time.monotonic() - since
                break
            if time.monotonic() > deadline:
                counts = [len(items) for items in lists]
                wanted = [len(expected[c]) for c in cookies]
                raise CheckFailed(f"not registered within {SETTLE_LIMIT:.0f} s: {counts} of {wanted}")
            await asyncio.sleep(1)
        await asyncio.sleep(2)  # a duplicate on its way would be in by now
        lists = await asyncio.gather(*(session_packages(client, cookie) for cookie in cookies))
    total = 0
    for cookie, items in zip(cookies, lists, strict=True):
        names = Counter(item["name"] for item in items)
        duplicated = [name for name, count in names.items() if count > 1]
        expect(not duplicated, f"registered twice: {duplicated[:5]}")
        indexes = {int(name.rsplit(" ", 1)[1]) for name in names}
        expect(
            indexes == expected[cookie],
            f"a session's packages are not its accepted parcels: {sorted(indexes ^ expected[cookie])[:10]}",
        )
        for item in items:
            sent = body(int(item["name"].rsplit(" ", 1)[1]))
            cost = expected_cost(sent["weight_kg"], sent["content_value_usd"], rate)
            expect(
                item["delivery_cost_rub"] == cost,
                f"{item['name']}: cost {item['delivery_cost_rub']}, expected {cost}",
            )
            expect(Decimal(item["weight_kg"]) == Decimal(sent["weight_kg"]), f"{item['name']}: weight")
        total += len(items)
    return took, total


async def statuses_registered(burst: Burst) -> None:
    gate = asyncio.Semaphore(16)

    async def one(client: httpx.AsyncClient, status_id: str, cookie: str) -> None:
        async with gate:
            response = await client.get(
                f"/packages/status/{status_id}/", headers={"Cookie": f"session_id={cookie}"}
            )
        expect(response.status_code == 200, f"status {status_id}: {response.status_code}")
        expect(response.json()["state"] == "registered", f"status {status_id}: {response.json()}")

    async with httpx.AsyncClient(base_url=ENDPOINT["url"], timeout=30) as client:
        await asyncio.gather(*(one(client, sid, cookie) for sid, (cookie, _) in burst.accepted.items()))


# --- the check ---


@dataclass
class Report:
    figures: dict[str, str] = field(default_factory=dict)

    def note(self, key: str, value: str) -> None:
        self.figures[key] = value
        print(f"  {key}: {value}", flush=True)


class Check:
    def __init__(self, project: Project, report: Report) -> None:
        self.project = project
        self.report = report
        self.cookies: list[str] = []
        self.expected: dict[str, set[int]] = {}
        self.next_index = 0
        self.request_ids: set[str] = set()

    def remember(self, burst: Burst) -> None:
        for cookie, index in burst.accepted.values():
            self.expected[cookie].add(index)
        self.request_ids |= burst.request_ids

    async def burst(
        self,
        name: str,
        size: int,
        fault: Callable[[], None] | None = None,
        *,
        at: float = 0.25,
        gateway_retry: bool = False,
        pace: float | None = None,
    ) -> Burst:
        """A burst of `size` with `fault` run (in a thread) when `at` of it has been accepted; then every
        accepted registration registered once with its exact cost, every refusal a 503 with Retry-After.
        The fault must be over before the burst's last registration is accepted: it happened mid-burst."""
        fault_task: asyncio.Task[None] | None = None
        fault_span: list[float] = []

        def timed_fault() -> None:
            assert fault is not None
            fault_span.append(time.monotonic())
            fault()
            fault_span.append(time.monotonic())

        async def on_accepted(count: int) -> None:
            nonlocal fault_task
            if fault is not None and fault_task is None and count >= size * at:
                fault_task = asyncio.create_task(asyncio.to_thread(timed_fault))

        first, self.next_index = self.next_index, self.next_index + size
        burst = await send_burst(
            self.cookies,
            first,
            size,
            tag=name,
            on_accepted=on_accepted,
            gateway_retry=gateway_retry,
            pace=pace,
        )
        if fault_task is not None:
            await fault_task
        expect(not burst.broken, f"{name}: {len(burst.broken)} broken answers: {burst.broken[:5]}")
        expect(len(burst.accepted) == size, f"{name}: {len(burst.accepted)} of {size} accepted")
        self.remember(burst)
        took, _ = await registered_exactly_once(self.cookies, self.expected, burst.started)
        accepted_for = burst.last_accepted - burst.started
        refused = {code: count for code, count in burst.answers.items() if code != 202}
        fault_note = ""
        if fault is not None:
            expect(
                bool(fault_span) and fault_span[-1] < burst.last_accepted,
                f"{name}: the fault outlasted the burst",
            )
            fault_note = (
                f", fault at {fault_span[0] - burst.started:.1f}-{fault_span[-1] - burst.started:.1f} s"
            )
        self.report.note(
            name,
            f"{size} accepted in {accepted_for:.1f} s ({size / accepted_for:.0f}/s), "
            f"registered in {took:.1f} s "
            f"({size / took:.0f}/s), refused {refused or 0}{fault_note}",
        )
        return burst

    # faults

    def one_container(self, service: str) -> str:
        containers = self.project.containers(service)
        expect(bool(containers), f"no running {service} container")
        return str(containers[0]["Id"])

    def kill(self, service: str) -> Callable[[], None]:
        def fault() -> None:
            run(DOCKER, "kill", "-s", "KILL", self.one_container(service))

        return fault

    def restart(self, service: str) -> Callable[[], None]:
        def fault() -> None:
            self.project.compose("restart", service)

        return fault


NOT_JSON: dict[str, list[str]] = {}


def logs_by_container(project: Project, service: str) -> dict[str, list[dict[str, Any]]]:
    """Each container's JSON log lines; a line that is not a JSON object is noted in NOT_JSON."""
    result: dict[str, list[dict[str, Any]]] = {}
    for container in project.containers(service):
        out = subprocess.run([DOCKER, "logs", container["Id"]], capture_output=True, text=True, check=True)
        records = []
        for line in (out.stdout + out.stderr).splitlines():
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                record = None
            if not isinstance(record, dict):
                NOT_JSON.setdefault(service, []).append(line)
                continue
            records.append(record)
        result[container["Name"].lstrip("/")] = records
    return result


async def check_reads(check: Check) -> None:
    """List, detail, status, types, the operators' console and /metrics answer through the proxy."""
    cookie = check.cookies[0]
    async with httpx.AsyncClient(
        base_url=BASE_URL, timeout=30, headers={"Cookie": f"session_id={cookie}"}
    ) as client:
        types = await client.get("/types/")
        expect(types.status_code == 200 and len(types.json()) == 3, f"/types/: {types.status_code}")
        listed = await client.get("/packages/", params={"size": 5})
        expect(listed.status_code == 200 and listed.json()["items"], f"/packages/: {listed.status_code}")
        package = listed.json()["items"][0]
        detail = await client.get(f"/packages/{package['id']}/")
        expect(detail.status_code == 200 and detail.json() == package, f"detail: {detail.status_code}")
        console = await client.get("/admin/")
        expect(console.status_code == 200 and "text/html" in console.headers["content-type"], "/admin/")
        today = time.strftime("%Y-%m-%d", time.gmtime())
        stats = await client.get(
            "/admin/stats/daily-costs/",
            params={"date": today},
            headers={"X-Admin-Token": check.project.admin_token},
        )
        expect(stats.status_code == 200, f"daily costs: {stats.status_code} {stats.text[:200]}")
        metrics = await client.get("/metrics")
        expect(
            metrics.status_code == 200 and "delivery_registrations_accepted_total" in metrics.text, "/metrics"
        )


async def check_monitoring(project: Project, report: Report) -> None:
    """Prometheus scrapes every api container, and every query of the dashboards runs against it without error
    and returns data (but for series of faults the check does not make)."""
    api_count = len(project.containers("api"))
    url = f"http://127.0.0.1:{PROMETHEUS_PORT}/api/v1/query"
    exprs = [
        target["expr"]
        for dashboard in sorted(DASHBOARDS.glob("*.json"))
        for panel in json.loads(dashboard.read_text())["panels"]
        for target in panel.get("targets", [])
    ]
    async with httpx.AsyncClient(timeout=30) as client:

        async def query(expr: str) -> list[Any]:
            response = await client.get(url, params={"query": expr})
            data = response.json()
            expect(
                data.get("status") == "success",
                f"Prometheus: {expr}: {data.get('error', response.text[:200])}",
            )
            result: list[Any] = data["data"]["result"]
            return result

        deadline = time.monotonic() + 90  # a target's next scrape, and DNS discovery of a replaced container
        while True:
            up = await query('up{job="delivery"} == 1')
            if len(up) == api_count:
                break
            expect(time.monotonic() < deadline, f"Prometheus scrapes {len(up)} api containers of {api_count}")
            await asyncio.sleep(3)
        # A pricing run (beat's comes every COST_RECALC_INTERVAL), started as an operator would, for the
        # pricing panels; the next scrapes bring it in.
        response = await client.post(
            f"{BASE_URL}/admin/jobs/price-packages/", headers={"X-Admin-Token": project.admin_token}
        )
        expect(response.status_code == 202, f"price-packages: {response.status_code} {response.text[:200]}")
        deadline = time.monotonic() + 60
        while True:
            empty = []
            for expr in exprs:
                result = await query(expr.replace("$__rate_interval", RATE_INTERVAL))
                if not result and not any(marker in expr for marker in NO_DATA_EXPECTED):
                    empty.append(expr)
            if not empty:
                break
            expect(time.monotonic() < deadline, f"dashboard queries without data: {empty}")
            await asyncio.sleep(5)
    report.note("monitoring", f"{api_count} api targets up, {len(exprs)} dashboard queries answered")


def rabbitmqctl(project: Project, node: str, *args: str) -> Any:
    (container,) = project.containers(node)
    return json.loads(run(DOCKER, "exec", container["Id"], "rabbitmqctl", "-q", "--formatter", "json", *args))


def queue_leader(project: Project, asked: str) -> str:
    """The node (service name) that leads the registrations quorum queue, as `asked` sees it."""
    queues = rabbitmqctl(project, asked, "list_queues", "name", "type", "leader")
    (queue,) = [q for q in queues if q["name"] == "registrations"]
    expect(queue["type"] == "quorum", f"registrations is a {queue['type']} queue")
    return str(queue["leader"]).split("@", 1)[1]


def cluster_whole(project: Project, within: float = 120.0) -> None:
    deadline = time.monotonic() + within
    while True:
        try:
            status = rabbitmqctl(project, CLUSTER_NODES[0], "cluster_status")
            running = {str(node).split("@", 1)[1] for node in status["running_nodes"]}
            if running == set(CLUSTER_NODES) and not status.get("partitions"):
                return
        except CheckFailed:
            status = {}
        expect(time.monotonic() < deadline, f"the cluster is not whole: {status}")
        time.sleep(2)


async def check_cluster(check: Check, project: Project, report: Report) -> None:
    """The cluster profile: three RabbitMQ nodes with quorum queues and the service on them; the queue
    leader's container killed mid-burst, then a node cut off from the other two mid-burst and joined again."""
    # The single-broker service stops (two cores): the cluster's runs alone on the same database and Redis.
    project.compose("stop", "proxy", "api", "worker", "beat", "rabbitmq", "prometheus", timeout=300)
    started = time.monotonic()
    project.compose("up", "-d", "--no-build", *CLUSTER_APP)
    # The nodes start one after the other (the first alone, then the two that join it): longer than `up`.
    healthy = wait_healthy(
        project, {*CLUSTER_NODES, "api-cluster", "worker-cluster", "proxy-cluster"}, started, within=300
    )
    cluster_whole(project)
    ENDPOINT["url"] = CLUSTER_URL
    leader = queue_leader(project, CLUSTER_NODES[0])

    def kill_leader() -> None:
        run(DOCKER, "kill", "-s", "KILL", project.containers(leader)[0]["Id"])

    await check.burst("cluster-leader-killed", FAULT_BURST, kill_leader, pace=FAULT_PACE)
    project.compose("up", "-d", "--no-build", leader)
    cluster_whole(project)
    others = [node for node in CLUSTER_NODES if node != leader]
    cut = queue_leader(project, others[0])
    (container,) = project.containers(cut)
    network = f"{PROJECT}_default"

    def partition() -> None:
        run(DOCKER, "network", "disconnect", network, container["Id"])
        time.sleep(PARTITION_SECONDS)
        run(DOCKER, "network", "connect", "--alias", cut, network, container["Id"])

    await check.burst("cluster-partitioned", FAULT_BURST, partition, pace=FAULT_PACE, at=0.1)
    cluster_whole(project)
    for node in CLUSTER_NODES:
        queue_leader(project, node)  # every node answers and sees the quorum queue
    ENDPOINT["url"] = BASE_URL
    report.note(
        "cluster",
        f"healthy in {healthy:.0f} s, leader {leader} killed, then {cut} cut off for "
        f"{PARTITION_SECONDS:.0f} s; whole again",
    )
    project.compose("stop", *CLUSTER_APP, *CLUSTER_NODES, timeout=300)


def accepted_total(metrics_text: str) -> float:
    total = 0.0
    for line in metrics_text.splitlines():
        if line.startswith("delivery_registrations_accepted_total "):
            total += float(line.split()[1])
    return total


def image_sizes() -> str:
    names = [
        "delivery:latest",
        "delivery-offline/mariadb:10.11",
        "delivery-offline/redis:7",
        "delivery-offline/rabbitmq:3",
        "delivery-offline/nginx:1",
        "delivery-offline/prometheus:2",
    ]
    sizes = []
    for name in names:
        size = int(run(DOCKER, "image", "inspect", "-f", "{{.Size}}", name).strip())
        sizes.append(f"{name.split('/')[-1].split(':')[0]} {size / 1e6:.0f} MB")
    return ", ".join(sizes)


async def main_check(project: Project, report: Report) -> None:
    check = Check(project, report)
    services = {
        "mariadb",
        "redis",
        "rabbitmq",
        "migrate",
        "api",
        "worker",
        "beat",
        "proxy",
        "bank",
        "prometheus",
    }
    # Up: two api and two worker containers behind the proxy, and Prometheus of the monitoring profile
    # (Grafana only where its image can be pulled: it is not built from Debian's packages).
    up = ["up", "-d", "--no-build", "--scale", "api=2", "--scale", "worker=2", *sorted(services)]
    started = time.monotonic()
    project.compose(*up)
    healthy = wait_healthy(project, services, started)
    report.note("healthy", f"{healthy:.0f} s after up")
    (migrate,) = project.containers("migrate", all_=True)
    expect(migrate["State"]["ExitCode"] == 0, "migrate did not exit 0")
    expect(migrate["RestartCount"] == 0, "migrate ran more than once")
    for service in ("api", "worker", "beat"):
        for container in project.containers(service):
            uid = run(DOCKER, "exec", container["Id"], "id", "-u").strip()
            expect(uid == APP_UID, f"{service} runs as uid {uid}")
            top = [
                line.split()[1]
                for line in run(DOCKER, "top", container["Id"], "-o", "pid,uid").splitlines()[1:]
            ]
            expect(set(top) == {APP_UID}, f"{service}'s processes run as {set(top)}")

    check.cookies = await open_sessions()
    check.expected = {cookie: set() for cookie in check.cookies}

    # The plain burst: the figures, and each api and worker container's share.
    before_api = dict.fromkeys(logs_by_container(project, "api"), 0)
    plain = await check.burst("burst", 1000)
    await statuses_registered(plain)
    api_share = {}
    for name, records in logs_by_container(project, "api").items():
        api_share[name] = sum(
            1 for r in records if str(r.get("message", "")).startswith("POST /packages/ status=202")
        ) - before_api.get(name, 0)
    expect(len(api_share) == 2 and all(count > 0 for count in api_share.values()), f"api shares: {api_share}")
    worker_share = {}
    for name, records in logs_by_container(project, "worker").items():
        ids = {r.get("registration_id") for r in records if r.get("registration_id")}
        worker_share[name] = len(ids)
    expect(
        len(worker_share) == 2 and all(count > 0 for count in worker_share.values()),
        f"worker shares: {worker_share}",
    )
    report.note(
        "shares", f"api {sorted(api_share.values())}, worker {sorted(worker_share.values())} registrations"
    )
    await check_reads(check)
    async with httpx.AsyncClient(base_url=BASE_URL, timeout=30) as client:
        metrics = (await client.get("/metrics")).text
    expect(accepted_total(metrics) >= 1000, f"/metrics counts {accepted_total(metrics)} accepted")
    # The containers share one metrics directory, so each one's /metrics shows the same sums: their shares
    # are the requests counted by the host (container) that answered them.
    by_host = {
        line.split('host="', 1)[1].split('"', 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith("delivery_http_requests_by_host_total{")
    }
    # (The worker and beat containers show 0: they answer no HTTP request.)
    serving = sorted(v for v in by_host.values() if v > 0)
    expect(len(serving) >= 2, f"/metrics by host: {by_host}")
    report.note("requests by api host in /metrics", ", ".join(f"{v:.0f}" for v in serving))

    # Mid-burst faults.
    # Mid-burst faults, each in a burst paced to last about FAULT_BURST / FAULT_PACE seconds. A container
    # killed is not started again by its restart policy (Docker counts `docker kill` as the user's stop): `up`
    # brings the service back to its scale after the burst.
    await check.burst("api-killed", FAULT_BURST, check.kill("api"), gateway_retry=True, pace=FAULT_PACE)
    project.compose(*up)
    await check.burst("worker-killed", FAULT_BURST, check.kill("worker"), pace=FAULT_PACE)
    project.compose(*up)
    for service in ("rabbitmq", "redis", "mariadb"):
        await check.burst(f"{service}-restarted", FAULT_BURST, check.restart(service), pace=FAULT_PACE)

    # The logs: one JSON object per line from api, worker and beat; the bursts' request ids in the api's.
    logged_ids: set[str] = set()
    for service in ("api", "worker", "beat"):
        for records in logs_by_container(project, service).values():
            logged_ids |= {str(r.get("request_id")) for r in records}
    expect(not NOT_JSON, f"log lines that are not JSON objects: { {k: v[:3] for k, v in NOT_JSON.items()} }")
    missing = {rid for rid in plain.request_ids if rid not in logged_ids}
    expect(
        not missing, f"{len(missing)} request ids of the burst not in the logs, e.g. {sorted(missing)[:3]}"
    )

    await check_monitoring(project, report)
    if not os.environ.get("SKIP_CLUSTER"):
        await check_cluster(check, project, report)

    # Down (volumes kept), up: the sessions and the packages are still there.
    project.compose("down", timeout=300)
    started = time.monotonic()
    project.compose(*up)
    again = wait_healthy(project, services, started)
    await registered_exactly_once(check.cookies, check.expected, time.monotonic())
    report.note("restart", f"down, up: healthy in {again:.0f} s, every session and package still there")


def cleanup(project: Project) -> None:
    project.compose("down", "-v", "--remove-orphans", check=False, timeout=300)
    label = f"label=com.docker.compose.project={PROJECT}"
    left = [
        run(DOCKER, "ps", "-aq", "--filter", label).split(),
        run(DOCKER, "network", "ls", "-q", "--filter", label).split(),
        run(DOCKER, "volume", "ls", "-q", "--filter", label).split(),
    ]
    expect(not any(left), f"down -v left containers, networks, volumes: {left}")


def main() -> int:
    report = Report()
    began = time.monotonic()
    stage = time.monotonic()
    try:
        run("bash", str(ROOT / "deploy/check/engine.sh"), capture=False)
    except CheckFailed as failure:
        # Outside CI a machine without an engine (not root, no packages) skips the check; in CI it fails.
        if os.environ.get("CI") == "true":
            print(f"compose-check failed: no Docker engine: {failure}", flush=True)
            return 1
        print(f"compose-check skipped: no Docker engine could start ({failure})", flush=True)
        return 0
    report.note("engine", f"{time.monotonic() - stage:.0f} s")
    if not os.environ.get("SKIP_BUILD"):
        stage = time.monotonic()
        run("bash", str(ROOT / "deploy/offline/build.sh"), capture=False, timeout=3600)
        report.note("images built", f"{time.monotonic() - stage:.0f} s")
    sizes = image_sizes()
    with tempfile.TemporaryDirectory(prefix="compose-check-") as directory:
        project = Project(Path(directory))
        project.compose("down", "-v", "--remove-orphans", check=False)  # a previous run's leftovers
        try:
            stage = time.monotonic()
            asyncio.run(main_check(project, report))
        except CheckFailed as failure:
            print(f"compose-check failed: {failure}", flush=True)
            if not os.environ.get("KEEP"):
                cleanup(project)
            return 1
        cleanup(project)
    figures = "; ".join(f"{key} {value}" for key, value in report.figures.items())
    print(f"compose-check passed: {figures}; images: {sizes}; {time.monotonic() - began:.0f} s in all")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("DOCKER_HOST", "unix:///run/delivery-docker/docker.sock")
    sys.exit(main())

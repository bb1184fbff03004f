"""`make bench`: the service on the real stack (MariaDB, Redis, RabbitMQ on this machine), measured.

Everything it makes is its own and removed at the end, also on failure: the database `bench_delivery`,
Redis database 14, the RabbitMQ vhost `delivery-bench`, the processes it starts and their work folder
(kept, and its path printed, when a run fails or with `--keep-logs`).

Phases: seed; the read path under wrk; the daily totals; the ceiling (a bare endpoint served the same way);
the write path with each worker setting; a cold rate cache under 64 concurrent jobs. Results go to
`bench/results/latest.json` and `latest.md` (with `--quick`, a smoke run: to the temp folder instead).
"""

import argparse
import asyncio
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from types import FrameType
from typing import Any, TypeVar

import httpx
import redis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from tests.fakebank import FakeBank

from bench import load, report
from bench.procs import RssSampler, Service, cpu_cores, cpu_snapshot, free_port, service_env
from bench.seed import COST_DAY, FULL, HEAVY_SESSION_ID, QUICK, SeedPlan, SeedResult, seed, session_token
from delivery.rates import parse_daily
from delivery.registration import status_key

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
#: Where `--quick` writes, so that a smoke run never replaces the figures of a full one.
QUICK_RESULTS = Path(tempfile.gettempdir()) / "delivery-bench-quick"
BIN = Path(sys.executable).parent

DATABASE = "bench_delivery"
SERVER_URL = "mysql+asyncmy://root@127.0.0.1:3306"
DATABASE_URL = f"{SERVER_URL}/{DATABASE}"
REDIS_URL = "redis://127.0.0.1:6379/14"
VHOST = "delivery-bench"
BROKER_URL = f"amqp://guest:guest@127.0.0.1:5672/{VHOST}"
ADMIN_TOKEN = "bench-admin-token"
QUEUES = ("registrations", "pricing")
#: Where Celery's Redis result backend keeps a task's outcome; a registration's task id is its status id.
RESULT_KEY = "celery-task-meta-{}"
WORKER_COMMAND = ("celery", "-A", "delivery.worker", "worker", "-Q", ",".join(QUEUES), "--loglevel", "INFO")

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Profile:
    name: str
    seed: SeedPlan
    warmup_s: float
    duration_s: float
    connections: int
    daily_warmup_s: float
    daily_duration_s: float
    registrations: int
    write_concurrency: int
    stall_s: float


PROFILES = {
    "full": Profile("full", FULL, 5, 20, 16, 2, 10, 10_000, 32, 60),
    "quick": Profile("quick", QUICK, 2, 5, 16, 1, 3, 1_000, 32, 30),
}


@dataclass(frozen=True, slots=True)
class WorkerConfig:
    name: str
    args: tuple[str, ...]
    note: str
    #: A smaller run (this many registrations), for a setting expected to be slow or to fail.
    probe: int | None = None


PHASES = ("read", "daily", "ceilings", "write", "paced", "cold")
#: The paced run: registrations a second, for how long, over how many connections (an open model).
PACED_RATE = 500
PACED_SECONDS = 20
PACED_CONNECTIONS = 64

#: In the order they run; after `default`, a setting that would not fit in the time budget is skipped.
WORKER_CONFIGS = (
    WorkerConfig("default", (), "prefork pool, concurrency = CPU count (2): the Procfile's command as it is"),
    WorkerConfig(
        "threads-c4",
        ("--pool", "threads", "-c", "4"),
        "4 threads sharing the process's one event loop (delivery.worker.runtime)",
        probe=200,
    ),
    WorkerConfig("prefork-c4", ("-c", "4"), "prefork pool, 4 processes"),
    WorkerConfig("solo", ("--pool", "solo"), "one process, one job at a time", probe=1_000),
    WorkerConfig("prefork-c8", ("-c", "8"), "prefork pool, 8 processes"),
)
#: The cold-cache run: 64 registrations at once; 16 pool processes run 16 of them at a time (64 processes
#: take ~25 s to start on two cores and then fight over them).
COLD_JOBS = 64
COLD_CONCURRENCY = 16
COLD_BANK_DELAY = 0.5
#: `make bench` must end within 15 minutes: optional worker settings are skipped when they would not fit.
BUDGET_S = 15 * 60
#: Kept for the cold-cache run, writing the results and the cleanup.
RESERVE_S = 90


class Clock:
    def __init__(self) -> None:
        self.started = time.monotonic()

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def __call__(self, message: str) -> None:
        print(f"[{self.elapsed():7.1f}s] {message}", flush=True)


def run_async(factory: Callable[[AsyncEngine], Coroutine[Any, Any, T]]) -> T:
    """Run `factory(engine)` on a fresh loop with an engine on the bench database."""

    async def main() -> T:
        engine = create_async_engine(DATABASE_URL, pool_size=2)
        try:
            return await factory(engine)
        finally:
            await engine.dispose()

    return asyncio.run(main())


async def _server_sql(*statements: str) -> list[Any]:
    """Statements on the server (no database), each one's first column of the first row (or None)."""
    engine = create_async_engine(SERVER_URL)
    answers = []
    try:
        async with engine.connect() as conn:
            for statement in statements:
                result = await conn.execute(text(statement))
                answers.append(result.scalar() if result.returns_rows else None)
    finally:
        await engine.dispose()
    return answers


def drop_database() -> None:
    exists = f"SELECT COUNT(*) FROM information_schema.schemata WHERE schema_name = '{DATABASE}'"
    if asyncio.run(_server_sql(exists))[0]:
        asyncio.run(_server_sql(f"DROP DATABASE `{DATABASE}`"))


def rabbitmqctl(*args: str, check: bool = True) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], check=check, capture_output=True, timeout=120)


def _tcp_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            return True
    except OSError:
        return False


@dataclass
class Bench:
    profile: Profile
    workdir: Path
    configs: Sequence[WorkerConfig]
    phases: set[str] = field(default_factory=lambda: set(PHASES))
    log: Clock = field(default_factory=Clock)
    bank: FakeBank = field(default_factory=FakeBank)
    sampler: RssSampler = field(default_factory=RssSampler)
    services: list[Service] = field(default_factory=list)
    api: Service | None = None
    api_url: str = ""
    kv: redis.Redis | None = None
    wrk: str = ""
    results: dict[str, Any] = field(default_factory=dict)
    _made: set[str] = field(default_factory=set)

    # --- the stack ---

    def settings_env(self, port: int | None = None) -> dict[str, str]:
        """The environment of the API and the worker: the settings of config.py, nothing inherited."""
        values = {
            "DATABASE_URL": DATABASE_URL,
            "REDIS_URL": REDIS_URL,
            "CELERY_BROKER_URL": BROKER_URL,
            "CBR_DAILY_URL": self.bank.url,
            "ADMIN_TOKEN": ADMIN_TOKEN,
            "HOST": "127.0.0.1",
            # As `make run` does: every process writes its metrics there.
            "PROMETHEUS_MULTIPROC_DIR": str(self.workdir / "metrics"),
        }
        if port is not None:
            values["PORT"] = str(port)
        return service_env(values, BIN)

    def preflight(self) -> None:
        services = (("MariaDB", 3306), ("Redis", 6379), ("RabbitMQ", 5672))
        down = [name for name, port in services if not _tcp_open(port)]
        if down:
            raise RuntimeError(f"not answering on 127.0.0.1: {', '.join(down)}")
        if shutil.which("rabbitmqctl") is None:
            raise RuntimeError("rabbitmqctl not found: the bench makes a vhost of its own")
        self.wrk = load.ensure_wrk()

    def setup(self) -> None:
        (self.workdir / "metrics").mkdir()
        self._made.add("database")
        drop_database()  # left by a run that was killed
        asyncio.run(_server_sql(f"CREATE DATABASE `{DATABASE}`"))
        migrate = subprocess.run(
            [str(BIN / "delivery"), "migrate"],
            env=self.settings_env(),
            cwd=self.workdir,
            capture_output=True,
            text=True,
            check=False,
        )
        if migrate.returncode != 0:
            raise RuntimeError(f"delivery migrate failed:\n{migrate.stdout}\n{migrate.stderr}")
        self._made.add("vhost")
        rabbitmqctl("add_vhost", VHOST, check=False)
        rabbitmqctl("set_permissions", "-p", VHOST, "guest", ".*", ".*", ".*")
        self._made.add("redis")
        self.kv = redis.Redis.from_url(REDIS_URL, decode_responses=True)
        self.kv.flushdb()
        self.bank.start()
        self.sampler.start()

    def cleanup(self) -> None:
        for service in reversed(self.services):
            self._quietly(f"stop {service.name}", service.stop)
        self._quietly("stop the bank", self.bank.stop)
        self.sampler.stop()
        if "redis" in self._made and self.kv is not None:
            self._quietly("flush redis db 14", self.kv.flushdb)
            self.kv.close()
        if "vhost" in self._made:
            self._quietly("delete the vhost", lambda: rabbitmqctl("delete_vhost", VHOST))
        if "database" in self._made:
            self._quietly("drop the database", drop_database)

    def _quietly(self, what: str, action: Callable[[], object]) -> None:
        try:
            action()
        except Exception as exc:
            print(f"cleanup: could not {what}: {exc!r}", file=sys.stderr, flush=True)

    def start(self, name: str, args: Sequence[str], env: Mapping[str, str]) -> Service:
        service = Service(name, args, env=env, cwd=self.workdir).start()
        self.services.append(service)
        return service

    def stop(self, service: Service, timeout: float = 25) -> None:
        service.stop(timeout)
        self.services.remove(service)

    def start_api(self) -> None:
        port = free_port()
        self.api = self.start("api", [str(BIN / "delivery"), "serve"], self.settings_env(port))
        self.api_url = f"http://127.0.0.1:{port}"
        self.api.wait_http(f"{self.api_url}/readyz")
        self.sampler.track("api", self.api.pid)

    def start_worker(self, name: str, args: Sequence[str]) -> Service:
        command = [str(BIN / WORKER_COMMAND[0]), *WORKER_COMMAND[1:], *args]
        worker = self.start(f"worker-{name}", command, self.settings_env())
        worker.wait_log(" ready.")
        return worker

    def fresh_store(self) -> None:
        """An empty Redis db (a cold rate cache) and empty queues: each write run starts the same."""
        assert self.kv is not None
        self.kv.flushdb()
        for queue in QUEUES:
            rabbitmqctl("purge_queue", "-p", VHOST, queue, check=False)
        self.bank.reset()

    def _wrk(
        self,
        url: str,
        headers: Sequence[str],
        roots: Mapping[str, int],
        *,
        warmup: float,
        seconds: float,
        connections: int,
        threads: int,
    ) -> tuple[load.WrkResult, dict[str, float]]:
        """A warm-up, then the measured wrk run, with the CPU each process used during it."""
        load.run_wrk(self.wrk, url, seconds=warmup, connections=connections, threads=threads, headers=headers)
        before = cpu_snapshot(roots)
        result = load.run_wrk(
            self.wrk, url, seconds=seconds, connections=connections, threads=threads, headers=headers
        )
        return result, cpu_cores(before, cpu_snapshot(roots))

    # --- phases ---

    def run(self) -> dict[str, Any]:
        self.log(f"profile {self.profile.name}; work folder {self.workdir}")
        self.preflight()
        self.setup()
        self.log("database migrated, vhost and redis db ready, fake bank up")
        reads = {"read", "daily"} & self.phases
        seeded = self.seed() if reads else None
        self.start_api()
        self.log(f"API up at {self.api_url}")
        self.results["peak_rss_mb"] = {}
        if seeded is not None and "read" in self.phases:
            self.read_path(seeded)
        if seeded is not None and "daily" in self.phases:
            self.daily_totals()
        if "ceilings" in self.phases:
            self.ceilings()
        if "write" in self.phases:
            self.write_path()
        if "paced" in self.phases:
            self.paced()
        if "cold" in self.phases:
            self.cold_cache()
        api = self.sampler.untrack("api")
        self.results["peak_rss_mb"] |= {"api": api.hwm_mb, "api_sampled": api.rss_mb}
        return self.results

    def seed(self) -> SeedResult:
        plan = self.profile.seed
        rate = parse_daily(self.bank.body())
        self.log(f"seeding {plan.all_packages:,} packages, {plan.cost_calculations:,} cost calculations")
        result = run_async(lambda e: seed(e, plan, usd_rub=rate.usd_rub, rate_date=rate.date))
        steps = ", ".join(f"{k} {v:.1f}s" for k, v in result.steps.items())
        self.log(f"seeded in {result.seconds:.1f}s ({steps})")
        self.results["seed"] = {
            "seconds": round(result.seconds, 1),
            "steps_s": {k: round(v, 2) for k, v in result.steps.items()},
            "packages": result.packages,
            "packages_in_read_sessions": plan.packages,
            "sessions": result.sessions,
            "heavy_session_packages": result.heavy_session_packages,
            "cost_calculations": result.cost_calculations,
            "cost_day": str(COST_DAY),
        }
        return result

    def read_path(self, seeded: SeedResult) -> None:
        plan, profile = self.profile.seed, self.profile
        deep = max(1, 2000 * plan.heavy // FULL.heavy)  # page 2000 of 5000 in the full seed
        cases = {
            "first_page": ("/packages/?page=1&size=20", plan.heavy),
            "deep_page": (f"/packages/?page={deep}&size=20", plan.heavy),
            "filtered": ("/packages/?type=1&has_cost=true&page=1&size=20", seeded.heavy_session_priced_type1),
            "detail": (f"/packages/{seeded.newest_heavy_package_id}/", None),
            "types": ("/types/", None),
        }
        cookie = f"session_id={session_token(HEAVY_SESSION_ID)}"
        for name, (path, total) in cases.items():
            response = httpx.get(self.api_url + path, headers={"Cookie": cookie}, timeout=60)
            if response.status_code != 200:
                raise RuntimeError(
                    f"read {name}: {path} answered {response.status_code}: {response.text[:500]}"
                )
            body = response.json()
            if total is not None and (body["total"] != total or len(body["items"]) != 20):
                raise RuntimeError(f"read {name}: total {body['total']}, {len(body['items'])} items")
            if name == "first_page":
                (self.workdir / "first_page.json").write_bytes(response.content)
                self.results["first_page_bytes"] = len(response.content)
        assert self.api is not None
        read: dict[str, Any] = {}
        for name, (path, _) in cases.items():
            result, cores = self._wrk(
                self.api_url + path,
                [f"Cookie: {cookie}"],
                {"api": self.api.pid},
                warmup=profile.warmup_s,
                seconds=profile.duration_s,
                connections=profile.connections,
                threads=2,
            )
            read[name] = result.figures() | {"path": path, "cpu_cores": cores}
            self.log(f"read {name}: {_line(result)}; cpu {_cpu_line(cores)}")
        self.results["read"] = read
        self.results["peak_rss_mb"]["api_after_reads"] = self.sampler.peaks["api"].rss_mb

    def daily_totals(self) -> None:
        url = f"{self.api_url}/admin/stats/daily-costs/?date={COST_DAY}"
        response = httpx.get(url, headers={"X-Admin-Token": ADMIN_TOKEN}, timeout=30)
        response.raise_for_status()
        counted = sum(t["packages"] for t in response.json()["totals"])
        if counted != self.profile.seed.cost_calculations:
            raise RuntimeError(f"daily totals count {counted} packages")
        assert self.api is not None
        result, cores = self._wrk(
            url,
            [f"X-Admin-Token: {ADMIN_TOKEN}"],
            {"api": self.api.pid},
            warmup=self.profile.daily_warmup_s,
            seconds=self.profile.daily_duration_s,
            connections=1,
            threads=1,
        )
        self.results["daily_totals"] = result.figures() | {
            "client": "wrk -t1 -c1 (one request at a time)",
            "date": str(COST_DAY),
            "calculations_that_day": counted,
            "cpu_cores": cores,
        }
        self.log(f"daily totals ({counted:,} calculations that day): {_line(result)}")

    def ceilings(self) -> None:
        """The first page's bytes from a bare endpoint, served by uvicorn with `delivery serve`'s flags."""
        body_path = self.workdir / "first_page.json"
        for kind, key in (("starlette", "ceiling"), ("asgi", "ceiling_bare_asgi")):
            port = free_port()
            env = self.settings_env(port) | {
                "PYTHONPATH": str(ROOT),
                "BENCH_CEILING_BODY": str(body_path),
                "BENCH_CEILING_KIND": kind,
            }
            service = self.start(f"ceiling-{kind}", [sys.executable, "-m", "bench.ceiling"], env)
            url = f"http://127.0.0.1:{port}/packages/"
            try:
                service.wait_http(url)
                if httpx.get(url).content != body_path.read_bytes():
                    raise RuntimeError("the ceiling does not answer the first page's bytes")
                result, cores = self._wrk(
                    url,
                    [],
                    {"ceiling": service.pid},
                    warmup=self.profile.warmup_s,
                    seconds=self.profile.duration_s,
                    connections=self.profile.connections,
                    threads=2,
                )
            finally:
                self.stop(service)
            figures = result.figures() | {"server": kind, "cpu_cores": cores}
            if key == "ceiling":
                self.results["read"]["ceiling"] = figures
            else:
                self.results[key] = figures
            self.log(f"{key} ({kind}): {_line(result)}; cpu {_cpu_line(cores)}")
        ceiling = self.results["read"]["ceiling"]["rps"]
        for figures in self.results["read"].values():
            figures["ratio_to_ceiling"] = round(figures["rps"] / ceiling, 4) if ceiling else None
        bare = self.results["ceiling_bare_asgi"]
        bare["ratio_to_ceiling"] = round(bare["rps"] / ceiling, 4) if ceiling else None

    # --- the write path ---

    def write_path(self) -> None:
        configs: dict[str, Any] = {}
        per_registration: float | None = None
        for config in self.configs:
            total = min(config.probe or self.profile.registrations, self.profile.registrations)
            if per_registration is not None and config.name != "default":
                estimate = 15 + per_registration * total
                remaining = BUDGET_S - RESERVE_S - self.log.elapsed()
                if estimate > remaining:
                    self.log(f"write {config.name}: skipped, ~{estimate:.0f}s would not fit in the budget")
                    configs[config.name] = {
                        "skipped": f"time budget: ~{estimate:.0f}s needed, {remaining:.0f}s left",
                        "worker_args": " ".join(config.args),
                        "note": config.note,
                    }
                    continue
            started = time.monotonic()
            configs[config.name] = self.write_run(config, total)
            if configs[config.name]["works"] and total == self.profile.registrations:
                # The estimate for the next settings: a full run (a probe's pace is not theirs).
                per_registration = (time.monotonic() - started) / total
        full = {
            name: c
            for name, c in configs.items()
            if c.get("works") and c["registrations"] == self.profile.registrations
        }
        best = max(full, key=lambda name: full[name]["registered_per_s"]) if full else None
        reported = "default" if "default" in configs else best
        figures = configs[reported] if reported else {}
        keys = ("accepted_per_s", "registered_per_s", "p50_ms_to_registered", "p99_ms_to_registered")
        self.results["write"] = {k: figures.get(k) for k in keys} | {
            "config": reported,
            "best": best,
            "best_figures": {k: configs[best][k] for k in keys} if best else None,
            "registrations": self.profile.registrations,
            "concurrency": self.profile.write_concurrency,
            "registered_clock": figures.get("registered_clock"),
            "configs": configs,
        }
        self.results["bank_requests"] = {"write_run": figures.get("bank_requests")}
        rss = self.results["peak_rss_mb"]
        rss["worker"] = figures.get("worker_rss_mb")
        rss["worker_by_config"] = {n: c.get("worker_rss_mb") for n, c in configs.items()}
        rss["api_during_writes"] = self.sampler.peaks["api"].rss_mb

    def write_run(self, config: WorkerConfig, total: int) -> dict[str, Any]:
        profile = self.profile
        stall = 15.0 if config.probe and config.probe < 1000 else profile.stall_s
        self.fresh_store()
        worker = self.start_worker(config.name, config.args)
        track = f"worker:{config.name}"
        self.sampler.track(track, worker.pid)
        tokens = asyncio.run(load.open_sessions(self.api_url, profile.write_concurrency))
        watermark = run_async(_max_package_id)
        self.log(f"write {config.name}: {total:,} registrations at concurrency {profile.write_concurrency}")
        assert self.api is not None
        roots = {"api": self.api.pid, "worker": worker.pid}
        before = cpu_snapshot(roots)
        regs = asyncio.run(load.register(self.api_url, tokens, total, profile.write_concurrency))
        accepting = cpu_cores(before, cpu_snapshot(roots))
        waited = self.wait_registered(watermark, len(regs.accepted), stall)
        until_registered = cpu_cores(before, cpu_snapshot(roots))
        peak = self.sampler.untrack(track)
        log_tail = worker.log()[-2000:]
        self.stop(worker, timeout=10 if config.probe else 25)
        figures = self.write_figures(regs, watermark) | {
            "worker_args": " ".join(config.args) or "(none)",
            "note": config.note,
            "probe": config.probe,
            "registrations": total,
            "bank_requests": self.bank.requests,
            "worker_rss_mb": peak.rss_mb,
            "worker_hwm_sum_mb": peak.hwm_mb,
            "worker_processes": peak.processes,
            "cpu_cores_accepting": accepting,
            "cpu_cores_until_registered": until_registered,
            "seconds_waiting_after_last_202": round(waited, 1),
        }
        figures["works"] = total == figures["registered"] == figures["states"].get("registered", 0)
        if not figures["works"]:
            figures["worker_log_tail"] = log_tail
        self.log(
            f"write {config.name}: accepted {figures['accepted_per_s']}/s,"
            f" registered {figures['registered_per_s']}/s,"
            f" to registered p50 {figures['p50_ms_to_registered']} ms"
            f" p99 {figures['p99_ms_to_registered']} ms,"
            f" {figures['registered']}/{total} registered, bank requests {figures['bank_requests']},"
            f" worker rss {peak.rss_mb} MB; cpu {_cpu_line(until_registered)}"
        )
        return figures

    def wait_registered(self, watermark: int, expected: int, stall: float) -> float:
        """Seconds until `expected` packages exist past `watermark`, or until `stall` s without progress."""

        async def wait(engine: AsyncEngine) -> float:
            started = time.monotonic()
            last, last_change = -1, started
            while True:
                count = await _count_packages(engine, watermark)
                now = time.monotonic()
                if count >= expected:
                    return now - started
                if count != last:
                    last, last_change = count, now
                elif now - last_change > stall:
                    self.log(f"  stalled at {count}/{expected} registered for {stall:.0f}s: giving up")
                    return now - started
                await asyncio.sleep(0.25)

        return run_async(wait)

    def write_figures(self, regs: load.Registrations, watermark: int) -> dict[str, Any]:
        assert self.kv is not None
        created = run_async(lambda e: _created_at(e, watermark))
        ids = list(regs.accepted)
        metas = self.kv.mget([RESULT_KEY.format(i) for i in ids]) if ids else []
        statuses = self.kv.mget([status_key(i) for i in ids]) if ids else []
        done: dict[str, float] = {}
        for status_id, meta in zip(ids, metas, strict=True):
            if meta is not None and (stamp := json.loads(meta).get("date_done")):
                done[status_id] = datetime.fromisoformat(stamp).timestamp()
        states = [json.loads(s)["state"] if s is not None else "missing" for s in statuses]
        registered = [i for i in ids if i in created]
        # When a job ended (its status `registered` already written): Celery's date_done when every job has
        # one; else the package row's created_at (taken before its insert and commit, so a few ms early).
        use_done = bool(registered) and all(i in done for i in registered)
        end = done if use_done else created
        to_registered = [(end[i] - regs.accepted[i]) * 1000 for i in registered]
        to_created = [(created[i] - regs.accepted[i]) * 1000 for i in registered]
        first_202 = min(regs.accepted.values(), default=regs.started)
        last_202 = max(regs.accepted.values(), default=regs.finished)
        last_registered = max((end[i] for i in registered), default=first_202)
        return {
            "accepted": len(ids),
            "accepted_per_s": _rate(len(ids), last_202 - regs.started),
            "registered": len(registered),
            "registered_per_s": _rate(len(registered), last_registered - first_202),
            "p50_ms_to_registered": _round(load.percentile(to_registered, 50)),
            "p99_ms_to_registered": _round(load.percentile(to_registered, 99)),
            "max_ms_to_registered": _round(max(to_registered, default=float("nan"))),
            "registered_clock": "celery result date_done" if use_done else "packages.created_at",
            "p50_ms_to_row_created": _round(load.percentile(to_created, 50)),
            "p99_ms_to_row_created": _round(load.percentile(to_created, 99)),
            "post_p50_ms": _round(load.percentile(regs.post_ms, 50)),
            "post_p99_ms": _round(load.percentile(regs.post_ms, 99)),
            "client_errors": dict(regs.errors),
            "states": {state: states.count(state) for state in sorted(set(states))},
        }

    def paced(self) -> None:
        """Registrations at a steady PACED_RATE a second: the latency a user feels, not time spent queued."""
        self.fresh_store()
        worker = self.start_worker("paced", ())
        self.sampler.track("worker:paced", worker.pid)
        try:
            tokens = asyncio.run(load.open_sessions(self.api_url, self.profile.write_concurrency))
            watermark = run_async(_max_package_id)
            self.log(f"paced: {PACED_RATE}/s for {PACED_SECONDS}s")
            assert self.api is not None
            roots = {"api": self.api.pid, "worker": worker.pid}
            before = cpu_snapshot(roots)
            regs = asyncio.run(
                load.register_paced(self.api_url, tokens, PACED_RATE, PACED_SECONDS, PACED_CONNECTIONS)
            )
            self.wait_registered(watermark, len(regs.accepted), 30)
            cpu = cpu_cores(before, cpu_snapshot(roots))
            figures = self.write_figures(regs, watermark)
        finally:
            peak = self.sampler.untrack("worker:paced")
            self.stop(worker)
        self.results["paced"] = {
            "rate_per_s": PACED_RATE,
            "seconds": PACED_SECONDS,
            "connections": PACED_CONNECTIONS,
            "worker_rss_mb": peak.rss_mb,
            "cpu_cores": cpu,
        } | {
            k: figures[k]
            for k in (
                "accepted",
                "accepted_per_s",
                "registered",
                "p50_ms_to_registered",
                "p99_ms_to_registered",
                "max_ms_to_registered",
                "registered_clock",
                "post_p50_ms",
                "post_p99_ms",
                "client_errors",
                "states",
            )
        }
        self.log(
            f"paced: accepted {figures['accepted']} at {figures['accepted_per_s']}/s,"
            f" to registered p50 {figures['p50_ms_to_registered']} ms"
            f" p99 {figures['p99_ms_to_registered']} ms,"
            f" POST p99 {figures['post_p99_ms']} ms; cpu {_cpu_line(cpu)}"
        )

    def cold_cache(self) -> None:
        """64 jobs at once on a cold rate cache, the bank slow to answer: one upstream request."""
        self.fresh_store()
        self.bank.delay = COLD_BANK_DELAY
        worker = self.start_worker("cold", ("-c", str(COLD_CONCURRENCY)))
        self.sampler.track("worker:cold", worker.pid)
        try:
            tokens = asyncio.run(load.open_sessions(self.api_url, 8))
            watermark = run_async(_max_package_id)
            regs = asyncio.run(load.register(self.api_url, tokens, COLD_JOBS, COLD_JOBS))
            seconds = self.wait_registered(watermark, len(regs.accepted), 60)
            priced = run_async(lambda e: _count_packages(e, watermark, priced=True))
        finally:
            peak = self.sampler.untrack("worker:cold")
            self.stop(worker)
            self.bank.delay = 0.0
        self.results["bank_requests"]["cold_64"] = self.bank.requests
        self.results["bank_requests"]["cold_64_detail"] = {
            "jobs": COLD_JOBS,
            "accepted": len(regs.accepted),
            "registered_with_cost": priced,
            "worker_args": f"-c {COLD_CONCURRENCY}",
            "bank_delay_s": COLD_BANK_DELAY,
            "seconds_waiting_after_last_202": round(seconds, 2),
            "worker_rss_mb": peak.rss_mb,
            "worker_processes": peak.processes,
        }
        self.log(
            f"cold cache, {COLD_JOBS} jobs at once, worker -c {COLD_CONCURRENCY},"
            f" bank {COLD_BANK_DELAY}s slow:"
            f" {self.bank.requests} bank request(s), {priced}/{COLD_JOBS} registered with a cost"
        )


async def _max_package_id(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        return int((await conn.execute(text("SELECT COALESCE(MAX(id), 0) FROM packages"))).scalar_one())


async def _count_packages(engine: AsyncEngine, watermark: int, *, priced: bool = False) -> int:
    sql = "SELECT COUNT(*) FROM packages WHERE id > :w" + (" AND has_cost = 1" if priced else "")
    async with engine.connect() as conn:
        return int((await conn.execute(text(sql), {"w": watermark})).scalar_one())


async def _created_at(engine: AsyncEngine, watermark: int) -> dict[str, float]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            text("SELECT registration_id, created_at FROM packages WHERE id > :w"), {"w": watermark}
        )
        return {str(reg): at.replace(tzinfo=UTC).timestamp() for reg, at in rows}


def _rate(count: int, seconds: float) -> float:
    return round(count / seconds, 1) if seconds > 0 else 0.0


def _round(value: float) -> float | None:
    return None if value != value else round(value, 1)


def _line(result: load.WrkResult) -> str:
    return (
        f"{result.rps:,.0f} req/s, p50 {result.p50_ms:.2f} ms, p99 {result.p99_ms:.2f} ms,"
        f" errors {result.errors}"
    )


def _cpu_line(cores: Mapping[str, float]) -> str:
    return " ".join(f"{k}={v}" for k, v in cores.items() if v >= 0.05)


# --- the run ---


def machine() -> dict[str, Any]:
    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
    model = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), "")
    mem_kb = int(Path("/proc/meminfo").read_text().splitlines()[0].split()[1])
    return {
        "nproc": os.cpu_count(),
        "cpu": model,
        "mem_gb": round(mem_kb / 1024 / 1024, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "loadavg_start": list(os.getloadavg()),
    }


def git() -> dict[str, Any]:
    def out(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=False)
        return done.stdout.strip()

    return {"commit": out("rev-parse", "HEAD"), "src_dirty": bool(out("status", "--porcelain", "--", "src"))}


def versions(wrk: str) -> dict[str, str]:
    found: dict[str, str] = {}
    for name in ("fastapi", "starlette", "uvicorn", "uvloop", "httptools", "sqlalchemy", "asyncmy", "celery"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "absent"
    done = subprocess.run([wrk, "--version"], capture_output=True, text=True, check=False)
    found["wrk"] = (done.stdout or done.stderr).split("[")[0].removeprefix("wrk").strip()
    found["mariadb"] = str(asyncio.run(_server_sql("SELECT VERSION()"))[0])
    return found


def write_results(results: Mapping[str, Any], folder: Path) -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, content in (
        ("latest.json", json.dumps(results, indent=2, default=str) + "\n"),
        ("latest.md", report.markdown(results)),
    ):
        path = folder / name
        tmp = path.with_name(name + ".tmp")
        tmp.write_text(content)
        tmp.replace(path)
        paths.append(path)
    return paths[0], paths[1]


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM unwinds like Ctrl-C, so the cleanup runs."""

    def handler(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: Sequence[str] | None = None) -> int:
    names = [c.name for c in WORKER_CONFIGS]
    parser = argparse.ArgumentParser(prog="bench/run.py", description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"a short smoke run (small seed, 5 s loads), its results in {QUICK_RESULTS}",
    )
    parser.add_argument(
        "--configs",
        default=",".join(names),
        help=f"worker settings of the write path, comma-separated, in order (default: {','.join(names)})",
    )
    parser.add_argument("--keep-logs", action="store_true", help="keep the work folder with the logs")
    parser.add_argument(
        "--phases",
        default=",".join(PHASES),
        help=f"what to measure, comma-separated (default: {','.join(PHASES)}); a partial run is a smoke run",
    )
    args = parser.parse_args(argv)
    by_name = {c.name: c for c in WORKER_CONFIGS}
    chosen = [n for n in args.configs.split(",") if n]
    if unknown := [n for n in chosen if n not in by_name]:
        parser.error(f"unknown worker settings: {', '.join(unknown)}")
    profile = PROFILES["quick" if args.quick else "full"]
    workdir = Path(tempfile.mkdtemp(prefix="delivery-bench-"))
    phases = set(args.phases.split(",")) - {""}
    if unknown_phases := phases - set(PHASES):
        parser.error(f"unknown phases: {', '.join(sorted(unknown_phases))}")
    bench = Bench(profile, workdir, [by_name[n] for n in chosen], phases)
    meta: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "profile": profile.name,
        "durations_s": {"warmup": profile.warmup_s, "read": profile.duration_s},
        "machine": machine(),
        "git": git(),
    }
    ok = False
    try:
        with sigterm_as_interrupt():
            results = bench.run()
            meta["versions"] = versions(bench.wrk)
        ok = True
    finally:
        bench.cleanup()
        if ok and not args.keep_logs:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"logs kept in {workdir}", flush=True)
    meta["machine"]["loadavg_end"] = list(os.getloadavg())
    meta["total_seconds"] = round(bench.log.elapsed(), 1)
    partial = args.quick or phases != set(PHASES)
    json_path, md_path = write_results({"meta": meta, **results}, QUICK_RESULTS if partial else RESULTS)
    bench.log(f"done: {json_path}, {md_path}")
    return 0

"""The measurement phases of `make bench`, run on a `bench.stack.BenchStack`: the seed, the read path under
wrk (from the API's default number of processes and from one, each beside its ceiling: a bare endpoint served
the same way), the daily totals, the write path with each worker setting, a paced run, a cold rate cache
under 64 concurrent jobs, the rate limiter's cost (the main read case and the main write run with the limiter
on and off, in turn), and the write path again on a RabbitMQ cluster of three nodes with quorum queues.
Their figures go to `results`; `bench.report` renders them. Every phase but the limiter's off runs has the
limiter on, its limits raised far above the load (`bench.stack.RAISED_LIMITS`).
"""

import asyncio
import json
import os
import sys
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from bench import load
from bench.seed import COST_DAY, FULL, HEAVY_SESSION_ID, QUICK, SeedPlan, SeedResult, seed, session_token
from bench.stack import ADMIN_TOKEN, QUEUES, RAISED_LIMITS, VHOST, BenchStack, run_async
from bench.usage import cpu_cores, cpu_snapshot
from delivery.rates import parse_daily
from delivery.registration import status_key
from realstack.net import free_port

ROOT = Path(__file__).resolve().parent.parent
#: Where Celery's Redis result backend keeps a task's outcome; a registration's task id is its status id.
RESULT_KEY = "celery-task-meta-{}"
#: The read cases' client: the heavy session.
HEAVY_COOKIE = f"session_id={session_token(HEAVY_SESSION_ID)}"
#: The figures of the cluster's write run set beside the single node's.
CLUSTER_COMPARED = (
    "accepted_per_s",
    "registered_per_s",
    "p50_ms_to_registered",
    "p99_ms_to_registered",
    "post_p50_ms",
    "post_p99_ms",
    "cpu_cores_until_registered",
)


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


PHASES = ("read", "daily", "write", "paced", "cold", "limits", "cluster")
#: The paced run: registrations a second, for how long, over how many connections (an open model).
PACED_RATE = 500
PACED_SECONDS = 20
PACED_CONNECTIONS = 64

#: In the order they run; after `default`, a setting that would not fit in the time budget is skipped. The
#: thread pool is not among them: the worker refuses it at start (README, Architecture).
WORKER_CONFIGS = (
    WorkerConfig("default", (), "prefork pool, concurrency = CPU count (2): the Procfile's command as it is"),
    WorkerConfig("prefork-c4", ("-c", "4"), "prefork pool, 4 processes"),
    WorkerConfig("solo", ("--pool", "solo"), "one process, one job at a time", probe=1_000),
    WorkerConfig("prefork-c8", ("-c", "8"), "prefork pool, 8 processes"),
)
#: The cold-cache run: 64 registrations at once; 16 pool processes run 16 of them at a time (64 processes
#: take ~25 s to start on two cores and then fight over them).
COLD_JOBS = 64
COLD_CONCURRENCY = 16
COLD_BANK_DELAY = 0.5
#: The limiter's cost: the read case and the write path's default run, repeated with the limiter on and off in
#: this order (the API restarted at each change). On, off, off, on: a drift of the machine's speed meanwhile
#: weighs on both alike, and the two runs of each give the noise the ratio is judged against.
LIMITER_ORDER = (True, False, False, True)
LIMITER_READ_CASE = "first_page"
#: Compared on and off (higher is better for the rates, lower for the rest).
LIMITER_READ_FIGURES = ("rps", "p50_ms", "p99_ms", "api_cpu_ms_per_request", "redis_cpu_ms_per_request")
LIMITER_WRITE_FIGURES = (
    "accepted_per_s",
    "registered_per_s",
    "post_p50_ms",
    "post_p99_ms",
    "api_cpu_ms_per_accepted",
    "redis_cpu_ms_per_accepted",
)
#: `make bench` must end within 15 minutes, the limiter's comparison (~4 minutes) apart: optional worker
#: settings are skipped when they would not fit.
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


@dataclass
class Phases:
    profile: Profile
    stack: BenchStack
    configs: Sequence[WorkerConfig]
    phases: set[str] = field(default_factory=lambda: set(PHASES))
    log: Clock = field(default_factory=Clock)
    wrk: str = ""
    results: dict[str, Any] = field(default_factory=dict)

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
        stack, phases = self.stack, self.phases
        self.log(f"profile {self.profile.name}; work folder {stack.workdir}")
        stack.preflight()
        self.wrk = load.ensure_wrk()
        stack.setup()
        self.log("database migrated, vhost and redis db ready, fake bank up")
        rss = self.results["peak_rss_mb"] = {}
        seeded = self.seed() if {"read", "daily", "limits"} & phases else None
        stack.start_api()
        self.log(f"API up at {stack.api_url} (processes: delivery serve's default, the CPU count)")
        if seeded is not None and "read" in phases:
            self.read_path(seeded, "read")
        if seeded is not None and "daily" in phases:
            self.daily_totals()
        if seeded is not None and "read" in phases:
            # The same reads and their ceiling from one process, beside the default's.
            rss["api_reads"] = stack.stop_api()
            stack.start_api(processes=1)
            self.log(f"API up at {stack.api_url} with one process")
            self.read_path(seeded, "read_one_process")
            rss["api_reads_one_process"] = stack.stop_api()
            stack.start_api()
        if "write" in phases:
            self.write_path()
        if "paced" in phases:
            self.paced()
        if "cold" in phases:
            self.cold_cache()
        rss["api_writes"] = stack.stop_api()
        if seeded is not None and "limits" in phases:
            self.limiter_cost(seeded)
        if "cluster" in phases:
            self.cluster_write()
        rss["api"] = max(v for k, v in rss.items() if k.startswith("api") and v is not None)
        return self.results

    def seed(self) -> SeedResult:
        plan = self.profile.seed
        rate = parse_daily(self.stack.bank.body())
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

    def read_cases(self, seeded: SeedResult) -> dict[str, tuple[str, int | None]]:
        """Each read case's path, and the `total` its answer must give (None: not a list)."""
        plan = self.profile.seed
        deep = max(1, 2000 * plan.heavy // FULL.heavy)  # page 2000 of 5000 in the full seed
        return {
            "first_page": ("/packages/?page=1&size=20", plan.heavy),
            "deep_page": (f"/packages/?page={deep}&size=20", plan.heavy),
            "filtered": ("/packages/?type=1&has_cost=true&page=1&size=20", seeded.heavy_session_priced_type1),
            "detail": (f"/packages/{seeded.newest_heavy_package_id}/", None),
            "types": ("/types/", None),
        }

    def read_path(self, seeded: SeedResult, key: str) -> None:
        """The read cases, then the ceiling served by as many processes as the API (`results[key]`)."""
        cases = self.read_cases(seeded)
        for name, (path, total) in cases.items():
            response = httpx.get(self.stack.api_url + path, headers={"Cookie": HEAVY_COOKIE}, timeout=60)
            if response.status_code != 200:
                raise RuntimeError(
                    f"read {name}: {path} answered {response.status_code}: {response.text[:500]}"
                )
            body = response.json()
            if total is not None and (body["total"] != total or len(body["items"]) != 20):
                raise RuntimeError(f"read {name}: total {body['total']}, {len(body['items'])} items")
            if name == "first_page":
                (self.stack.workdir / "first_page.json").write_bytes(response.content)
                self.results["first_page_bytes"] = len(response.content)
        read: dict[str, Any] = {}
        for name, (path, _) in cases.items():
            read[name] = self.read_case(name, path)
        read["processes"] = self.stack.api_processes or os.cpu_count()
        self.results[key] = read
        self.ceiling(read, bare=key == "read")

    def read_case(self, name: str, path: str) -> dict[str, Any]:
        """One read case under wrk, in the heavy session, from the API running now."""
        assert self.stack.api is not None
        profile = self.profile
        result, cores = self._wrk(
            self.stack.api_url + path,
            [f"Cookie: {HEAVY_COOKIE}"],
            {"api": self.stack.api.pid},
            warmup=profile.warmup_s,
            seconds=profile.duration_s,
            connections=profile.connections,
            threads=2,
        )
        self.log(f"read {name}: {_line(result)}; cpu {_cpu_line(cores)}")
        return result.figures() | {"path": path, "cpu_cores": cores}

    def daily_totals(self) -> None:
        url = f"{self.stack.api_url}/admin/stats/daily-costs/?date={COST_DAY}"
        response = httpx.get(url, headers={"X-Admin-Token": ADMIN_TOKEN}, timeout=30)
        response.raise_for_status()
        counted = sum(t["packages"] for t in response.json()["totals"])
        if counted != self.profile.seed.cost_calculations:
            raise RuntimeError(f"daily totals count {counted} packages")
        assert self.stack.api is not None
        result, cores = self._wrk(
            url,
            [f"X-Admin-Token: {ADMIN_TOKEN}"],
            {"api": self.stack.api.pid},
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

    def ceiling(self, read: dict[str, Any], *, bare: bool) -> None:
        """The first page's bytes from a bare endpoint, served by uvicorn as `delivery serve` serves the API
        (its flags, its number of processes); with `bare`, from a plain ASGI callable too (the server's share
        without the framework's). The read cases' ratios are to the Starlette route's req/s."""
        body_path = self.stack.workdir / "first_page.json"
        kinds = ("starlette", "asgi") if bare else ("starlette",)
        for kind in kinds:
            port = free_port()
            env = self.stack.settings_env(port) | {
                "PYTHONPATH": str(ROOT),
                "BENCH_CEILING_BODY": str(body_path),
                "BENCH_CEILING_KIND": kind,
            }
            service = self.stack.start(f"ceiling-{kind}", [sys.executable, "-m", "bench.ceiling"], env)
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
                self.stack.stop(service)
            figures = result.figures() | {"server": kind, "cpu_cores": cores}
            if kind == "starlette":
                read["ceiling"] = figures
            else:
                self.results["ceiling_bare_asgi"] = figures
            self.log(
                f"ceiling ({kind}, {read['processes']} processes): {_line(result)}; cpu {_cpu_line(cores)}"
            )
        ceiling = read["ceiling"]["rps"]
        for figures in read.values():
            if isinstance(figures, dict):
                figures["ratio_to_ceiling"] = round(figures["rps"] / ceiling, 4) if ceiling else None
        if bare:
            asgi = self.results["ceiling_bare_asgi"]
            asgi["ratio_to_ceiling"] = round(asgi["rps"] / ceiling, 4) if ceiling else None

    # --- the write path ---

    def write_path(self) -> None:
        configs: dict[str, Any] = {}
        per_registration: float | None = None
        for config in self.configs:
            total = min(config.probe or self.profile.registrations, self.profile.registrations)
            if per_registration is not None and config.name != "default":
                estimate = 15 + per_registration * total
                remaining = BUDGET_S - self.reserve_s() - self.log.elapsed()
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
        rss["api_during_writes"] = self.stack.sampler.peaks["api"].rss_mb

    def write_run(self, config: WorkerConfig, total: int, label: str = "") -> dict[str, Any]:
        name = label or config.name
        profile = self.profile
        stall = 15.0 if config.probe and config.probe < 1000 else profile.stall_s
        self.stack.fresh_store()
        worker = self.stack.start_worker(name, config.args)
        track = f"worker:{name}"
        self.stack.sampler.track(track, worker.pid)
        tokens = asyncio.run(load.open_sessions(self.stack.api_url, profile.write_concurrency))
        watermark = run_async(_max_package_id)
        self.log(f"write {name}: {total:,} registrations at concurrency {profile.write_concurrency}")
        assert self.stack.api is not None
        roots = {"api": self.stack.api.pid, "worker": worker.pid}
        before = cpu_snapshot(roots)
        regs = asyncio.run(load.register(self.stack.api_url, tokens, total, profile.write_concurrency))
        accepting = cpu_cores(before, cpu_snapshot(roots))
        waited = self.wait_registered(watermark, len(regs.accepted), stall)
        until_registered = cpu_cores(before, cpu_snapshot(roots))
        peak = self.stack.sampler.untrack(track)
        log_tail = worker.log()[-2000:]
        self.stack.stop(worker, timeout=10 if config.probe else 25)
        figures = self.write_figures(regs, watermark) | {
            "worker_args": " ".join(config.args) or "(none)",
            "note": config.note,
            "probe": config.probe,
            "registrations": total,
            "bank_requests": self.stack.bank.requests,
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
            f"write {name}: accepted {figures['accepted_per_s']}/s,"
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
        assert self.stack.kv is not None
        created = run_async(lambda e: _created_at(e, watermark))
        ids = list(regs.accepted)
        metas = self.stack.kv.mget([RESULT_KEY.format(i) for i in ids]) if ids else []
        statuses = self.stack.kv.mget([status_key(i) for i in ids]) if ids else []
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
        self.stack.fresh_store()
        worker = self.stack.start_worker("paced", ())
        self.stack.sampler.track("worker:paced", worker.pid)
        try:
            tokens = asyncio.run(load.open_sessions(self.stack.api_url, self.profile.write_concurrency))
            watermark = run_async(_max_package_id)
            self.log(f"paced: {PACED_RATE}/s for {PACED_SECONDS}s")
            assert self.stack.api is not None
            roots = {"api": self.stack.api.pid, "worker": worker.pid}
            before = cpu_snapshot(roots)
            regs = asyncio.run(
                load.register_paced(self.stack.api_url, tokens, PACED_RATE, PACED_SECONDS, PACED_CONNECTIONS)
            )
            self.wait_registered(watermark, len(regs.accepted), 30)
            cpu = cpu_cores(before, cpu_snapshot(roots))
            figures = self.write_figures(regs, watermark)
        finally:
            peak = self.stack.sampler.untrack("worker:paced")
            self.stack.stop(worker)
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
        self.stack.fresh_store()
        self.stack.bank.delay = COLD_BANK_DELAY
        worker = self.stack.start_worker("cold", ("-c", str(COLD_CONCURRENCY)))
        self.stack.sampler.track("worker:cold", worker.pid)
        try:
            tokens = asyncio.run(load.open_sessions(self.stack.api_url, 8))
            watermark = run_async(_max_package_id)
            regs = asyncio.run(load.register(self.stack.api_url, tokens, COLD_JOBS, COLD_JOBS))
            seconds = self.wait_registered(watermark, len(regs.accepted), 60)
            priced = run_async(lambda e: _count_packages(e, watermark, priced=True))
        finally:
            peak = self.stack.sampler.untrack("worker:cold")
            self.stack.stop(worker)
            self.stack.bank.delay = 0.0
        self.results["bank_requests"]["cold_64"] = self.stack.bank.requests
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
            f" {self.stack.bank.requests} bank request(s), {priced}/{COLD_JOBS} registered with a cost"
        )

    def limiter_cost(self, seeded: SeedResult) -> None:
        """The rate limiter's cost: the main read case (wrk) and the write path's default run, the limiter
        on and off in the order of LIMITER_ORDER, the API restarted with `RATE_LIMIT_ENABLED` at each change.
        On, its limits are raised far above the load, so every request is counted (one store round trip) and
        none refused. The figures of each side are the mean of its runs; their ratio on/off is judged against
        the noise, the larger relative spread between two runs of the same side."""
        stack = self.stack
        path, _ = self.read_cases(seeded)[LIMITER_READ_CASE]
        runs: list[dict[str, Any]] = []
        peaks: dict[str, float] = {}
        try:
            for on in LIMITER_ORDER:
                side = _side(on)
                if stack.api is None or stack.rate_limits != on:
                    if stack.api is not None:
                        previous = _side(stack.rate_limits)
                        peaks[previous] = max(peaks.get(previous, 0.0), stack.stop_api())
                    stack.rate_limits = on
                    stack.start_api()
                    self.log(f"limiter {side}: API up at {stack.api_url}")
                read = self.read_case(f"{LIMITER_READ_CASE} (limiter {side})", path)
                cores = read["cpu_cores"]
                read["api_cpu_ms_per_request"] = _per(cores.get("api"), read["rps"])
                read["redis_cpu_ms_per_request"] = _per(cores.get("redis"), read["rps"])
                write = self.write_run(WORKER_CONFIGS[0], self.profile.registrations, label=f"limiter-{side}")
                accepting = write["cpu_cores_accepting"]
                write["api_cpu_ms_per_accepted"] = _per(accepting.get("api"), write["accepted_per_s"])
                write["redis_cpu_ms_per_accepted"] = _per(accepting.get("redis"), write["accepted_per_s"])
                write.pop("worker_log_tail", None)
                runs.append({"limiter": side, "read": read, "write": write})
        finally:
            if stack.api is not None:
                side = _side(stack.rate_limits)
                peaks[side] = max(peaks.get(side, 0.0), stack.stop_api())
            stack.rate_limits = True
        for side, peak in peaks.items():
            self.results["peak_rss_mb"][f"api_limiter_{side}"] = peak
        read_runs = {side: [r["read"] for r in runs if r["limiter"] == side] for side in ("on", "off")}
        write_runs = {side: [r["write"] for r in runs if r["limiter"] == side] for side in ("on", "off")}
        self.results["rate_limiter"] = {
            "order": [_side(on) for on in LIMITER_ORDER],
            "limits_when_on": dict(RAISED_LIMITS),
            "read": {
                "case": LIMITER_READ_CASE,
                "path": path,
                "connections": self.profile.connections,
                "seconds": self.profile.duration_s,
                **_compare(read_runs, LIMITER_READ_FIGURES),
            },
            "write": {
                "config": WORKER_CONFIGS[0].name,
                "registrations": self.profile.registrations,
                "concurrency": self.profile.write_concurrency,
                "works": all(r["write"]["works"] for r in runs),
                "client_errors": _sum_counts(r["write"]["client_errors"] for r in runs),
                **_compare(write_runs, LIMITER_WRITE_FIGURES),
            },
            "runs": runs,
        }
        for what in ("read", "write"):
            ratio = self.results["rate_limiter"][what]["ratio"]
            noise = self.results["rate_limiter"][what]["noise"]
            self.log(
                f"limiter {what}: on/off "
                + ", ".join(f"{k} {ratio[k]} (noise {noise[k]})" for k in ratio if ratio[k] is not None)
            )

    def reserve_s(self) -> float:
        """What the phases after the write path's optional settings need, and writing the results; not the
        limiter's comparison, which BUDGET_S leaves out (its runs are fixed: nothing in it is optional)."""
        needs = {"paced": 60, "cold": 30, "cluster": 60 + 3 * 25 + self.profile.registrations / 100}
        return RESERVE_S + sum(s for phase, s in needs.items() if phase in self.phases)

    def cluster_write(self) -> None:
        """The write path's default run again, the broker a RabbitMQ cluster of three nodes on this machine
        with quorum queues (`BROKER_QUEUE_TYPE=quorum`, the three URLs), beside the single node's figures."""
        self.log("starting a RabbitMQ cluster of three nodes")
        started = time.monotonic()
        cluster = self.stack.start_cluster()
        start_s = time.monotonic() - started
        try:
            self.stack.start_api()
            self.log(f"cluster up in {start_s:.1f}s ({', '.join(n.name for n in cluster.nodes)}); API up")
            figures = self.write_run(WORKER_CONFIGS[0], self.profile.registrations, label="cluster")
            figures["queue_leader"] = cluster.queue_leader(QUEUES[0], VHOST).name
            self.results["peak_rss_mb"]["api_cluster"] = self.stack.stop_api()
        finally:
            self.stack.stop_cluster()
        single = self.results.get("write", {}).get("configs", {}).get("default", {})
        self.results["write_cluster"] = figures | {
            "nodes": len(cluster.nodes),
            "queue_type": "quorum",
            "cluster_start_s": round(start_s, 1),
            # The same run on the machine's node (the write path's `default`), when it ran.
            "single_node": {k: single.get(k) for k in CLUSTER_COMPARED},
        }


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


def _side(on: bool) -> str:
    return "on" if on else "off"


def _per(cores: float | None, rate: float | None) -> float | None:
    """Milliseconds of CPU per request: cores used on average over requests a second."""
    return round(cores / rate * 1000, 4) if cores is not None and rate else None


def _sum_counts(counts: Iterable[Mapping[str, int]]) -> dict[str, int]:
    total: Counter[str] = Counter()
    for count in counts:
        total.update(count)
    return dict(total)


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


def _compare(runs: Mapping[str, Sequence[Mapping[str, Any]]], figures: Sequence[str]) -> dict[str, Any]:
    """Each figure's mean on each side, their ratio on/off, and the noise: the largest relative spread
    ((max - min) / mean) between the runs of one side. The difference is within noise when |ratio - 1| is not
    above it."""
    sides: dict[str, dict[str, Any]] = {}
    ratio: dict[str, float | None] = {}
    noise: dict[str, float | None] = {}
    within: dict[str, bool | None] = {}
    for side, results in runs.items():
        sides[side] = {"runs": len(results)}
        for figure in figures:
            values = [r[figure] for r in results if r.get(figure) is not None]
            sides[side][figure] = round(_mean(values), 4) if values else None
            sides[side][figure + "_runs"] = values
    for figure in figures:
        on, off = sides["on"][figure], sides["off"][figure]
        ratio[figure] = round(on / off, 4) if on is not None and off else None
        spreads = [
            (max(values) - min(values)) / _mean(values)
            for side in sides.values()
            if len(values := side[figure + "_runs"]) > 1 and _mean(values)
        ]
        noise[figure] = round(max(spreads), 4) if spreads else None
        r, n = ratio[figure], noise[figure]
        within[figure] = None if r is None or n is None else abs(r - 1) <= n
    return {"on": sides["on"], "off": sides["off"], "ratio": ratio, "noise": noise, "within_noise": within}


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

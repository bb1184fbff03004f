"""Prometheus metrics of the API and the worker.

With `PROMETHEUS_MULTIPROC_DIR` set (as `make run` and compose do), every process — each API process, the
worker and its pool, beat — writes its samples there, and the API's `/metrics` serves them all: the worker's
metrics reach Prometheus through the API. Without it, `/metrics` shows the API process alone.

A process's files are named by its identity, host name and pid: in compose every container's first process
is pid 1, and the containers share the directory, so a pid alone would have two live processes write one
file. The files of a process that died stay, as prometheus_client intends (its counts still count), except
its live gauges (`delivery_api_processes`): removed when it shuts down, or, when it was killed, by the next
process to start or the next scrape. An API process holds a lock on `<identity>.lock` while it lives; the
kernel lets go of it however the process ends, so a lock that can be taken is a dead process's, whichever
host (container) it ran on.
"""

import fcntl
import os
import socket
import time
from pathlib import Path
from typing import IO

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
    values,
)
from prometheus_client.core import GaugeMetricFamily

#: `_` separates the parts of a metrics file's name: a host name keeps none.
_HOST = socket.gethostname().replace("_", "-")


def identity(pid: int | None = None) -> str:
    """This process's (or `pid`'s, on this host) name in the metrics directory."""
    return f"{_HOST}-{os.getpid() if pid is None else pid}"


def multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


# Before any metric is made: each picks its value class when made, and the library reads the directory from
# the environment. prometheus_client's own default identifies a process by its pid alone.
if multiprocess_dir():
    values.ValueClass = values.MultiProcessValue(identity)  # type: ignore[no-untyped-call]

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

HTTP_REQUESTS = Counter(
    "delivery_http_requests_total", "HTTP requests answered", ["method", "route", "status"]
)
#: This host's (container's) share of the requests: with several API containers writing into one metrics
#: directory, every container's /metrics shows the same sums, and this is what tells them apart.
HOST_REQUESTS = Counter(
    "delivery_http_requests_by_host_total", "HTTP requests answered, by the API host that answered", ["host"]
).labels(_HOST)
HTTP_LATENCY = Histogram(
    "delivery_http_request_duration_seconds",
    "HTTP request latency",
    ["method", "route"],
    buckets=LATENCY_BUCKETS,
)
API_PROCESSES = Gauge("delivery_api_processes", "API processes serving", multiprocess_mode="livesum")
REGISTRATIONS_ACCEPTED = Counter("delivery_registrations_accepted_total", "Registrations answered 202")
REGISTRATIONS_WITHDRAWN = Counter(
    "delivery_registrations_withdrawn_total",
    "Registrations withdrawn by the request that stored them, which was then answered 503",
)
REGISTRATIONS_DONE = Counter(
    "delivery_registrations_total", "Registration jobs finished", ["outcome"]
)  # outcome: registered, registered_without_cost, failed
JOB_RETRIES = Counter("delivery_job_retries_total", "Job retries scheduled", ["task", "reason"])
BANK_FETCHES = Counter("delivery_bank_fetches_total", "Requests to the bank", ["outcome"])
BANK_LATENCY = Histogram(
    "delivery_bank_fetch_duration_seconds", "Bank request latency", buckets=LATENCY_BUCKETS
)
RATE_CACHE = Counter("delivery_rate_cache_lookups_total", "Rate cache lookups", ["result"])
PRICING_RUNS = Counter(
    "delivery_pricing_runs_total", "Pricing job runs finished", ["outcome"]
)  # outcome: ok, no_rate
PACKAGES_PRICED = Counter("delivery_packages_priced_total", "Packages priced by the pricing job")
RATE_LIMITED = Counter("delivery_rate_limited_total", "Requests refused (429) by a rate limit", ["rule"])
RATE_LIMIT_UNCHECKED = Counter(
    "delivery_rate_limit_unchecked_total",
    "Requests let through without a rate limit check: the store did not answer the limiter",
    ["rule"],
)

#: This API process's lock on its identity, held (open) until it ends.
_alive: IO[str] | None = None


def start_api_process() -> None:
    """In each API process as it starts: claim its identity, sweep what dead processes left, count itself."""
    global _alive
    directory = multiprocess_dir()
    if directory and _alive is None:
        _alive = _claim(Path(directory) / f"{identity()}.lock")
        sweep_dead_processes()
    API_PROCESSES.set(1)


#: How long a starting process waits for its lock file: another process's sweep holds it while it removes
#: the gauges of the dead process that had this identity before (pids repeat, pid 1 in every container).
CLAIM_TIMEOUT = 10.0


def _claim(path: Path) -> IO[str]:
    """The lock on `path`, taken as soon as no sweep holds it; a lock held longer is a live process's with
    the same identity, which no two processes may share."""
    alive = path.open("a")
    deadline = time.monotonic() + CLAIM_TIMEOUT
    while True:
        try:
            fcntl.flock(alive, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return alive
        except BlockingIOError:
            if time.monotonic() >= deadline:
                alive.close()
                raise RuntimeError(f"{path.name} is held by a live process of this identity") from None
            time.sleep(0.01)


def end_api_process() -> None:
    """As an API process shuts down (its app's lifespan ends; uvicorn then ends it by its signal, so no
    `atexit` would run): its live gauges go now, rather than at the next sweep."""
    global _alive
    if _alive is not None:
        mark_process_dead(os.getpid())
        _alive.close()
        _alive = None


def sweep_dead_processes() -> None:
    """Remove the live gauges of every process, on any host, whose lock is free: it is dead."""
    directory = multiprocess_dir()
    if not directory:
        return
    for lock in Path(directory).glob("*.lock"):
        with lock.open("a") as probe:
            try:
                fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # alive
            multiprocess.mark_process_dead(lock.stem, directory)  # type: ignore[no-untyped-call]


def mark_process_dead(pid: int) -> None:
    """A process of this host ends: its live gauges go (its counts stay)."""
    if multiprocess_dir():
        multiprocess.mark_process_dead(identity(pid))  # type: ignore[no-untyped-call]


def render(awaiting_cost: int | None, *, dead_letters: tuple[int, float] | None = None) -> tuple[bytes, str]:
    """The exposition text: every process's metrics, and the scrape-time gauges: packages without a cost,
    dead letters (their count, and the age of the oldest)."""
    if multiprocess_dir():
        sweep_dead_processes()
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        body = generate_latest(registry)
    else:
        body = generate_latest(REGISTRY)
    if awaiting_cost is not None:
        extra = CollectorRegistry()
        extra.register(_Gauge(awaiting_cost))
        body += generate_latest(extra)
    if dead_letters is not None:
        extra = CollectorRegistry()
        extra.register(_DeadLetters(*dead_letters))
        body += generate_latest(extra)
    return body, CONTENT_TYPE_LATEST


class _DeadLetters:
    def __init__(self, count: int, oldest_age: float) -> None:
        self.count = count
        self.oldest_age = oldest_age

    def collect(self) -> list[GaugeMetricFamily]:
        return [
            GaugeMetricFamily(
                "delivery_dead_letters", "Registration jobs dead-lettered, not sent back", value=self.count
            ),
            GaugeMetricFamily(
                "delivery_dead_letter_oldest_age_seconds",
                "Seconds since the oldest dead letter was dead-lettered (0: none)",
                value=self.oldest_age,
            ),
        ]


class _Gauge:
    def __init__(self, value: int) -> None:
        self.value = value

    def collect(self) -> list[GaugeMetricFamily]:
        return [
            GaugeMetricFamily("delivery_packages_awaiting_cost", "Packages without a cost", value=self.value)
        ]

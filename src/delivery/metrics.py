"""Prometheus metrics of the API and the worker.

With `PROMETHEUS_MULTIPROC_DIR` set (as `make run` and compose do), every process — the API, the worker and
its pool — writes its samples there, and the API's `/metrics` serves them all: the worker's metrics reach
Prometheus through the API. Without it, `/metrics` shows the API process alone.
"""

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import GaugeMetricFamily

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

HTTP_REQUESTS = Counter(
    "delivery_http_requests_total", "HTTP requests answered", ["method", "route", "status"]
)
HTTP_LATENCY = Histogram(
    "delivery_http_request_duration_seconds",
    "HTTP request latency",
    ["method", "route"],
    buckets=LATENCY_BUCKETS,
)
REGISTRATIONS_ACCEPTED = Counter("delivery_registrations_accepted_total", "Registrations answered 202")
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


def multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


def mark_process_dead(pid: int) -> None:
    if multiprocess_dir():
        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]


def render(awaiting_cost: int | None) -> tuple[bytes, str]:
    """The exposition text: every process's metrics, and the scrape-time gauge of packages without a cost."""
    if multiprocess_dir():
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        body = generate_latest(registry)
    else:
        body = generate_latest(REGISTRY)
    if awaiting_cost is not None:
        extra = CollectorRegistry()
        extra.register(_Gauge(awaiting_cost))
        body += generate_latest(extra)
    return body, CONTENT_TYPE_LATEST


class _Gauge:
    def __init__(self, value: int) -> None:
        self.value = value

    def collect(self) -> list[GaugeMetricFamily]:
        return [
            GaugeMetricFamily("delivery_packages_awaiting_cost", "Packages without a cost", value=self.value)
        ]

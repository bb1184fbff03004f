"""Confirms that come late: a proxy between the API and RabbitMQ holds the broker's frames back 3-8 s for a
while, on open connections, while the broker has every job. Registrations without an Idempotency-Key, each
503 retried once, as a client would: every 202 is one package, and a registration answered 503 has none.
"""

import asyncio
import os
import random
import signal
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import httpx
import pytest

from realstack.delayproxy import DelayProxy
from tests.chaos.burst import CONCURRENCY, RETRY_PAUSE, SETTLE_LIMIT, SIZE, body, open_sessions
from tests.helpers import Maker, packages_by_registration, wait_until
from tests.stack import ApiProcess, Stack, WorkerProcess

#: How long the proxy holds frames back, off and on, and the span of each hold.
HOLDING_FOR = 25.0
HOLD = (3.0, 8.0)
PAUSE = (0.5, 2.0)
#: The worker is stopped (SIGSTOP) during the first hold, so that late jobs are not taken before their
#: requests give up: those are withdrawn, not merely answered 202 late.
WORKER_STOPPED_FOR = 8.0


@pytest.fixture
def proxy(stack: Stack) -> Iterator[DelayProxy]:
    broker_url = str(stack.settings.CELERY_BROKER_URL)
    result = DelayProxy(urlsplit(broker_url).port or 5672).start()
    yield result
    result.stop()


@pytest.fixture
def api(stack: Stack, proxy: DelayProxy) -> Iterator[ApiProcess]:
    """The API publishing through the proxy (the worker talks to RabbitMQ directly)."""
    process = ApiProcess(stack, CELERY_BROKER_URL=proxy.url(str(stack.settings.CELERY_BROKER_URL))).start()
    yield process
    process.stop()


@dataclass
class Attempts:
    """Per parcel (its index): the answers of its first request and of its one retry."""

    answers: dict[int, list[int]] = field(default_factory=dict)
    #: The registration ids answered 202, with the parcel's index.
    accepted: dict[str, int] = field(default_factory=dict)
    broken: list[str] = field(default_factory=list)

    def count(self) -> Counter[int]:
        return Counter(code for codes in self.answers.values() for code in codes)


async def send_without_keys(base_url: str, cookies: list[str]) -> Attempts:
    attempts = Attempts()
    indexes = iter(range(SIZE))
    limits = httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY)

    async def register(client: httpx.AsyncClient, index: int) -> None:
        headers = {"Cookie": f"session_id={cookies[index % len(cookies)]}"}
        codes = attempts.answers.setdefault(index, [])
        for _ in range(2):
            try:
                response = await client.post("/packages/", json=body(index), headers=headers)
            except httpx.TransportError as exc:
                attempts.broken.append(f"registration {index}: {exc!r}")
                return
            codes.append(response.status_code)
            if response.status_code == 202:
                attempts.accepted[response.json()["status_id"]] = index
                return
            if response.status_code != 503 or int(response.headers.get("Retry-After", "0")) <= 0:
                attempts.broken.append(f"registration {index}: {response.status_code} {response.text[:300]}")
                return
            await asyncio.sleep(RETRY_PAUSE)

    async def connection(client: httpx.AsyncClient) -> None:
        for index in indexes:
            await register(client, index)

    async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=60) as client:
        await asyncio.gather(*(connection(client) for _ in range(CONCURRENCY)))
    return attempts


async def hold_frames(proxy: DelayProxy, worker: WorkerProcess) -> int:
    """Hold the broker's frames back, off and on, for HOLDING_FOR seconds; the number of holds."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    holds = 0
    group = os.getpgid(worker.pid)
    os.killpg(group, signal.SIGSTOP)
    try:
        while loop.time() - started < HOLDING_FOR:
            proxy.delay = random.uniform(*HOLD)
            holds += 1
            await asyncio.sleep(random.uniform(2.0, 4.0))
            if loop.time() - started > WORKER_STOPPED_FOR:
                os.killpg(group, signal.SIGCONT)
            proxy.delay = 0.0
            await asyncio.sleep(random.uniform(*PAUSE))
    finally:
        proxy.delay = 0.0
        os.killpg(group, signal.SIGCONT)
    return holds


async def test_late_confirms_register_every_202_once_and_no_503(
    stack: Stack, api: ApiProcess, proxy: DelayProxy, worker: WorkerProcess, maker: Maker
) -> None:
    cookies = await open_sessions(api.url)
    started = time.monotonic()
    holding = asyncio.create_task(hold_frames(proxy, worker))
    attempts = await send_without_keys(api.url, cookies)
    holds = await holding
    sent_for = time.monotonic() - started
    assert not attempts.broken, attempts.broken[:10]
    answers = attempts.count()
    assert answers[503] > 0, "the burst never met a late confirm"

    accepted = set(attempts.accepted)

    async def all_rows() -> bool:
        return accepted <= {str(r) for r in await packages_by_registration(maker)}

    await wait_until(all_rows, SETTLE_LIMIT, "every 202 has its package")
    # Jobs withdrawn after their 503 are still in the queue or on their way: let the worker take them all.
    await asyncio.sleep(10)
    rows = await packages_by_registration(maker)
    assert {str(r) for r in rows} == accepted, "a package for a registration answered 503"
    assert all(len(group) == 1 for group in rows.values())
    by_parcel = Counter(group[0].name for group in rows.values())
    for index, codes in attempts.answers.items():
        assert by_parcel[body(index)["name"]] == codes.count(202), (index, codes)

    async with httpx.AsyncClient(base_url=api.url) as client:
        exposition = (await client.get("/metrics")).text
    withdrawn = sum(
        float(line.split()[-1])
        for line in exposition.splitlines()
        if line.startswith("delivery_registrations_withdrawn_total")
    )
    print(
        f"\nchaos late confirms: holds={holds} sent_in_s={sent_for:.1f} answers={dict(answers)} "
        f"packages={len(rows)} distinct_202={len(accepted)} withdrawn={withdrawn:.0f} "
        f"both_refused={sum(1 for codes in attempts.answers.values() if codes == [503, 503])}"
    )

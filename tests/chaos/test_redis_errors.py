"""Bursts of 1,000 registrations while Redis is up but refuses: out of memory, unable to persist, a restart
reading a large AOF back. The API and the worker use a redis-server of the test's own (the machine's Redis
is left alone), with the machine's MariaDB and RabbitMQ.

After each burst, as in `test_faults`: the API answered only 202 or 503 with Retry-After (no 500, no
unhandled error in its log), every accepted registration is registered exactly once with its exact cost,
and registration flowed again once Redis recovered (the burst's last 800 were accepted after it).
"""

import asyncio
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
from pydantic import AnyUrl

from delivery.broker import PUBLISH_TIMEOUT
from realstack.redis_server import RedisServer
from tests.chaos.burst import Burst, open_sessions, registered_exactly_once
from tests.chaos.test_faults import PROBE, SETTLED_WITHIN, burst_with_fault, report
from tests.helpers import Maker
from tests.stack import ApiProcess, Stack, WorkerProcess

#: How long Redis refuses writes in the memory and persistence bursts.
REFUSING_FOR = 3.0
#: The AOF read back on restart: this many keys of 512 bytes written as commands (about 32 MB), each read
#: this much slower so that the restart lasts seconds on any machine (a fast one reads it in a fraction).
AOF_KEYS = 60_000
KEY_LOAD_DELAY_US = 10


@contextmanager
def serving(stack: Stack, server: RedisServer) -> Iterator[tuple[ApiProcess, WorkerProcess]]:
    """The API and one worker, as `make run` starts them, on `server` for their store and results."""
    own = Stack(
        name="real",
        settings=stack.settings.model_copy(update={"REDIS_URL": AnyUrl(server.url)}),
        workdir=stack.workdir,
    )
    api = ApiProcess(own).start()
    try:
        worker = WorkerProcess(own).start()
        try:
            yield api, worker
        finally:
            worker.stop()
    finally:
        api.stop()


async def burst_while_refusing(api: ApiProcess, begin: Callable[[], None], end: Callable[[], None]) -> Burst:
    """A burst during which Redis starts refusing (after 200 accepted) and recovers; while it refuses, a
    registration from a session the API has not seen is answered 503 with Retry-After."""
    (probe_cookie,) = await open_sessions(api.url, 1)
    probed: list[httpx.Response] = []

    def fault() -> None:
        begin()
        try:
            probed.append(
                httpx.post(
                    f"{api.url}/packages/",
                    json=PROBE,
                    cookies={"session_id": probe_cookie},
                    timeout=PUBLISH_TIMEOUT + 10,
                )
            )
        finally:
            end()

    burst = await burst_with_fault(api, fault)
    (probe,) = probed
    assert probe.status_code == 503, probe.text
    assert int(probe.headers["Retry-After"]) > 0
    assert burst.refused > 0, "the burst never met the refusing Redis"
    return burst


async def _registered(fault: str, burst: Burst, api: ApiProcess, worker: WorkerProcess, maker: Maker) -> None:
    took = await registered_exactly_once(burst, api, maker, priced=True)
    log = worker.log()
    retried = log.count("registration batch will retry")
    assert "Traceback" not in log and "raised unexpected" not in log, log[-4000:]
    report(fault, burst, batches_retried=retried, settled_after_s=f"{took:.1f}")
    # The batches that failed while Redis refused are tried again as soon as it takes writes again.
    assert took < SETTLED_WITHIN, took


async def test_burst_while_maxmemory_is_tiny(stack: Stack, maker: Maker, tmp_path: Path) -> None:
    """`maxmemory` far below what Redis holds, `noeviction`: every write is refused with OOM for a while."""
    server = RedisServer(tmp_path).start()
    try:
        with serving(stack, server) as (api, worker):

            def refusing() -> None:
                server.out_of_memory()
                time.sleep(REFUSING_FOR)

            burst = await burst_while_refusing(api, refusing, server.memory_back)
            await _registered("redis maxmemory tiny (OOM)", burst, api, worker, maker)
    finally:
        server.stop()


async def test_burst_while_persistence_fails(stack: Stack, maker: Maker, tmp_path: Path) -> None:
    """A save fails (its folder gone) with `stop-writes-on-bgsave-error`: every write is refused with MISCONF
    until a save succeeds again."""
    server = RedisServer(tmp_path).start()
    try:
        with serving(stack, server) as (api, worker):

            def refusing() -> None:
                server.persistence_failing()
                time.sleep(REFUSING_FOR)

            burst = await burst_while_refusing(api, refusing, server.persistence_back)
            await _registered("redis persistence failing (MISCONF)", burst, api, worker, maker)
    finally:
        server.stop()


async def test_burst_across_a_restart_reading_a_large_aof(stack: Stack, maker: Maker, tmp_path: Path) -> None:
    """Redis shut down cleanly and started again: until its AOF is read back, every command is answered
    LOADING. What it held (the burst's statuses and keys) is there again afterwards."""
    server = RedisServer(tmp_path, appendonly=True).start("--aof-use-rdb-preamble", "no")
    try:
        await asyncio.to_thread(server.ballast, AOF_KEYS)
        loaded_after: list[float] = []
        with serving(stack, server) as (api, worker):

            def restart() -> None:
                server.restart_loading(KEY_LOAD_DELAY_US)
                assert server.loading()

            def loaded() -> None:
                loaded_after.append(server.wait_loaded())

            burst = await burst_while_refusing(api, restart, loaded)
            await _registered("redis restart reading its AOF (LOADING)", burst, api, worker, maker)
        aof = sum(f.stat().st_size for f in server.dir.rglob("*.aof*"))
        print(f"AOF {aof / 2**20:.0f} MiB, read back {loaded_after[0]:.1f}s after the probe's 503")
    finally:
        server.stop()

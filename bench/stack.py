"""The stack `make bench` measures, and its life: on this machine's MariaDB, Redis and RabbitMQ (or a RabbitMQ
cluster of three nodes started for the purpose), the fake bank, and the service's processes started as the
Procfile starts them. Built on `realstack`, as the tests' stacks are.

Everything it makes is its own and removed by `cleanup`, also on failure: the database `bench_delivery`,
Redis database 14, the RabbitMQ vhost `delivery-bench` (on the machine's node and on the cluster), the
processes it started.
"""

import asyncio
import shutil
import subprocess
import sys
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import redis
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from bench.usage import RssSampler
from realstack import machine
from realstack.cluster import Cluster
from realstack.net import free_port
from realstack.processes import Service, service_env
from realstack.resources import add_vhost, delete_vhost, drop_database, purge_queue, recreate_database
from tests.fakebank import FakeBank

BIN = Path(sys.executable).parent
DATABASE = "bench_delivery"
SERVER_URL = "mysql+asyncmy://root@127.0.0.1:3306"
DATABASE_URL = f"{SERVER_URL}/{DATABASE}"
REDIS_URL = "redis://127.0.0.1:6379/14"
VHOST = "delivery-bench"
BROKER_URL = f"amqp://guest:guest@127.0.0.1:5672/{VHOST}"
ADMIN_TOKEN = "bench-admin-token"
QUEUES = ("registrations", "pricing")
WORKER_COMMAND = ("celery", "-A", "delivery.worker", "worker", "-Q", ",".join(QUEUES), "--loglevel", "INFO")

T = TypeVar("T")


def run_async(factory: Callable[[AsyncEngine], Coroutine[Any, Any, T]]) -> T:
    """Run `factory(engine)` on a fresh loop with an engine on the bench database."""

    async def main() -> T:
        engine = create_async_engine(DATABASE_URL, pool_size=2)
        try:
            return await factory(engine)
        finally:
            await engine.dispose()

    return asyncio.run(main())


#: Every rate limit, far above a run's requests: a second of wrk on one session is thousands of reads.
RAISED_LIMITS = {
    f"RATE_LIMIT_{rule}": "1000000000/minute"
    for rule in ("REGISTRATIONS", "READS", "SESSIONS", "OPERATOR_KEYS")
}


@dataclass
class BenchStack:
    workdir: Path
    bank: FakeBank = field(default_factory=FakeBank)
    sampler: RssSampler = field(default_factory=RssSampler)
    services: list[Service] = field(default_factory=list)
    api: Service | None = None
    api_url: str = ""
    #: The API's processes (`WEB_CONCURRENCY`); None: `delivery serve`'s default, the CPU count.
    api_processes: int | None = None
    kv: redis.Redis | None = None
    #: Whether the rate limits are on (their cost is what the load then measures): raised far above the
    #: load's requests from one address and few sessions, so that every request is counted and none refused.
    rate_limits: bool = True
    #: The RabbitMQ cluster the service uses instead of the machine's node, while one is started.
    cluster: Cluster | None = None
    _made: set[str] = field(default_factory=set)

    # --- what the processes are given ---

    @property
    def broker_url(self) -> str:
        return self.cluster.urls(VHOST) if self.cluster is not None else BROKER_URL

    def settings_env(self, port: int | None = None) -> dict[str, str]:
        """The environment of the API and the worker: the settings of config.py, nothing inherited."""
        values = {
            "DATABASE_URL": DATABASE_URL,
            "REDIS_URL": REDIS_URL,
            "CELERY_BROKER_URL": self.broker_url,
            "CBR_DAILY_URL": self.bank.url,
            "ADMIN_TOKEN": ADMIN_TOKEN,
            "HOST": "127.0.0.1",
            # As `make run` does: every process writes its metrics there.
            "PROMETHEUS_MULTIPROC_DIR": str(self.workdir / "metrics"),
            "RATE_LIMIT_ENABLED": "true" if self.rate_limits else "false",
            **RAISED_LIMITS,
        }
        if self.cluster is not None:
            values["BROKER_QUEUE_TYPE"] = "quorum"
        if port is not None:
            values["PORT"] = str(port)
        if self.api_processes is not None:
            values["WEB_CONCURRENCY"] = str(self.api_processes)
        return service_env(values, BIN)

    # --- the stack's life ---

    def preflight(self) -> None:
        if down := machine.down():
            raise RuntimeError(f"not answering on 127.0.0.1: {', '.join(down)}")
        if shutil.which("rabbitmqctl") is None:
            raise RuntimeError("rabbitmqctl not found: the bench makes a vhost of its own")

    def setup(self) -> None:
        (self.workdir / "metrics").mkdir()
        self._made.add("database")
        recreate_database(SERVER_URL, DATABASE)
        self.run_command("migrate", [str(BIN / "delivery"), "migrate"])
        self._made.add("vhost")
        if not add_vhost(VHOST):
            raise RuntimeError(f"could not make the vhost {VHOST}")
        self._made.add("redis")
        self.kv = redis.Redis.from_url(REDIS_URL, decode_responses=True)
        self.kv.flushdb()
        self._made.add("bank")
        self.bank.start()
        self.sampler.start()

    def run_command(self, what: str, args: Sequence[str]) -> None:
        done = subprocess.run(
            args, env=self.settings_env(), cwd=self.workdir, capture_output=True, text=True, check=False
        )
        if done.returncode != 0:
            raise RuntimeError(f"{what} failed:\n{done.stdout}\n{done.stderr}")

    def cleanup(self) -> None:
        for service in reversed(self.services):
            self._quietly(f"stop {service.name}", service.stop)
        self._quietly("stop the RabbitMQ cluster", self.stop_cluster)
        if "bank" in self._made:  # a server never started would wait forever for its loop to stop
            self._quietly("stop the bank", self.bank.stop)
        self.sampler.stop()
        if "redis" in self._made and self.kv is not None:
            self._quietly("flush redis db 14", self.kv.flushdb)
            self.kv.close()
        if "vhost" in self._made:
            self._quietly("delete the vhost", lambda: delete_vhost(VHOST))
        if "database" in self._made:
            self._quietly("drop the database", lambda: drop_database(SERVER_URL, DATABASE))

    @staticmethod
    def _quietly(what: str, action: Callable[[], object]) -> None:
        try:
            action()
        except Exception as exc:
            print(f"cleanup: could not {what}: {exc!r}", file=sys.stderr, flush=True)

    # --- the service's processes ---

    def start(self, name: str, args: Sequence[str], env: Mapping[str, str]) -> Service:
        service = Service(name, args, env=env, cwd=self.workdir).start()
        self.services.append(service)
        return service

    def stop(self, service: Service, timeout: float = 25) -> None:
        service.stop(timeout)
        self.services.remove(service)

    def start_api(self, processes: int | None = None) -> None:
        """`delivery serve` with `processes` processes (None: its default), tracked for its memory."""
        self.api_processes = processes
        port = free_port()
        self.api = self.start("api", [str(BIN / "delivery"), "serve"], self.settings_env(port))
        self.api_url = f"http://127.0.0.1:{port}"
        self.api.wait_http(f"{self.api_url}/readyz")
        self.sampler.track("api", self.api.pid)

    def stop_api(self) -> float:
        """Stop the API; its peak RSS (MB, sampled over all its processes)."""
        assert self.api is not None
        peak = self.sampler.untrack("api")
        self.stop(self.api)
        self.api = None
        return peak.rss_mb

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
            if self.cluster is not None:
                self.cluster.nodes[0].ctl("purge_queue", "-p", VHOST, queue, check=False)
            else:
                purge_queue(VHOST, queue)
        self.bank.reset()

    # --- a RabbitMQ cluster instead of the machine's node ---

    def start_cluster(self) -> Cluster:
        """Three RabbitMQ nodes joined into a cluster, the bench's vhost on it; the processes started from
        now on are given its URLs and `BROKER_QUEUE_TYPE=quorum`."""
        cluster = Cluster("delivery-bench")
        try:
            cluster.start()
            first = cluster.nodes[0]
            first.ctl("add_vhost", VHOST)
            first.ctl("set_permissions", "-p", VHOST, "guest", ".*", ".*", ".*")
        except BaseException:
            cluster.close()
            raise
        self.cluster = cluster
        return cluster

    def stop_cluster(self) -> None:
        """Back to the machine's node; the cluster's nodes stopped and their folder removed."""
        if self.cluster is not None:
            cluster, self.cluster = self.cluster, None
            cluster.close()

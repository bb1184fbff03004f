"""The two stacks the tests run on, and real Celery worker processes started on them."""

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import diskcache
import kombu.exceptions
import redis.asyncio as aioredis
from alembic import command
from alembic.config import Config
from pydantic import SecretStr
from sqlalchemy.engine import make_url

from delivery.broker import create_celery
from delivery.config import EMBEDDED_DIR, Settings
from delivery.ratelimit import EMBEDDED_COUNTERS
from realstack.net import free_port, port_open
from realstack.processes import Service
from realstack.resources import add_vhost, recreate_database, run_in_thread, run_sync

ROOT = Path(__file__).resolve().parent.parent
ADMIN_TOKEN = "test-admin-token"
TEST_DATABASE_URL = os.environ.get("TEST_DATABASE_URL", "mysql+asyncmy://root@127.0.0.1:3306/test")
TEST_REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
TEST_BROKER_URL = os.environ.get("TEST_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672//")
#: Short, so the tests of a bank outage finish quickly; the worker's jobs give up on the bank after this.
RATE_RETRY_WINDOW = 3
WORKER_READY_TIMEOUT = 60.0
RAISED_LIMITS = {
    "RATE_LIMIT_REGISTRATIONS": "1000000/minute",
    "RATE_LIMIT_READS": "1000000/minute",
    "RATE_LIMIT_SESSIONS": "1000000/minute",
    "RATE_LIMIT_OPERATOR_KEYS": "1000000/minute",
}

__all__ = ["run_in_thread", "run_sync"]


def _answers(url: str, default_port: int) -> bool:
    parts = urlsplit(url.replace("+asyncmy", ""))
    return port_open(parts.port or default_port, parts.hostname or "127.0.0.1", timeout=2)


def real_stack_down() -> str | None:
    down = [
        name
        for name, url, port in (
            ("MariaDB", TEST_DATABASE_URL, 3306),
            ("Redis", TEST_REDIS_URL, 6379),
            ("RabbitMQ", TEST_BROKER_URL, 5672),
        )
        if not _answers(url, port)
    ]
    return ", ".join(down) or None


def _index(worker_id: str) -> int:
    """Which slot of shared services (database, Redis db, vhost) this test process uses.

    Under xdist each worker has its own; `TEST_SLOT` separates test runs made side by side.
    """
    xdist = 0 if worker_id == "master" else int(worker_id.removeprefix("gw"))
    return int(os.environ.get("TEST_SLOT", "0")) * 4 + xdist


def common_settings(bank_url: str) -> dict[str, Any]:
    return {
        "CBR_DAILY_URL": bank_url,
        "RATE_RETRY_WINDOW": RATE_RETRY_WINDOW,
        "RATE_CACHE_TTL": 86400,
        "STATUS_TTL": 3600,
        "COST_RECALC_INTERVAL": 3600,
        "SESSION_TTL": 3600,
        "ADMIN_TOKEN": SecretStr(ADMIN_TOKEN),
        "COOKIE_SECURE": False,
        # One API process unless a test asks for more: the suite shares the machine's cores.
        "WEB_CONCURRENCY": 1,
        # Counted as always, but far above what a test sends from its one address and few sessions; the
        # limits' own tests set them low (tests/test_rate_limits.py).
        **RAISED_LIMITS,
    }


def prepare_real(worker_id: str, bank_url: str) -> Settings:
    """A database, a Redis database and a RabbitMQ vhost of this test process's own."""
    index = _index(worker_id)
    base = make_url(TEST_DATABASE_URL)
    database = f"{base.database}_delivery_{index}"

    recreate_database(base.set(database=None), database)
    redis_parts = urlsplit(TEST_REDIS_URL)
    redis_url = urlunsplit(redis_parts._replace(path=f"/{1 + index % 15}"))
    return Settings(
        DATABASE_URL=base.set(database=database).render_as_string(hide_password=False),
        REDIS_URL=redis_url,
        CELERY_BROKER_URL=_vhost(TEST_BROKER_URL, f"delivery-test-{index}"),
        **common_settings(bank_url),
    )


def _vhost(url: str, vhost: str) -> str:
    """A vhost of our own where rabbitmqctl can make one; the given URL as it is elsewhere."""
    if not add_vhost(vhost):
        return url
    return urlunsplit(urlsplit(url)._replace(path=f"/{vhost}"))


async def clear_store(settings: Settings) -> None:
    """The store, and the rate limits' counters (on Redis, in the same database)."""
    if settings.REDIS_URL is None:
        for directory in (EMBEDDED_DIR / "store", EMBEDDED_COUNTERS):
            cache = diskcache.Cache(str(directory.resolve()))
            cache.clear()
            cache.close()
        return
    client = aioredis.Redis.from_url(str(settings.REDIS_URL))
    await client.flushdb()
    await client.aclose()


def purge_queues(settings: Settings, attempts: int = 5) -> None:
    """Drop the jobs a test left queued (e.g. pricing runs it asked for), so they do not run in the next.

    Tried again on a dropped connection: the first connection after a broker restart (`make chaos`) can be
    reset while the node finishes starting."""
    for attempt in range(1, attempts + 1):
        celery = create_celery(settings)
        try:
            celery.control.purge()
            return
        except (OSError, kombu.exceptions.OperationalError):
            if attempt == attempts:
                raise
            time.sleep(1.0)
        finally:
            celery.close()


class Stack:
    def __init__(self, *, name: str, settings: Settings, workdir: Path) -> None:
        self.name = name
        self.settings = settings
        self.workdir = workdir
        self._worker: WorkerProcess | None = None

    @staticmethod
    def embedded_settings(workdir: Path, bank_url: str) -> Settings:
        return Settings(
            DATABASE_URL=f"sqlite+aiosqlite:///{workdir}/var/test.sqlite3",
            REDIS_URL=None,
            CELERY_BROKER_URL=None,
            **common_settings(bank_url),
        )

    def alembic_config(self, database_url: str | None = None) -> Config:
        config = Config(str(ROOT / "alembic.ini"))
        config.attributes["database_url"] = database_url or self.settings.DATABASE_URL
        config.attributes["configure_logger"] = False
        return config

    def migrate(self) -> None:
        # Alembic's env.py runs its own event loop: off any loop of the caller's.
        run_in_thread(command.upgrade, self.alembic_config(), "head")

    def env(self, **overrides: Any) -> dict[str, str]:
        """The environment of a process of this stack: the settings, nothing inherited that could differ."""
        env = {k: v for k, v in os.environ.items() if k not in Settings.model_fields}
        values = self.settings.model_dump() | overrides
        for key, value in values.items():
            if value is None:
                continue
            if isinstance(value, SecretStr):
                value = value.get_secret_value()
            env[key] = str(value).lower() if isinstance(value, bool) else str(value)
        return env

    def shared_worker(self) -> "WorkerProcess":
        if self._worker is None or not self._worker.alive():
            self._worker = WorkerProcess(self)
            self._worker.start()
        return self._worker

    def stop_shared_worker(self) -> None:
        """For a test whose jobs must go to a worker of its own."""
        if self._worker is not None:
            self._worker.stop()
            self._worker = None

    def close(self) -> None:
        self.stop_shared_worker()


_names = itertools.count()


class WorkerProcess(Service):
    """`celery worker` in a process group of its own, its log in the work folder."""

    def __init__(
        self, stack: Stack, *, concurrency: int = 2, queues: str = "registrations,pricing", **env: Any
    ) -> None:
        self.stack = stack
        name = f"{stack.name}-{os.getpid()}-{next(_names)}"
        args = [
            sys.executable, "-m", "celery", "-A", "delivery.worker", "worker",
            "-Q", queues, "-c", str(concurrency), "-n", f"{name}@%h",
            "--loglevel", "INFO", "--without-gossip", "--without-mingle", "--without-heartbeat",
        ]  # fmt: skip
        super().__init__(f"worker-{name}", args, env=stack.env(**env), cwd=stack.workdir)

    def start(self) -> "WorkerProcess":
        super().start()
        self.wait_log(" ready.", WORKER_READY_TIMEOUT)
        return self

    def pool_pids(self) -> list[int]:
        """The pool processes that run the jobs (children of the main worker process)."""
        assert self.process is not None
        pids: list[int] = []
        # A replacement pool process is the child of whichever thread of the main process forked it.
        for children in Path(f"/proc/{self.process.pid}/task").glob("*/children"):
            try:
                pids += [int(pid) for pid in children.read_text().split()]
            except OSError:
                continue
        return sorted(set(pids))

    def stop(self, timeout: float = 20.0) -> None:
        if not self.alive():
            return
        assert self.process is not None
        # SIGTERM to the main process alone: it stops its pool itself (a warm shutdown).
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


class ApiProcess(Service):
    """`delivery serve`, as `make run` starts it, with JSON logs."""

    def __init__(self, stack: Stack, **env: object) -> None:
        self.port = free_port()
        self.stack = stack
        variables = stack.env(**({"HOST": "127.0.0.1", "PORT": self.port, "LOG_FORMAT": "json"} | env))
        args = [sys.executable, "-m", "delivery.cli", "serve"]
        super().__init__(f"api-{self.port}", args, env=variables, cwd=stack.workdir)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "ApiProcess":
        super().start()
        try:
            self.wait_http(f"{self.url}/healthz")
        except RuntimeError:
            self.kill()
            raise
        return self

    def children(self) -> list[int]:
        """The API's processes under uvicorn's supervisor (WEB_CONCURRENCY > 1), not multiprocessing's
        resource tracker, which is a child too."""
        assert self.process is not None
        pids: set[int] = set()
        for children in Path(f"/proc/{self.process.pid}/task").glob("*/children"):
            pids |= {int(pid) for pid in children.read_text().split()}
        return sorted(pid for pid in pids if b"spawn_main" in _cmdline(pid))

    def json_lines(self) -> list[dict[str, object]]:
        lines = []
        for line in self.log().splitlines():
            if line.startswith("{"):
                lines.append(json.loads(line))
        return lines

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM to uvicorn's supervisor alone: it stops its processes itself."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=timeout)


def delivery(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    """`delivery ARGS...` run as an operator would, against the stack."""
    return subprocess.run(
        [sys.executable, "-m", "delivery.cli", *args],
        env=stack.env(),
        cwd=stack.workdir,
        capture_output=True,
        text=True,
        timeout=120,
    )

"""The two stacks the tests run on, and real Celery worker processes started on them."""

import asyncio
import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import diskcache
import httpx
import kombu.exceptions
import redis.asyncio as aioredis
from alembic import command
from alembic.config import Config
from pydantic import SecretStr
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

from delivery.broker import create_celery
from delivery.config import EMBEDDED_DIR, Settings

ROOT = Path(__file__).resolve().parent.parent
ADMIN_TOKEN = "test-admin-token"
TEST_DATABASE_URL = os.environ.get("TEST_DATABASE_URL", "mysql+asyncmy://root@127.0.0.1:3306/test")
TEST_REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
TEST_BROKER_URL = os.environ.get("TEST_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672//")
#: Short, so the tests of a bank outage finish quickly; the worker's jobs give up on the bank after this.
RATE_RETRY_WINDOW = 3
WORKER_READY_TIMEOUT = 60.0

T = TypeVar("T")


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to completion from sync code, even where an event loop is already running."""
    result: list[T] = []

    def target() -> None:
        result.append(asyncio.run(coro))

    thread = threading.Thread(target=target)
    thread.start()
    thread.join()
    return result[0]


def _tcp_open(url: str, default_port: int) -> bool:
    parts = urlsplit(url.replace("+asyncmy", ""))
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or default_port), timeout=2):
            return True
    except OSError:
        return False


def real_stack_down() -> str | None:
    down = [
        name
        for name, url, port in (
            ("MariaDB", TEST_DATABASE_URL, 3306),
            ("Redis", TEST_REDIS_URL, 6379),
            ("RabbitMQ", TEST_BROKER_URL, 5672),
        )
        if not _tcp_open(url, port)
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
    }


def prepare_real(worker_id: str, bank_url: str) -> Settings:
    """A database, a Redis database and a RabbitMQ vhost of this test process's own."""
    index = _index(worker_id)
    base = make_url(TEST_DATABASE_URL)
    database = f"{base.database}_delivery_{index}"

    async def recreate() -> None:
        engine = create_async_engine(base)
        async with engine.begin() as connection:
            await connection.execute(text(f"DROP DATABASE IF EXISTS `{database}`"))
            await connection.execute(text(f"CREATE DATABASE `{database}`"))
        await engine.dispose()

    run_sync(recreate())
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
    try:
        subprocess.run(
            ["rabbitmqctl", "-q", "add_vhost", vhost], check=False, capture_output=True, timeout=60
        )
        subprocess.run(
            ["rabbitmqctl", "-q", "set_permissions", "-p", vhost, "guest", ".*", ".*", ".*"],
            check=True,
            capture_output=True,
            timeout=60,
        )
    except (OSError, subprocess.SubprocessError):
        return url
    return urlunsplit(urlsplit(url)._replace(path=f"/{vhost}"))


async def clear_store(settings: Settings) -> None:
    if settings.REDIS_URL is None:
        cache = diskcache.Cache(str((EMBEDDED_DIR / "store").resolve()))
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


def run_in_thread(func: Any, *args: Any) -> None:
    """Alembic's env.py runs its own event loop: keep it off any loop of the caller's."""
    errors: list[BaseException] = []

    def target() -> None:
        try:
            func(*args)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=target)
    thread.start()
    thread.join()
    if errors:
        raise errors[0]


_names = itertools.count()


class WorkerProcess:
    """`celery worker` in a process group of its own, its log in the work folder."""

    def __init__(
        self, stack: Stack, *, concurrency: int = 2, queues: str = "registrations,pricing", **env: Any
    ) -> None:
        self.stack = stack
        self.name = f"{stack.name}-{os.getpid()}-{next(_names)}"
        self.log_path = stack.workdir / f"worker-{self.name}.log"
        self.args = [
            sys.executable, "-m", "celery", "-A", "delivery.worker", "worker",
            "-Q", queues, "-c", str(concurrency), "-n", f"{self.name}@%h",
            "--loglevel", "INFO", "--without-gossip", "--without-mingle", "--without-heartbeat",
        ]  # fmt: skip
        self.env = stack.env(**env)
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> "WorkerProcess":
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            self.args, env=self.env, cwd=self.stack.workdir, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        log.close()
        deadline = time.monotonic() + WORKER_READY_TIMEOUT
        while " ready." not in self.log():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"worker {self.name} did not start:\n{self.log()[-4000:]}")
            time.sleep(0.1)
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

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

    def kill(self) -> None:
        """SIGKILL to the whole worker: main process and pool alike."""
        assert self.process is not None
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)

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


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


class ApiProcess:
    """`delivery serve`, as `make run` starts it, with JSON logs."""

    def __init__(self, stack: Stack, **env: object) -> None:
        self.port = _free_port()
        self.log_path = stack.workdir / f"api-{self.port}.log"
        self.env = stack.env(**({"HOST": "127.0.0.1", "PORT": self.port, "LOG_FORMAT": "json"} | env))
        self.stack = stack
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "ApiProcess":
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "delivery.cli", "serve"],
                env=self.env,
                cwd=self.stack.workdir,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return self
            except httpx.TransportError:
                time.sleep(0.1)
        self.process.kill()
        self.process.wait(timeout=30)
        raise RuntimeError(f"API did not start:\n{self.log()}")

    def children(self) -> list[int]:
        """The API's processes under uvicorn's supervisor (WEB_CONCURRENCY > 1), not multiprocessing's
        resource tracker, which is a child too."""
        assert self.process is not None
        pids: set[int] = set()
        for children in Path(f"/proc/{self.process.pid}/task").glob("*/children"):
            pids |= {int(pid) for pid in children.read_text().split()}
        return sorted(pid for pid in pids if b"spawn_main" in _cmdline(pid))

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def json_lines(self) -> list[dict[str, object]]:
        lines = []
        for line in self.log().splitlines():
            if line.startswith("{"):
                lines.append(json.loads(line))
        return lines

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=30)

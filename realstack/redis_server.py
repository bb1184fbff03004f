"""A redis-server of one's own on loopback, and the ways a Redis that is up refuses to serve, made real on it.

Each fault is the server's own behaviour, reached as it is reached in production: `maxmemory` below what
it holds (with `noeviction`), a save that fails (its folder gone, with `stop-writes-on-bgsave-error`), a
failover that leaves it a replica, a replica whose master is gone (`replica-serve-stale-data no`), fewer
replicas than `min-replicas-to-write`, a script that runs past `busy-reply-threshold`, and a restart that
reads its AOF back. The machine's Redis (6379)
is never touched.
"""

import contextlib
import os
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path

import redis

from realstack.net import HOST, free_port, wait_port
from realstack.processes import Service

START_TIMEOUT = 30.0
#: How long a fault may take to set in (a save to fail, a replica to sync) before the helper gives up.
SETTLE_TIMEOUT = 30.0


class RedisServer:
    """`redis-server` on a free port, its data and log in a folder of its own; appendonly when asked."""

    def __init__(self, workdir: Path, *, appendonly: bool = False) -> None:
        self.port = free_port()
        self.dir = workdir / f"redis-{self.port}"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.appendonly = appendonly
        self._config: tuple[str, ...] = ()
        self._service: Service | None = None
        self._script: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    def start(self, *config: str) -> "RedisServer":
        """Start it, with `config` (`--name value` pairs) on top of the defaults; returns once it listens
        (it may still be loading its data)."""
        self._config = config
        args = [
            "redis-server", "--port", str(self.port), "--bind", HOST, "--dir", str(self.dir),
            "--save", "", "--appendonly", "yes" if self.appendonly else "no",
            # Settable at run time on this server alone: the folder a save goes to, DEBUG POPULATE.
            "--enable-protected-configs", "local", "--enable-debug-command", "local",
            *config,
        ]  # fmt: skip
        self._service = Service(f"redis-{self.port}", args, env=dict(os.environ), cwd=self.dir).start()
        wait_port(self.port, True, f"redis-server on {self.port}", START_TIMEOUT)
        return self

    def client(self) -> redis.Redis:
        return redis.Redis(host=HOST, port=self.port, decode_responses=True, socket_timeout=10)

    def command(self, *args: str | int) -> object:
        with self.client() as client:
            return client.execute_command(*args)

    def info(self, section: str) -> dict[str, object]:
        with self.client() as client:
            return dict(client.info(section))

    def stop(self) -> None:
        if self._service is not None and self._service.alive():
            self._service.kill()
        self._service = None

    def shutdown(self) -> None:
        """A clean shutdown: the AOF written out and synced, as a service manager's stop does."""
        with contextlib.suppress(redis.ConnectionError):
            self.command("SHUTDOWN")
        assert self._service is not None and self._service.process is not None
        self._service.process.wait(timeout=START_TIMEOUT)
        wait_port(self.port, False, f"redis-server on {self.port}", START_TIMEOUT)

    def log(self) -> str:
        return self._service.log() if self._service is not None else ""

    # --- BUSY: a script past its time limit holds the server; SCRIPT KILL ends it ---

    def busy(self) -> None:
        self.command("CONFIG", "SET", "busy-reply-threshold", "50")

        def run_forever() -> None:
            with redis.Redis(host=HOST, port=self.port) as client, contextlib.suppress(redis.ResponseError):
                client.eval("while true do end", 0)  # until SCRIPT KILL

        self._script = threading.Thread(target=run_forever, daemon=True)
        self._script.start()
        self._wait(self._refuses_busy, "the server to answer BUSY")

    def _refuses_busy(self) -> bool:
        try:
            self.command("PING")
        except redis.ResponseError as exc:
            return str(exc).startswith("BUSY")
        return False

    def not_busy(self) -> None:
        self.command("SCRIPT", "KILL")
        assert self._script is not None
        self._script.join(timeout=SETTLE_TIMEOUT)
        self._script = None

    # --- OOM: maxmemory below what it holds, nothing it may evict ---

    def out_of_memory(self) -> None:
        self.command("CONFIG", "SET", "maxmemory-policy", "noeviction")
        self.command("CONFIG", "SET", "maxmemory", "1")

    def memory_back(self) -> None:
        self.command("CONFIG", "SET", "maxmemory", "0")

    # --- MISCONF: a save that failed, with stop-writes-on-bgsave-error ---

    def persistence_failing(self) -> None:
        """Its save folder vanishes (a disk lost) and a background save fails on it: writes stop."""
        gone = self.dir / "gone"
        gone.mkdir(exist_ok=True)
        self.command("CONFIG", "SET", "save", "3600 1")
        self.command("CONFIG", "SET", "stop-writes-on-bgsave-error", "yes")
        self.command("CONFIG", "SET", "dir", str(gone))
        shutil.rmtree(gone)
        self._wait_until_idle()
        self.command("BGSAVE")
        self._wait(lambda: self.info("persistence")["rdb_last_bgsave_status"] == "err", "the save to fail")

    def persistence_back(self) -> None:
        """The folder is back and a save succeeds: writes resume."""
        self.command("CONFIG", "SET", "dir", str(self.dir))
        self._wait_until_idle()
        self.command("BGSAVE")
        self._wait(lambda: self.info("persistence")["rdb_last_bgsave_status"] == "ok", "the save to succeed")

    def _wait_until_idle(self) -> None:
        self._wait(lambda: self.info("persistence")["rdb_bgsave_in_progress"] == 0, "the save under way")

    # --- READONLY: a failover that made it a replica ---

    def failed_over_to(self, other: "RedisServer") -> None:
        """`other` takes over as master with this one's data, and this one becomes its replica (a failover
        whose clients still point here): reads are served, writes refused."""
        other.command("REPLICAOF", HOST, self.port)
        other._wait(lambda: other.info("replication")["master_link_status"] == "up", "the replica to sync")
        other.command("REPLICAOF", "NO", "ONE")
        self.command("REPLICAOF", HOST, other.port)
        self._wait(lambda: self.info("replication")["master_link_status"] == "up", "the demoted to sync")

    def promoted(self) -> None:
        """Master again (the failover undone, or this replica promoted): writes are taken."""
        self.command("REPLICAOF", "NO", "ONE")

    # --- MASTERDOWN: a replica whose master is gone, told not to serve stale data ---

    def master_lost(self) -> None:
        self.command("CONFIG", "SET", "replica-serve-stale-data", "no")
        self.command("REPLICAOF", HOST, free_port())  # nothing listens there

    # --- NOREPLICAS: fewer replicas than min-replicas-to-write ---

    def replicas_missing(self) -> None:
        self.command("CONFIG", "SET", "min-replicas-to-write", "1")  # it has none

    def replicas_back(self) -> None:
        self.command("CONFIG", "SET", "min-replicas-to-write", "0")

    # --- LOADING: a restart that reads its AOF back ---

    def ballast(self, keys: int, size: int = 512) -> None:
        """`keys` more keys of `size` bytes, rewritten into the AOF (DEBUG POPULATE bypasses it)."""
        assert self.appendonly, "a server started without appendonly has no AOF to load"
        self.command("DEBUG", "POPULATE", keys, "ballast", size)
        self.command("BGREWRITEAOF")
        self._wait(lambda: self.info("persistence")["aof_rewrite_in_progress"] == 0, "the AOF rewrite")

    def restart_loading(self, key_load_delay_us: int) -> None:
        """Shut down cleanly and start again, reading the AOF back `key_load_delay_us` per key slower (so a
        dev machine's load takes as long as a production one's): until it is read, every command but a few
        is answered LOADING."""
        self.shutdown()
        self.start(
            *self._config,
            "--key-load-delay", str(key_load_delay_us),
            # Answer clients (with LOADING) every KiB read, not every 2 MiB.
            "--loading-process-events-interval-bytes", "1024",
        )  # fmt: skip

    def loading(self) -> bool:
        try:
            return self.info("persistence")["loading"] == 1
        except redis.ConnectionError:
            return True

    def wait_loaded(self, timeout: float = 120.0) -> float:
        """Seconds until it has read its data."""
        return self._wait(lambda: not self.loading(), "the AOF to be read", timeout)

    def _wait(self, done: Callable[[], bool], what: str, timeout: float = SETTLE_TIMEOUT) -> float:
        started = time.monotonic()
        while not done():
            if time.monotonic() - started > timeout:
                log = self.log()[-2000:]
                raise RuntimeError(f"redis-server on {self.port}: no {what} in {timeout:.0f}s:\n{log}")
            time.sleep(0.05)
        return time.monotonic() - started

"""A RabbitMQ cluster of three nodes on this machine: for the tests that lose a node, and for `make bench`'s
write path on a cluster.

Each node is an Erlang VM of its own, started from the installed `rabbitmq-server` (as the Clustering Guide
runs several nodes on one host): its own node name, AMQP and distribution ports, data and log folders, no
plugins, all under one temporary folder. The nodes share a cookie of their own (in the folder's `home`,
the HOME of the nodes and of every `rabbitmqctl` run here), so no command here can reach this machine's
own node (`rabbit@localhost`), whose settings (`/etc/rabbitmq`) are not read either.
"""

import json
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

from realstack.machine import wait_broker_ready
from realstack.net import free_port, port_open

RABBITMQ_BIN = Path(os.environ.get("RABBITMQ_BIN", "/usr/lib/rabbitmq/bin"))
HOST = "localhost"
START_TIMEOUT = 120.0
CTL_TIMEOUT = 120.0
#: A node that was killed, or stopped, takes this long at most to be reported by the others.
PEER_DOWN_TIMEOUT = 60.0


def rabbitmq_installed() -> str | None:
    """Why no cluster can start here, or None."""
    missing = [name for name in ("rabbitmq-server", "rabbitmqctl") if not (RABBITMQ_BIN / name).exists()]
    if missing:
        return f"{', '.join(missing)} not found in {RABBITMQ_BIN}"
    return None


class ClusterError(RuntimeError):
    pass


class Node:
    """One RabbitMQ node: started in the foreground (a child of the test process), stopped, killed."""

    def __init__(self, cluster: "Cluster", name: str) -> None:
        self.cluster = cluster
        self.name = f"{name}@{HOST}"
        self.amqp_port = free_port()
        self.dist_port = free_port()
        self.base = cluster.base / name
        self.process: subprocess.Popen[bytes] | None = None

    def __repr__(self) -> str:
        return f"<Node {self.name} amqp={self.amqp_port}>"

    @property
    def pid_file(self) -> Path:
        return self.base / "pid"

    @property
    def log_path(self) -> Path:
        return self.base / "console.log"

    def url(self, vhost: str = "") -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.amqp_port}/{vhost}"

    def env(self) -> dict[str, str]:
        return self.cluster.ctl_env() | {
            "RABBITMQ_NODENAME": self.name,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.amqp_port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": str(self.base / "data"),
            "RABBITMQ_LOG_BASE": str(self.base / "log"),
            "RABBITMQ_PID_FILE": str(self.pid_file),
            "RABBITMQ_CONFIG_FILE": str(self.cluster.config_file),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.cluster.plugins_file),
            # The Erlang distribution (node to node, and the CLI) on loopback only.
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
        }

    def start(self) -> None:
        """Start the VM; `wait_started` waits for the broker inside it."""
        self.base.mkdir(parents=True, exist_ok=True)
        self.pid_file.unlink(missing_ok=True)
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [str(RABBITMQ_BIN / "rabbitmq-server")],
                env=self.env(),
                cwd=self.base,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )

    def wait_started(self, timeout: float = START_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        # await_startup needs the VM to be reachable first: it fails at once on a node that is not there.
        while not self.pid_file.exists() or self.ctl("await_startup", "--timeout", "5", check=False) != 0:
            if self.process is not None and self.process.poll() is not None:
                raise ClusterError(f"{self.name} exited at start:\n{self.log()}")
            if time.monotonic() > deadline:
                raise ClusterError(f"{self.name} did not start within {timeout:.0f}s:\n{self.log()}")
            time.sleep(0.5)

    def log(self) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return text[-4000:]

    def beam_pid(self) -> int:
        """The Erlang VM's pid (the pid file holds it: the start script's child, not the script)."""
        return int(self.pid_file.read_text().strip())

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL to the VM: no goodbye to the clients nor to the other nodes."""
        os.kill(self.beam_pid(), signal.SIGKILL)
        self._reap()

    def stop(self) -> None:
        """A clean shutdown of the whole node (connections closed, queues handed over)."""
        if not self.alive():
            return
        if self.ctl("stop", check=False) != 0 and self.process is not None:
            os.killpg(self.process.pid, signal.SIGTERM)
        self._reap()

    def _reap(self, timeout: float = 60.0) -> None:
        if self.process is None:
            return
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)
        deadline = time.monotonic() + timeout
        while port_open(self.amqp_port) and time.monotonic() < deadline:
            time.sleep(0.1)

    def ctl(self, *args: str, check: bool = True, timeout: float = CTL_TIMEOUT) -> int:
        return self.cluster.ctl("-n", self.name, *args, check=check, timeout=timeout)

    def ctl_output(self, *args: str, timeout: float = CTL_TIMEOUT) -> str:
        return self.cluster.ctl_output("-n", self.name, *args, timeout=timeout)


class Cluster:
    """Three nodes joined into one cluster; everything under one temporary folder, removed on close."""

    def __init__(self, prefix: str, size: int = 3) -> None:
        self.base = Path(tempfile.mkdtemp(prefix=f"{prefix}-rabbitmq-"))
        home = self.base / "home"
        home.mkdir()
        cookie = home / ".erlang.cookie"
        cookie.write_text(secrets.token_hex(20))
        cookie.chmod(0o400)  # Erlang refuses a cookie that others can read
        # Settings of our own, instead of this machine's /etc/rabbitmq (which names its own node).
        self.env_file = self.base / "rabbitmq-env.conf"
        self.env_file.write_text("")
        self.config_file = self.base / "rabbitmq.conf"
        self.config_file.write_text(
            "\n".join(
                [
                    # The test machine's disk is shared and small: no alarm for a few hundred MB free.
                    "disk_free_limit.absolute = 50MB",
                    "log.console = false",
                    "log.file.level = info",
                    "",
                ]
            )
        )
        self.plugins_file = self.base / "enabled_plugins"
        self.plugins_file.write_text("[].\n")
        self.nodes = [Node(self, f"{prefix}-{index}") for index in range(1, size + 1)]

    def ctl_env(self) -> dict[str, str]:
        keep = ("PATH", "LANG", "LC_ALL", "TMPDIR")
        return {key: os.environ[key] for key in keep if key in os.environ} | {
            "HOME": str(self.base / "home"),
            "RABBITMQ_CONF_ENV_FILE": str(self.env_file),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
        }

    def _ctl_run(self, args: tuple[str, ...], timeout: float) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(RABBITMQ_BIN / "rabbitmqctl"), *args],
            env=self.ctl_env(),
            cwd=self.base,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def ctl(self, *args: str, check: bool = True, timeout: float = CTL_TIMEOUT) -> int:
        done = self._ctl_run(args, timeout)
        if check and done.returncode != 0:
            raise ClusterError(f"rabbitmqctl {' '.join(args)}: {done.stdout}{done.stderr}")
        return done.returncode

    def ctl_output(self, *args: str, timeout: float = CTL_TIMEOUT) -> str:
        done = self._ctl_run(args, timeout)
        if done.returncode != 0:
            raise ClusterError(f"rabbitmqctl {' '.join(args)}: {done.stdout}{done.stderr}")
        return done.stdout

    # --- the cluster's life ---

    def start(self) -> "Cluster":
        """Boot the nodes side by side, then join the others to the first (each one's app restarted)."""
        for node in self.nodes:
            node.start()
        with ThreadPoolExecutor(len(self.nodes)) as pool:
            list(pool.map(lambda node: node.wait_started(), self.nodes))
        first = self.nodes[0]
        for node in self.nodes[1:]:
            node.ctl("stop_app")
            node.ctl("join_cluster", first.name)
            node.ctl("start_app")
        self.wait_running(self.nodes)
        return self

    def running_nodes(self, via: Node) -> set[str]:
        """The nodes `via` sees running in its cluster."""
        status = json.loads(via.ctl_output("cluster_status", "--formatter", "json"))
        return set(status["running_nodes"])

    def wait_running(self, nodes: list[Node], timeout: float = PEER_DOWN_TIMEOUT) -> None:
        """Until every node of `nodes` sees exactly `nodes` running."""
        expected = {node.name for node in nodes}
        deadline = time.monotonic() + timeout
        for node in nodes:
            while (seen := self.running_nodes(node)) != expected:
                if time.monotonic() > deadline:
                    raise ClusterError(f"{node.name} sees {sorted(seen)}, expected {sorted(expected)}")
                time.sleep(0.5)

    def urls(self, vhost: str = "") -> str:
        """The nodes' URLs in kombu's failover syntax, as CELERY_BROKER_URL takes them."""
        return ";".join(node.url(vhost) for node in self.nodes)

    def running(self) -> list[Node]:
        return [node for node in self.nodes if node.alive()]

    def node(self, name: str) -> Node:
        return next(node for node in self.nodes if node.name == name)

    def queue_leader(self, queue: str, vhost: str = "/") -> Node:
        """The node that leads a quorum queue now, as a running node sees it."""
        via = self.running()[0]
        for line in via.ctl_output(
            "list_queues", "-p", vhost, "name", "leader", "--no-table-headers", "-q"
        ).splitlines():
            name, _, leader = line.strip().partition("\t")
            if name == queue and leader:
                return self.node(leader.strip())
        raise ClusterError(f"no leader for {queue} seen from {via.name}")

    def queue_type(self, queue: str, vhost: str = "/") -> str:
        via = self.running()[0]
        output = via.ctl_output("list_queues", "-p", vhost, "name", "type", "--no-table-headers", "-q")
        for line in output.splitlines():
            name, _, kind = line.strip().partition("\t")
            if name == queue:
                return kind.strip()
        raise ClusterError(f"no queue {queue} seen from {via.name}")

    def connections(self, node: Node) -> int:
        """How many client connections the node holds."""
        output = node.ctl_output("list_connections", "pid", "--no-table-headers", "-q")
        return len([line for line in output.splitlines() if line.strip()])

    def wait_amqp(self, node: Node, timeout: float = START_TIMEOUT) -> None:
        """Until the node takes an AMQP connection (a node starting opens its port before its vhosts)."""
        wait_broker_ready(node.url(), timeout)

    def restart(self, node: Node) -> None:
        """Start a node that was killed or stopped, and wait until it is a running member again."""
        node.start()
        node.wait_started()
        self.wait_running(self.nodes)

    def close(self) -> None:
        """Stop every node (the last ones together: a cluster's nodes each wait for the others' queues),
        then remove the folder."""
        try:
            with ThreadPoolExecutor(len(self.nodes)) as pool:
                list(pool.map(lambda node: node.stop(), self.nodes))
        finally:
            for node in self.nodes:
                if node.process is not None and node.process.poll() is None:
                    os.killpg(node.process.pid, signal.SIGKILL)
                    node.process.wait(timeout=10)
            shutil.rmtree(self.base, ignore_errors=True)


@contextmanager
def running_cluster(prefix: str) -> Iterator[Cluster]:
    cluster = Cluster(prefix)
    try:
        yield cluster.start()
    finally:
        cluster.close()

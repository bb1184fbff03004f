"""This machine's MariaDB, Redis and RabbitMQ: which of them answer, and stopping and starting them as CI
starts them (`.ci/run`).

Every `start_*` leaves the service running; `ensure_all_up` brings back whatever a failed run left down.
"""

import subprocess
import time

import kombu
import kombu.exceptions

from realstack.net import port_open, wait_port

MARIADB_PORT = 3306
REDIS_PORT = 6379
RABBITMQ_PORT = 5672
START_TIMEOUT = 120.0

MARIADB_START = ["start-stop-daemon", "--start", "--oknodo", "--background", "--exec", "/usr/sbin/mariadbd"]
REDIS_START = [
    "redis-server", "--daemonize", "yes", "--bind", "127.0.0.1", "-::1", "--port", str(REDIS_PORT),
    "--save", "", "--appendonly", "no", "--dir", "/var/lib/redis", "--logfile", "/var/log/redis/ci.log",
]  # fmt: skip


#: The services by name, with the port each answers on.
SERVICES = {"MariaDB": MARIADB_PORT, "Redis": REDIS_PORT, "RabbitMQ": RABBITMQ_PORT}


def down(services: dict[str, int] = SERVICES) -> list[str]:
    """The services that do not answer on their port."""
    return [name for name, port in services.items() if not port_open(port)]


def _wait(port: int, up: bool, what: str) -> float:
    return wait_port(port, up, what, START_TIMEOUT)


def _run(command: list[str], timeout: float = START_TIMEOUT) -> None:
    subprocess.run(command, check=True, capture_output=True, timeout=timeout)


# --- MariaDB ---


def stop_mariadb() -> None:
    _run(["mysqladmin", "-uroot", "-h127.0.0.1", "shutdown"])
    _wait(MARIADB_PORT, False, "MariaDB")


def start_mariadb() -> None:
    _run(MARIADB_START)
    _wait(MARIADB_PORT, True, "MariaDB")


# --- Redis: no persistence here, so a restart forgets everything it held ---


def stop_redis() -> None:
    _run(["redis-cli", "-p", str(REDIS_PORT), "shutdown", "nosave"])
    _wait(REDIS_PORT, False, "Redis")


def start_redis() -> None:
    _run(REDIS_START)
    _wait(REDIS_PORT, True, "Redis")


# --- RabbitMQ: the whole node (the Erlang VM too), durable queues and persistent messages kept on disk ---


def stop_rabbitmq() -> None:
    _run(["rabbitmqctl", "-q", "shutdown"])
    _wait(RABBITMQ_PORT, False, "RabbitMQ")


def start_rabbitmq() -> None:
    subprocess.run(["rabbitmq-server", "-detached"], check=True, capture_output=True, timeout=60)
    _wait(RABBITMQ_PORT, True, "RabbitMQ")  # await_startup needs a node that already answers
    _run(["rabbitmqctl", "-q", "await_startup", "--timeout", str(int(START_TIMEOUT))])


#: RabbitMQ's default high watermark, a share of the machine's memory; the alarm sets one no node stays under.
DEFAULT_WATERMARK = "0.4"
ALARM_WATERMARK = "0.000001"


def block_publishers() -> None:
    """Raise RabbitMQ's memory alarm: the node blocks every connection that publishes, as when it runs out."""
    _run(["rabbitmqctl", "-q", "set_vm_memory_high_watermark", ALARM_WATERMARK])


def unblock_publishers() -> None:
    _run(["rabbitmqctl", "-q", "set_vm_memory_high_watermark", DEFAULT_WATERMARK])


def wait_broker_ready(url: str, timeout: float = START_TIMEOUT) -> None:
    """A restarted node opens its port before its vhosts take connections: wait for an AMQP handshake."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with kombu.Connection(url, connect_timeout=2) as connection:
                connection.ensure_connection(max_retries=1)
                return
        except (OSError, kombu.exceptions.OperationalError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def ensure_all_up() -> None:
    """Every service running and RabbitMQ taking publishes (no alarm left raised by a failed test)."""
    if not port_open(MARIADB_PORT):
        start_mariadb()
    if not port_open(REDIS_PORT):
        start_redis()
    if not port_open(RABBITMQ_PORT):
        start_rabbitmq()
    unblock_publishers()


def rabbitmqctl(*args: str, check: bool = True, timeout: float = START_TIMEOUT) -> int:
    """`rabbitmqctl -q ARGS` against this machine's node; its exit status."""
    done = subprocess.run(["rabbitmqctl", "-q", *args], check=check, capture_output=True, timeout=timeout)
    return done.returncode

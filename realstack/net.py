"""Ports on loopback: a free one for a process to listen on, and whether one answers."""

import random
import socket
import time
from pathlib import Path

HOST = "127.0.0.1"
#: The kernel gives outgoing connections their local port from this range; a port picked inside it can be
#: taken by any client's connection between the pick and the server's listen (a RabbitMQ node that took
#: seconds to boot met `eaddrinuse` so). Servers started here listen below it.
EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
LISTEN_FROM = 10000
#: The backing services' own ports (MariaDB, epmd, AMQP, Redis, the management UI, RabbitMQ's distribution):
#: never handed out, even while a test has one of them stopped.
SERVICE_PORTS = frozenset({3306, 4369, 5672, 6379, 15672, 25672})

_handed_out: set[int] = set()


def ephemeral_range() -> tuple[int, int]:
    try:
        low, high = (int(part) for part in EPHEMERAL_RANGE.read_text().split())
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default
    return low, high


def free_port() -> int:
    """A port nothing listens on, outside the ephemeral range, not handed out before by this process."""
    low, _ = ephemeral_range()
    candidates = [port for port in range(LISTEN_FROM, low) if port not in SERVICE_PORTS]
    for port in random.sample(candidates, min(len(candidates), 200)):
        if port not in _handed_out and _bindable(port):
            _handed_out.add(port)
            return port
    # An ephemeral range that leaves nothing below it: the kernel's choice, with its race.
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        picked: int = sock.getsockname()[1]
        return picked


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def port_open(port: int, host: str = HOST, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_port(port: int, up: bool, what: str, timeout: float) -> float:
    """Wait until the port is open (`up`) or closed; the seconds it took."""
    started = time.monotonic()
    while port_open(port) != up:
        if time.monotonic() - started > timeout:
            raise RuntimeError(f"{what} still {'down' if up else 'up'} after {timeout:.0f}s")
        time.sleep(0.1)
    return time.monotonic() - started

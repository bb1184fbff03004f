"""Ports on loopback: a free one for a process to listen on, and whether one answers."""

import socket
import time

HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


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

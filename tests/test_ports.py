"""The ports the test and bench stacks give the servers they start (API processes, RabbitMQ nodes)."""

import socket
from pathlib import Path

from realstack.net import HOST, free_port

#: MariaDB, epmd, AMQP, Redis, RabbitMQ's management and distribution: a test may have one of them stopped.
MACHINE_SERVICES = {3306, 4369, 5672, 6379, 15672, 25672}


def test_servers_get_ports_no_outgoing_connection_can_take_before_they_listen() -> None:
    # A RabbitMQ node boots for seconds after its port is picked; a port from the ephemeral range could be
    # taken meanwhile by any client's connection (CI saw a cluster node die of eaddrinuse so).
    low, high = (int(part) for part in Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    picked = [free_port() for _ in range(200)]
    assert all(not low <= port <= high for port in picked), sorted(p for p in picked if low <= p <= high)[:5]
    assert not MACHINE_SERVICES & set(picked)
    assert len(set(picked)) == len(picked)


def test_a_picked_port_is_not_one_that_is_listened_on() -> None:
    with socket.socket() as sock:
        sock.bind((HOST, free_port()))
        sock.listen()
        taken = sock.getsockname()[1]
        picked = {free_port() for _ in range(300)}
        assert taken not in picked
        with socket.socket() as other:
            other.bind((HOST, picked.pop()))

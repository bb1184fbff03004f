"""Load generators: wrk for the read path (a separate process), a minimal asyncio client for registrations."""

import asyncio
import contextlib
import itertools
import json
import math
import re
import shutil
import subprocess
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx

_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}
_DURATION = r"([\d.]+)(us|ms|s|m|h)"


def ensure_wrk() -> str:
    """wrk's path, installed from Debian's packages when missing (needs root)."""
    found = shutil.which("wrk")
    if found:
        return found
    print("wrk not found: apt-get install -y wrk", flush=True)
    install = ["apt-get", "install", "-y", "-q", "wrk"]
    if subprocess.run(install, capture_output=True, check=False).returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], capture_output=True, check=False)
        subprocess.run(install, capture_output=True, check=True)
    found = shutil.which("wrk")
    if not found:
        raise RuntimeError("wrk is not installed and could not be installed (apt-get install -y wrk)")
    return found


def _ms(number: str, unit: str) -> float:
    return float(number) * _UNITS[unit]


@dataclass(frozen=True, slots=True)
class WrkResult:
    rps: float
    p50_ms: float
    p75_ms: float
    p90_ms: float
    p99_ms: float
    requests: int
    errors: int
    non_2xx_3xx: int
    socket_errors: int
    seconds: float

    def figures(self) -> dict[str, Any]:
        return {
            "rps": round(self.rps, 1),
            "p50_ms": round(self.p50_ms, 2),
            "p99_ms": round(self.p99_ms, 2),
            "errors": self.errors,
            "p75_ms": round(self.p75_ms, 2),
            "p90_ms": round(self.p90_ms, 2),
            "requests": self.requests,
            "non_2xx_3xx": self.non_2xx_3xx,
            "socket_errors": self.socket_errors,
        }


def parse_wrk(output: str) -> WrkResult:
    def need(pattern: str) -> re.Match[str]:
        match = re.search(pattern, output, re.MULTILINE)
        if match is None:
            raise RuntimeError(f"wrk output without {pattern!r}:\n{output}")
        return match

    percentiles = {p: _ms(*need(rf"^\s*{p}%\s+{_DURATION}\s*$").groups()) for p in (50, 75, 90, 99)}
    total = need(r"(\d+) requests in " + _DURATION)
    sockets = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    socket_errors = sum(int(n) for n in sockets.groups()) if sockets else 0
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    non_2xx_count = int(non_2xx.group(1)) if non_2xx else 0
    return WrkResult(
        rps=float(need(r"Requests/sec:\s+([\d.]+)").group(1)),
        p50_ms=percentiles[50],
        p75_ms=percentiles[75],
        p90_ms=percentiles[90],
        p99_ms=percentiles[99],
        requests=int(total.group(1)),
        errors=non_2xx_count + socket_errors,
        non_2xx_3xx=non_2xx_count,
        socket_errors=socket_errors,
        seconds=_ms(total.group(2), total.group(3)) / 1000,
    )


def run_wrk(
    wrk: str,
    url: str,
    *,
    seconds: float,
    connections: int,
    threads: int,
    headers: Sequence[str] = (),
    timeout: str = "10s",
) -> WrkResult:
    args = [wrk, f"-t{threads}", f"-c{connections}", f"-d{seconds:g}s", "--latency", "--timeout", timeout]
    for header in headers:
        args += ["-H", header]
    done = subprocess.run([*args, url], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr}\n{done.stdout}")
    return parse_wrk(done.stdout)


# --- registrations ---


class HttpConnection:
    """A minimal HTTP/1.1 keep-alive client (stdlib asyncio) for the write path.

    httpx costs 2-6 ms of CPU per request at this concurrency (measured on this machine), 20-50 times more
    than this; on two cores the client's CPU comes out of the service's, so it would lower the figures.
    Enough for our own server's answers: a status line, headers, a Content-Length body.
    """

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def request(
        self, method: str, path: str, headers: Mapping[str, str], body: bytes = b""
    ) -> tuple[int, bytes]:
        if self._reader is None or self._writer is None:
            self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
        reader, writer = self._reader, self._writer
        head = f"{method} {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nContent-Length: {len(body)}\r\n"
        head += "".join(f"{name}: {value}\r\n" for name, value in headers.items())
        writer.write(head.encode("latin-1") + b"\r\n" + body)
        try:
            lines = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
            status = int(lines[0].split(" ", 2)[1])
            fields = {}
            for line in lines[1:]:
                name, _, value = line.partition(":")
                fields[name.strip().lower()] = value.strip()
            if "content-length" not in fields:
                raise ValueError(f"no Content-Length in the answer: {fields}")
            data = await reader.readexactly(int(fields["content-length"]))
        except BaseException:
            await self.close()
            raise
        if fields.get("connection", "").lower() == "close":
            await self.close()
        return status, data

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(OSError):
                await self._writer.wait_closed()
        self._reader = self._writer = None


@dataclass
class Registrations:
    """What the client saw: each accepted registration's 202 moment, and what went wrong."""

    started: float = 0.0
    finished: float = 0.0
    accepted: dict[str, float] = field(default_factory=dict)  # status_id -> time.time() of its 202
    post_ms: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)


def package_body(i: int) -> bytes:
    return json.dumps(
        {
            "name": f"Bench parcel {i}",
            "weight_kg": f"{1 + i % 20}.{i % 1000:03d}",
            "type_id": 1 + i % 3,
            "content_value_usd": f"{i % 5000}.{i % 100:02d}",
        }
    ).encode()


async def open_sessions(base_url: str, count: int) -> list[str]:
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as client:
        tokens = []
        for _ in range(count):
            response = await client.get("/sessions/new/")
            response.raise_for_status()
            tokens.append(response.cookies["session_id"])
        return tokens


async def register(base_url: str, tokens: Sequence[str], total: int, concurrency: int) -> Registrations:
    """`total` POST /packages/ from `concurrency` connections, each sent as soon as its connection is free
    (a closed model); connection k in session `tokens[k % len]`."""
    return await _register(base_url, tokens, total, concurrency, rate=None)


async def register_paced(
    base_url: str, tokens: Sequence[str], rate: float, seconds: float, concurrency: int
) -> Registrations:
    """POST /packages/ at `rate` a second for `seconds` (an open model: each request starts on its schedule,
    late only when all `concurrency` connections are busy), connection k in session `tokens[k % len]`."""
    return await _register(base_url, tokens, int(rate * seconds), concurrency, rate=rate)


async def _register(
    base_url: str, tokens: Sequence[str], total: int, concurrency: int, *, rate: float | None
) -> Registrations:
    url = httpx.URL(base_url)
    host, port = url.host, url.port
    assert port is not None
    result = Registrations()
    counter = itertools.count()
    start = time.monotonic() + 0.2

    async def loop(k: int) -> None:
        connection = HttpConnection(host, port)
        headers = {"Content-Type": "application/json", "Cookie": f"session_id={tokens[k % len(tokens)]}"}
        try:
            while (i := next(counter)) < total:
                if rate is not None and (delay := start + i / rate - time.monotonic()) > 0:
                    await asyncio.sleep(delay)
                sent = time.time()
                try:
                    status, body = await connection.request("POST", "/packages/", headers, package_body(i))
                except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
                    result.errors[type(exc).__name__] += 1
                    continue
                now = time.time()
                if status == 202:
                    result.accepted[json.loads(body)["status_id"]] = now
                    result.post_ms.append((now - sent) * 1000)
                else:
                    result.errors[str(status)] += 1
        finally:
            await connection.close()

    result.started = time.time()
    await asyncio.gather(*(loop(k) for k in range(concurrency)))
    result.finished = time.time()
    return result


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (what wrk reports too)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), math.ceil(p / 100 * len(ordered))))
    return ordered[rank - 1]

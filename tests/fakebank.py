"""A loopback stand-in for the bank's daily-rates service: serves the recorded answers, or fails on demand."""

import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Literal

FIXTURES = Path(__file__).parent / "fixtures" / "cbr"

Mode = Literal["ok", "error", "hang", "html", "truncated", "zero_rate", "no_usd", "not_json", "drip", "huge"]
#: What mode "huge" sends at a time; the body is generated as it goes, never held whole.
HUGE_CHUNK = 64 * 1024


class FakeBank:
    """Counts the requests it gets; `mode` says how it answers them."""

    def __init__(self) -> None:
        self.mode: Mode = "ok"
        self.fixture = "daily_json.js"
        #: Served instead of the fixture when set (an answer built by a test).
        self.custom_body: bytes | None = None
        self.delay = 0.0
        #: The status code of mode "error".
        self.error_status = 503
        self.hang_seconds = 30.0
        #: Mode "drip": the headers at once, then one byte of the body every `drip_interval` seconds.
        self.drip_interval = 2.0
        #: Mode "huge": this many bytes, the daily JSON after leading whitespace (valid JSON, if read whole);
        #: the length is declared in Content-Length unless `huge_declared` is false (the body ends at close).
        self.huge_size = 256 * 1024 * 1024
        self.huge_declared = True
        self._requests = 0
        self._bytes_sent = 0
        self._headers: list[dict[str, str]] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}/daily_json.js"

    @property
    def requests(self) -> int:
        with self._lock:
            return self._requests

    @property
    def bytes_sent(self) -> int:
        """Bytes of answer bodies written to clients (accepted by the socket) since the last reset."""
        with self._lock:
            return self._bytes_sent

    @property
    def headers(self) -> list[dict[str, str]]:
        """The headers of each request received since the last reset, names lowercased."""
        with self._lock:
            return [dict(h) for h in self._headers]

    @property
    def user_agents(self) -> list[str]:
        return [h.get("user-agent", "") for h in self.headers]

    def start(self) -> "FakeBank":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def reset(self) -> None:
        with self._lock:
            self._requests = 0
            self._bytes_sent = 0
            self._headers.clear()
        self.mode = "ok"
        self.fixture = "daily_json.js"
        self.custom_body = None
        self.delay = 0.0
        self.error_status = 503
        self.drip_interval = 2.0
        self.huge_size = 256 * 1024 * 1024
        self.huge_declared = True

    def body(self) -> bytes:
        if self.custom_body is not None:
            return self.custom_body
        return (FIXTURES / self.fixture).read_bytes()

    def _record(self, headers: dict[str, str]) -> None:
        with self._lock:
            self._headers.append(headers)

    def _sent(self, count: int) -> None:
        with self._lock:
            self._bytes_sent += count

    def _chunks(self, body: bytes) -> Iterator[bytes]:
        """The body as it is written: whole, a byte at a time (drip), or generated in chunks (huge)."""
        match self.mode:
            case "drip":
                for index in range(len(body)):
                    time.sleep(self.drip_interval)
                    yield body[index : index + 1]
            case "huge":
                padding = self.huge_size - len(body)
                blank = b" " * HUGE_CHUNK
                while padding > 0:
                    yield blank[:padding]
                    padding -= HUGE_CHUNK
                yield body
            case _:
                yield body

    def _length(self, body: bytes) -> int | None:
        if self.mode == "huge":
            return max(self.huge_size, len(body)) if self.huge_declared else None
        return len(body)

    def _answer(self) -> tuple[int, str, bytes]:
        with self._lock:
            self._requests += 1
        if self.delay:
            time.sleep(self.delay)
        body = self.body()
        match self.mode:
            case "ok":
                return 200, "application/javascript; charset=utf-8", body
            case "error":
                return self.error_status, "text/plain", b"Service Temporarily Unavailable"
            case "hang":
                time.sleep(self.hang_seconds)
                return 200, "application/javascript", body
            case "html":
                return 200, "text/html", b"<html><body><h1>403 Forbidden</h1></body></html>"
            case "truncated":
                return 200, "application/javascript", body[: len(body) // 2]
            case "zero_rate":
                return 200, "application/javascript", _usd_value(body, b"0")
            case "no_usd":
                return 200, "application/javascript", body.replace(b'"USD"', b'"XXX"')
            case "not_json":
                return 200, "application/javascript", b"\x00\xff garbage \xfe"
            case "drip" | "huge":
                return 200, "application/javascript; charset=utf-8", body

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        bank = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                bank._record({name.lower(): value for name, value in self.headers.items()})
                status, content_type, body = bank._answer()
                length = bank._length(body)
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", content_type)
                    if length is None:
                        self.send_header("Connection", "close")
                        self.close_connection = True
                    else:
                        self.send_header("Content-Length", str(length))
                    self.end_headers()
                    self.wfile.flush()
                    for chunk in bank._chunks(body):
                        self.wfile.write(chunk)
                        self.wfile.flush()
                        bank._sent(len(chunk))
                except OSError:  # the client gave up (a timeout test, a refused body)
                    pass

            def log_message(self, format: str, *args: object) -> None:
                pass

        return Handler


def _usd_value(body: bytes, value: bytes) -> bytes:
    """The same answer with the USD entry's Value replaced."""
    start = body.index(b'"CharCode": "USD"')
    value_at = body.index(b'"Value":', start) + len(b'"Value":')
    end = body.index(b",", value_at)
    return body[:value_at] + b" " + value + body[end:]

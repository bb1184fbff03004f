"""A TCP proxy on loopback that can hold back what a server sends to its clients: a broker whose confirms
come late on a connection that stays open, as a slow or overloaded node's do.

What the client sends passes at once (the server receives, and acts on, every frame in time); what the
server sends is delivered `delay` seconds after it arrived, in order. `delay` may change while the proxy runs.
"""

import asyncio
import contextlib
import threading
import time
from collections.abc import Iterator

from realstack.net import free_port

CHUNK = 65536


class DelayProxy:
    def __init__(self, upstream_port: int, *, upstream_host: str = "127.0.0.1") -> None:
        self.port = free_port()
        self._upstream = (upstream_host, upstream_port)
        #: Seconds each chunk from the server is held before it goes to the client.
        self.delay = 0.0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="delay-proxy", daemon=True)
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()

    def start(self) -> "DelayProxy":
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._listen(), self._loop).result(10)
        return self

    def url(self, broker_url: str) -> str:
        """`broker_url` with its port replaced by the proxy's."""
        return broker_url.replace(f":{self._upstream[1]}", f":{self.port}", 1)

    @contextlib.contextmanager
    def holding(self, seconds: float) -> Iterator[None]:
        """The server's answers held back `seconds` while the block runs."""
        self.delay = seconds
        try:
            yield
        finally:
            self.delay = 0.0

    def stop(self) -> None:
        async def shut() -> None:
            if self._server is not None:
                self._server.close()
            for task in list(self._connections):
                task.cancel()
            await asyncio.gather(*self._connections, return_exceptions=True)

        if self._thread.is_alive():
            asyncio.run_coroutine_threadsafe(shut(), self._loop).result(10)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
        if not self._thread.is_alive():
            self._loop.close()

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)

    async def _accept(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            server_reader, server_writer = await asyncio.open_connection(*self._upstream)
        except OSError:
            client_writer.close()
            self._connections.discard(task)
            return
        try:
            await asyncio.gather(
                self._pipe(client_reader, server_writer, delayed=False),
                self._pipe(server_reader, client_writer, delayed=True),
            )
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            for writer in (client_writer, server_writer):
                writer.close()
            self._connections.discard(task)

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, delayed: bool
    ) -> None:
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def deliver() -> None:
            while True:
                due, data = await queue.get()
                if not data:
                    writer.write_eof() if writer.can_write_eof() else writer.close()
                    return
                if (wait := due - time.monotonic()) > 0:
                    await asyncio.sleep(wait)
                writer.write(data)
                await writer.drain()

        sender = asyncio.create_task(deliver())
        last_due = 0.0
        try:
            while True:
                data = await reader.read(CHUNK)
                # Never before an earlier chunk: the stream's order is kept whatever the delay does.
                last_due = max(last_due, time.monotonic() + (self.delay if delayed else 0.0))
                queue.put_nowait((last_due, data))
                if not data:
                    break
            await sender
        finally:
            sender.cancel()

"""A fault-injecting HTTP proxy for the HTTP backend tests.

It listens on 127.0.0.1 in front of one upstream server and, on a seeded `fault_rate` of
the requests (in arrival order), answers 500, drops the connection without an answer, or
stalls past the client's timeout, in turn; the other requests go through. Each request
gets its own upstream connection (Connection: close both ways), so that a fault never
leaks into the next request. `stop()` closes the listener: nothing listens on the port
after it, as when a server is down.
"""

from __future__ import annotations

import asyncio
import random
import threading
from collections import Counter

FAULTS = ("error500", "drop", "stall")
_MAX_HEAD = 64 * 1024
_UPSTREAM_TIMEOUT_S = 300.0


class FaultProxy:
    def __init__(self, upstream_port: int, fault_rate: float = 0.3, seed: int = 0,
                 stall_s: float = 10.0) -> None:
        self.upstream_port = upstream_port
        self.fault_rate = fault_rate
        self.stall_s = stall_s
        self.outcomes: Counter[str] = Counter()
        self.log: list[tuple[str, str]] = []  # (request line, outcome)
        self._rng = random.Random(seed)
        self._n_faults = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.port = 0

    def start(self) -> int:
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._handle, "127.0.0.1", 0, limit=_MAX_HEAD),
            self._loop).result(timeout=10)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self.port

    def stop(self) -> None:
        """Close the listener and end the connections in flight; idempotent."""
        if self._server is None:
            return
        server, self._server = self._server, None

        async def shut() -> None:
            server.close()
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            await server.wait_closed()

        asyncio.run_coroutine_threadsafe(shut(), self._loop).result(timeout=10)

    def close(self) -> None:
        self.stop()
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)

    def _decide(self) -> str:
        if self._rng.random() >= self.fault_rate:
            return "pass"
        kind = FAULTS[self._n_faults % len(FAULTS)]  # in turn: every kind shows up early
        self._n_faults += 1
        return kind

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            length = next((int(line.split(":", 1)[1]) for line in lines
                           if line.lower().startswith("content-length:")), 0)
            body = await reader.readexactly(length)
            outcome = self._decide()
            self.outcomes[outcome] += 1
            self.log.append((lines[0], outcome))
            if outcome == "error500":
                msg = b'{"error": {"message": "injected fault", "type": "server_error"}}'
                writer.write(b"HTTP/1.1 500 Internal Server Error\r\nContent-Type: "
                             b"application/json\r\nConnection: close\r\nContent-Length: "
                             + str(len(msg)).encode() + b"\r\n\r\n" + msg)
                await writer.drain()
            elif outcome == "stall":
                await asyncio.sleep(self.stall_s)
            elif outcome == "pass":
                kept = [line for line in lines[1:] if line
                        and not line.lower().startswith(("connection:", "keep-alive:"))]
                request = "\r\n".join([lines[0], *kept, "Connection: close", "", ""])
                await asyncio.wait_for(self._forward(request.encode("latin-1") + body, writer),
                                       _UPSTREAM_TIMEOUT_S)
            # "drop": close without a word
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError,
                asyncio.TimeoutError, ValueError):
            pass
        finally:
            self._tasks.discard(task)
            writer.close()

    async def _forward(self, request: bytes, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        try:
            up_writer.write(request)
            await up_writer.drain()
            while chunk := await up_reader.read(65536):  # ends when upstream closes
                writer.write(chunk)
                await writer.drain()
        finally:
            up_writer.close()

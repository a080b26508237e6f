"""A userspace TCP proxy on 127.0.0.1 that delays every byte by a fixed one-way latency, and counts round trips.

Between a site and the SuperLink it makes loopback look like a WAN link of RTT = 2 x ``delay_s`` (no bandwidth
limit, no loss): each chunk read from one side is written to the other ``delay_s`` after it arrived, in order. TLS
passes through untouched.

It also records every *request turn*: a client-to-server write on a connection that starts a new exchange (the
first write, or the first after the server wrote). With HTTP/1.1 that is one request and its answer, the unit a
WAN charges one RTT for, whatever the bytes.

    proxy = LatencyProxy(("127.0.0.1", superlink_port), delay_s=0.025); proxy.start(); ... proxy.port ...; proxy.stop()
"""

from __future__ import annotations

import asyncio
import threading
import time


class LatencyProxy:
    def __init__(self, target: tuple[str, int], delay_s: float = 0.0) -> None:
        self.target, self.delay_s = target, delay_s
        self.port = 0
        self.turns: list[float] = []  # wall-clock time (time.time()) of each request turn
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="latency-proxy")

    def start(self) -> "LatencyProxy":
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the latency proxy did not start")
        return self

    def stop(self) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)

    def turns_between(self, start: float, end: float) -> int:
        return sum(1 for t in list(self.turns) if start < t <= end)

    def _run(self) -> None:
        self._loop = asyncio.new_event_loop()
        server = self._loop.run_until_complete(asyncio.start_server(self._serve, "127.0.0.1", 0))
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        try:
            self._loop.run_forever()
        finally:
            server.close()
            self._loop.close()

    async def _serve(self, c_reader: asyncio.StreamReader, c_writer: asyncio.StreamWriter) -> None:
        try:
            s_reader, s_writer = await asyncio.open_connection(*self.target)
        except OSError:
            c_writer.close()
            return
        state = {"server_spoke": True}  # the client's first write opens an exchange
        await asyncio.gather(self._pump(c_reader, s_writer, state, upstream=True),
                             self._pump(s_reader, c_writer, state, upstream=False), return_exceptions=True)

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, state: dict, upstream: bool) -> None:
        queue: asyncio.Queue = asyncio.Queue()

        async def deliver() -> None:
            while True:
                due, data = await queue.get()
                if data is None:
                    break
                wait = due - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                writer.write(data)
                await writer.drain()

        sender = asyncio.ensure_future(deliver())
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                if upstream and state["server_spoke"]:
                    self.turns.append(time.time())
                state["server_spoke"] = not upstream
                await queue.put((time.monotonic() + self.delay_s, data))
        finally:
            await queue.put((0.0, None))
            await sender
            writer.close()

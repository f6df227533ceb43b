"""A paced SSE upstream: every POST gets N chat chunks, one every `interval` seconds.

Raw asyncio protocol on uvloop rather than aiohttp.web: it shares a core with the load
generator, and at 2,000 streams x 20 tokens/s it must stay far from saturating that core,
or its own lateness would read as router latency. Each token is one timer callback and one
write; no per-stream coroutine, and one shared 1 ms ticker instead of a timer per token.

Run: python -m bench.upstreams --port P [--tokens 40] [--interval 0.05]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import signal
from collections.abc import Callable
from typing import cast

import uvloop

from bench import bodies
from bench.procs import HOST, raise_nofile

_HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n"
)
_HEALTH = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok"


def _chunked(data: bytes) -> bytes:
    return b"%x\r\n" % len(data) + data + b"\r\n"


TOKEN = _chunked(b"data: " + bodies.chunk_json(" tok") + b"\n\n")
TAIL = (
    _chunked(b"data: " + bodies.chunk_json(None, finish="stop") + b"\n\ndata: [DONE]\n\n")
    + b"0\r\n\r\n"
)


class Ticker:
    """Runs callbacks at their due time to the millisecond (libuv's timer resolution
    anyway), from one timer: cheaper than a TimerHandle per token at 40,000 tokens/s."""

    RES = 0.001

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.due: dict[int, list[Callable[[], None]]] = {}
        self.done = int(self.loop.time() / self.RES)
        self.loop.call_soon(self._tick)

    def at(self, when: float, fn: Callable[[], None]) -> None:
        key = max(math.ceil(when / self.RES), self.done + 1)
        fns = self.due.get(key)
        if fns is None:
            self.due[key] = [fn]
        else:
            fns.append(fn)

    def _tick(self) -> None:
        now = int(self.loop.time() / self.RES)
        pop = self.due.pop
        for key in range(self.done + 1, now + 1):
            for fn in pop(key, ()):
                fn()
        self.done = max(self.done, now)
        self.loop.call_at((now + 1) * self.RES, self._tick)


class PacedSSE(asyncio.Protocol):
    def __init__(self, tokens: int, interval: float, ticker: Ticker) -> None:
        self.tokens = tokens
        self.interval = interval
        self.ticker = ticker
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.buf = b""
        self.need = -1  # body bytes still to read; -1 while reading the head
        self.start = 0.0
        self.sent = 0
        self.busy = False
        self.get = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, only look-alikes.
        self.transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None  # a pending tick finds no transport and stops

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while not self.busy and self._request():
            pass

    def _request(self) -> bool:
        """Consume one whole request from the buffer and answer it; False if incomplete."""
        if self.need < 0:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return False
            head = self.buf[:end].lower()
            self.buf = self.buf[end + 4 :]
            self.need = 0
            for line in head.split(b"\r\n")[1:]:
                if line.startswith(b"content-length:"):
                    self.need = int(line[15:])
            self.get = head.startswith(b"get ")
        if len(self.buf) < self.need:
            return False
        self.buf = self.buf[self.need :]
        self.need = -1
        assert self.transport is not None
        if self.get:
            self.transport.write(_HEALTH)
            return True
        self.busy = True
        self.start = self.loop.time()
        self.sent = 0
        self.transport.write(_HEAD)
        self._tick()
        return True

    def _tick(self) -> None:
        t = self.transport
        if t is None:
            return
        self.sent += 1
        if self.sent < self.tokens:
            t.write(TOKEN)
            # Absolute deadlines, so timer lateness does not accumulate over a stream.
            self.ticker.at(self.start + self.sent * self.interval, self._tick)
            return
        t.write(TOKEN + TAIL)
        self.busy = False
        while self._request():
            if self.busy:
                break


async def serve(port: int, tokens: int, interval: float) -> None:
    loop = asyncio.get_running_loop()
    ticker = Ticker()
    server = await loop.create_server(
        lambda: PacedSSE(tokens, interval, ticker), HOST, port, backlog=8192
    )
    stopped = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopped.set)
    async with server:
        await stopped.wait()


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.upstreams")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--tokens", type=int, default=40)
    p.add_argument("--interval", type=float, default=0.05)
    a = p.parse_args()
    raise_nofile()
    with contextlib.suppress(KeyboardInterrupt):
        uvloop.run(serve(a.port, a.tokens, a.interval))


if __name__ == "__main__":
    main()

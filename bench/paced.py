"""Many concurrent paced streams: time to first token and inter-token gaps, as a client sees them.

Each of N keep-alive connections runs streams back to back for the measured window, so N
streams are open at once in the steady state. The client is a raw asyncio protocol (not
aiohttp) for the same reason as the upstream: it shares the load core, and every
microsecond it spends per token would be blamed on whatever sits in the middle.
"""

from __future__ import annotations

import asyncio
import time
from array import array
from dataclasses import asdict, dataclass
from typing import Any, cast

import numpy as np
import numpy.typing as npt
import uvloop

from bench import bodies
from bench.procs import HOST, raise_nofile

_TOKEN = b'"content"'
_CARRY = len(_TOKEN) - 1


@dataclass
class PacedResult:
    connections: int
    streams: int  # started in the measured window (and completed)
    tokens: int
    all_tokens: int  # the whole run's, ramp and tail included: what the CPU figures cover
    errors: int
    short_streams: int  # completed with fewer tokens than the upstream sends
    seconds: float
    tokens_per_s: float  # all tokens arriving inside the window, whichever stream
    ttft_p50_ms: float
    ttft_p99_ms: float
    itl_p50_ms: float
    itl_p90_ms: float
    itl_p99_ms: float
    itl_p999_ms: float
    itl_max_ms: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class _Run:
    def __init__(self, request: bytes, tokens: int, steady_at: float, stop_at: float) -> None:
        self.request = request
        self.expect = tokens
        self.steady_at = steady_at
        self.stop_at = stop_at
        self.ttft = array("d")
        self.gaps = array("d")
        self.streams = 0
        self.tokens = 0
        self.window_tokens = 0  # every token that arrived inside the measured window
        self.all_tokens = 0  # every token of the run, ramp and tail included
        self.errors = 0
        self.short = 0
        self.open = 0
        self.all_closed = asyncio.Event()


class _Conn(asyncio.Protocol):
    def __init__(self, run: _Run) -> None:
        self.run = run
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self._begin()

    def _begin(self) -> None:
        self.head = b""
        self.in_head = True
        self.carry = b""
        self.done = False
        self.n = 0
        self.sent_at = time.perf_counter()
        self.last = self.sent_at
        self.record = self.sent_at >= self.run.steady_at

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, only look-alikes.
        self.transport = cast(asyncio.Transport, transport)
        self.run.open += 1
        self._begin()
        self.transport.write(self.run.request)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed:
            self.run.errors += 1  # the server hung up mid-stream
        self.closed = True
        self.run.open -= 1
        if self.run.open == 0:
            self.run.all_closed.set()

    def data_received(self, data: bytes) -> None:
        now = time.perf_counter()
        if self.in_head:
            self.head += data
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                return
            if not self.head.startswith(b"HTTP/1.1 200"):
                self._fail()
                return
            data = self.head[end + 4 :]
            self.in_head = False
        buf = self.carry + data
        self.carry = buf[-_CARRY:]
        n = buf.count(_TOKEN)
        if n:
            if self.record:
                if self.n == 0:
                    self.run.ttft.append(now - self.sent_at)
                else:
                    self.run.gaps.append(now - self.last)
                # Tokens that arrive in the same read arrived together: a gap of zero.
                for _ in range(n - 1):
                    self.run.gaps.append(0.0)
            self.n += n
            self.run.all_tokens += n
            self.last = now
            if self.run.steady_at <= now < self.run.stop_at:
                self.run.window_tokens += n
        if not self.done and b"[DONE]" in buf:
            self.done = True
        if self.done and buf.endswith(b"0\r\n\r\n"):
            self._finished(now)

    def _finished(self, now: float) -> None:
        run = self.run
        if self.record:
            run.streams += 1
            run.tokens += self.n
            if self.n < run.expect:
                run.short += 1
        if now < run.stop_at and self.transport is not None:
            self._begin()
            self.transport.write(run.request)
        else:
            self._close()

    def _fail(self) -> None:
        self.run.errors += 1
        self._close()

    def _close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        if not self.closed and self.transport is not None:
            self.run.errors += 1
            self.closed = True
            self.transport.abort()


def _request(port: int, path: str, model: str, key: str | None) -> bytes:
    body = bodies.chat_request(model, stream=True, max_tokens=64)
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    )
    if key:
        head += f"Authorization: Bearer {key}\r\n"
    return head.encode() + b"\r\n" + body


async def _drive(
    port: int,
    path: str,
    model: str,
    key: str | None,
    connections: int,
    tokens: int,
    ramp_s: float,
    seconds: float,
    stream_s: float,
) -> PacedResult:
    loop = asyncio.get_running_loop()
    t0 = time.perf_counter()
    run = _Run(_request(port, path, model, key), tokens, t0 + ramp_s, t0 + ramp_s + seconds)
    conns: list[_Conn] = []
    failed = 0

    async def connect(delay: float) -> None:
        nonlocal failed
        await asyncio.sleep(delay)
        conn = _Conn(run)
        try:
            await loop.create_connection(lambda: conn, HOST, port)
            conns.append(conn)
        except OSError:
            failed += 1

    # Staggered starts spread the streams' token phases evenly over the interval.
    await asyncio.gather(*(connect(ramp_s * i / connections) for i in range(connections)))
    remaining = run.stop_at - time.perf_counter() + stream_s + 15
    try:
        await asyncio.wait_for(run.all_closed.wait(), timeout=max(remaining, 1))
    except TimeoutError:
        for c in conns:
            c.abort()
    ttft = np.frombuffer(run.ttft, dtype=np.float64) * 1e3
    gaps = np.frombuffer(run.gaps, dtype=np.float64) * 1e3

    def pct(a: npt.NDArray[np.float64], q: float) -> float:
        return round(float(np.percentile(a, q)), 3) if a.size else float("nan")

    return PacedResult(
        connections=connections,
        streams=run.streams,
        tokens=run.tokens,
        all_tokens=run.all_tokens,
        errors=run.errors + failed,
        short_streams=run.short,
        seconds=seconds,
        tokens_per_s=round(run.window_tokens / seconds, 1),
        ttft_p50_ms=pct(ttft, 50),
        ttft_p99_ms=pct(ttft, 99),
        itl_p50_ms=pct(gaps, 50),
        itl_p90_ms=pct(gaps, 90),
        itl_p99_ms=pct(gaps, 99),
        itl_p999_ms=pct(gaps, 99.9),
        itl_max_ms=round(float(gaps.max()), 3) if gaps.size else 0.0,
    )


def run(
    port: int,
    path: str,
    model: str,
    key: str | None,
    *,
    connections: int,
    tokens: int,
    interval: float,
    ramp_s: float,
    seconds: float,
) -> PacedResult:
    raise_nofile()
    return uvloop.run(
        _drive(
            port, path, model, key, connections, tokens, ramp_s, seconds, stream_s=tokens * interval
        )
    )

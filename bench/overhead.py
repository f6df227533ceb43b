"""Overhead at concurrency 1: one keep-alive connection, one request at a time, raw sockets.

Per request: latency to the last byte and time to first chunk (the first `data: ` event of
a stream). With no queueing, path minus direct is what the hop itself adds, the way
gateway benchmarks report overhead.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import asdict, dataclass
from typing import Any
from urllib.parse import urlsplit

import uvloop

_HEAD_END = b"\r\n\r\n"
_CHUNKED_END = b"\r\n0\r\n\r\n"


def _pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    s = sorted(xs)
    return s[min(len(s) - 1, int(q / 100 * len(s)))]


@dataclass
class Overhead:
    requests: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    ttfc_p50_ms: float
    ttfc_p99_ms: float
    errors: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


async def _one(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, req: bytes
) -> tuple[float, float]:
    """(latency, time to first chunk) in seconds; raises on a non-200 or malformed answer."""
    t0 = time.perf_counter()
    writer.write(req)
    head = await reader.readuntil(_HEAD_END)
    if head[9:12] != b"200":
        raise RuntimeError(head[:12].decode(errors="replace"))
    lower = head.lower()
    i = lower.find(b"content-length:")
    length = int(lower[i + 15 : lower.index(b"\r\n", i)]) if i >= 0 else -1
    buf = b""
    first = 0.0
    while True:
        if length >= 0 and len(buf) >= length:
            break
        if length < 0 and buf.endswith(_CHUNKED_END):
            break
        data = await reader.read(65536)
        if not data:
            raise ConnectionError("closed mid-answer")
        buf += data
        if not first and (b"data: " in buf or 0 <= length <= len(buf)):
            first = time.perf_counter()
    end = time.perf_counter()
    return end - t0, first - t0


async def _run(url: str, body: bytes, key: str | None, seconds: float, warmup: float) -> Overhead:
    u = urlsplit(url)
    head = (
        f"POST {u.path} HTTP/1.1\r\nHost: {u.netloc}\r\nContent-Type: application/json\r\n"
        + (f"Authorization: Bearer {key}\r\n" if key else "")
        + f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    req = head + body
    reader, writer = await asyncio.open_connection(u.hostname, u.port)
    lat: list[float] = []
    ttfc: list[float] = []
    errors = 0
    try:
        stop_warm = time.perf_counter() + warmup
        while time.perf_counter() < stop_warm:
            await _one(reader, writer, req)
        stop = time.perf_counter() + seconds
        while time.perf_counter() < stop:
            try:
                total, first = await _one(reader, writer, req)
            except (RuntimeError, ConnectionError, asyncio.IncompleteReadError):
                errors += 1
                writer.close()
                reader, writer = await asyncio.open_connection(u.hostname, u.port)
                continue
            lat.append(total * 1e3)
            ttfc.append(first * 1e3)
    finally:
        writer.close()
    return Overhead(
        len(lat),
        round(_pct(lat, 50), 4),
        round(_pct(lat, 90), 4),
        round(_pct(lat, 99), 4),
        round(_pct(ttfc, 50), 4),
        round(_pct(ttfc, 99), 4),
        errors,
    )


def run(url: str, body: bytes, key: str | None, *, seconds: float, warmup: float) -> Overhead:
    return uvloop.run(_run(url, body, key, seconds, warmup))

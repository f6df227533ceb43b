"""The second floor: the same pass-through on leaner pieces (granian RSGI + a raw asyncio
HTTP/1.1 client over a keep-alive pool), so what the router's features cost stays visible
if its hot path moves onto these. `--client aiohttp` keeps RSGI but uses the ASGI floor's
client: the split between the server-side and the client-side saving.

Run: python -m bench.floor_rsgi --port P --routes '{"model": "http://host:port/path", ...}'
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

import msgspec

_ROUTES: dict[str, str] = json.loads(os.environ.get("BENCH_FLOOR_ROUTES", "{}"))
_JSON = [("content-type", "application/json")]
_SSE = [("content-type", "text/event-stream")]


class _Model(msgspec.Struct):
    model: str = ""
    stream: bool = False


_decode = msgspec.json.Decoder(_Model).decode


class Upstream:
    """One origin: a head prefix made once, and a stack of idle keep-alive connections."""

    def __init__(self, url: str) -> None:
        u = urlsplit(url)
        self.host, self.port = u.hostname or "127.0.0.1", u.port or 80
        self.head = (
            f"POST {u.path} HTTP/1.1\r\nHost: {u.netloc}\r\n"
            "Content-Type: application/json\r\nContent-Length: "
        ).encode()
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

    async def post(self, body: bytes) -> AsyncIterator[bytes]:
        """Yields the status line's code as bytes first, then the body as it arrives."""
        conn = self.idle.pop() if self.idle else await asyncio.open_connection(self.host, self.port)
        reader, writer = conn
        writer.write(self.head + b"%d\r\n\r\n" % len(body) + body)
        head = await reader.readuntil(b"\r\n\r\n")
        yield head[9:12]
        lower = head.lower()
        i = lower.find(b"content-length:")
        if i >= 0:
            left = int(lower[i + 15 : lower.index(b"\r\n", i)])
            while left > 0:
                data = await reader.read(min(left, 65536))
                if not data:
                    raise ConnectionError("upstream closed mid-body")
                left -= len(data)
                yield data
        else:  # chunked
            while size := int((await reader.readuntil(b"\r\n"))[:-2].split(b";")[0], 16):
                yield await reader.readexactly(size)
                await reader.readexactly(2)
            await reader.readuntil(b"\r\n")
        self.idle.append(conn)


_UPSTREAMS: dict[str, Upstream] = {}
# "aiohttp": the same server side with the ASGI floor's client, to split the two savings.
_AIOHTTP = os.environ.get("BENCH_FLOOR_CLIENT") == "aiohttp"
_session: Any = None


async def _aiohttp_post(url: str, body: bytes) -> AsyncIterator[bytes]:
    global _session
    import aiohttp

    if _session is None:
        _session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=4096),
            headers={"Content-Type": "application/json"},
            skip_auto_headers=("User-Agent",),
        )
    async with _session.post(url, data=body) as resp:
        yield b"%d" % resp.status
        while data := await resp.content.readany():
            yield data


async def app(scope: Any, proto: Any) -> None:
    body = await proto()
    req = _decode(body)
    if _AIOHTTP:
        parts = _aiohttp_post(_ROUTES[req.model], body)
    else:
        up = _UPSTREAMS.get(req.model)
        if up is None:
            up = _UPSTREAMS[req.model] = Upstream(_ROUTES[req.model])
        parts = up.post(body)
    status = int(await anext(parts))
    if not req.stream:
        proto.response_bytes(status, _JSON, b"".join([p async for p in parts]))
        return
    tr = proto.response_stream(status, _SSE)
    async for data in parts:
        await tr.send_bytes(data)


def main() -> None:
    from granian import Granian
    from granian.constants import Interfaces, Loops

    p = argparse.ArgumentParser(prog="python -m bench.floor_rsgi")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--routes", required=True, help="JSON object: model name -> upstream URL")
    p.add_argument("--client", choices=("raw", "aiohttp"), default="raw")
    a = p.parse_args()
    os.environ["BENCH_FLOOR_ROUTES"] = a.routes
    os.environ["BENCH_FLOOR_CLIENT"] = a.client
    Granian(
        "bench.floor_rsgi:app",
        address="127.0.0.1",
        port=a.port,
        interface=Interfaces.RSGI,
        workers=1,
        loop=Loops.uvloop,
        log_enabled=True,
        log_level="warning",
        backlog=2048,
    ).serve()


if __name__ == "__main__":
    main()

"""The floor: the thinnest pass-through on the router's stack (granian ASGI + aiohttp + msgspec).

Decode the body, pick the upstream by model, relay the bytes: no auth, no rewrite, no
metrics. Whatever the router costs beyond this row is what its features cost.

Run: python -m bench.floor --port P --routes '{"model": "http://host:port/path", ...}'
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

import aiohttp
import msgspec

_ROUTES: dict[str, str] = json.loads(os.environ.get("BENCH_FLOOR_ROUTES", "{}"))
_JSON = [(b"content-type", b"application/json")]
_SSE = [(b"content-type", b"text/event-stream")]


class _Model(msgspec.Struct):
    model: str = ""
    stream: bool = False


_decode = msgspec.json.Decoder(_Model).decode
_session: aiohttp.ClientSession | None = None


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    global _session
    if scope["type"] == "lifespan":
        while (msg := await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        if _session is not None:
            await _session.close()
        await send({"type": "lifespan.shutdown.complete"})
        return
    msg = await receive()
    body = msg.get("body", b"")
    while msg.get("more_body"):
        msg = await receive()
        body += msg.get("body", b"")
    req = _decode(body)
    if _session is None:
        _session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=4096),
            headers={"Content-Type": "application/json"},
            skip_auto_headers=("User-Agent",),
        )
    async with _session.post(_ROUTES[req.model], data=body) as resp:
        if not req.stream:
            data = await resp.read()
            headers = [*_JSON, (b"content-length", b"%d" % len(data))]
            await send({"type": "http.response.start", "status": resp.status, "headers": headers})
            await send({"type": "http.response.body", "body": data})
            return
        await send({"type": "http.response.start", "status": resp.status, "headers": _SSE})
        while data := await resp.content.readany():
            await send({"type": "http.response.body", "body": data, "more_body": True})
        await send({"type": "http.response.body", "body": b""})


def main() -> None:
    from granian import Granian
    from granian.constants import Interfaces, Loops

    p = argparse.ArgumentParser(prog="python -m bench.floor")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--routes", required=True, help="JSON object: model name -> upstream URL")
    a = p.parse_args()
    os.environ["BENCH_FLOOR_ROUTES"] = a.routes
    Granian(
        "bench.floor:app",
        address="127.0.0.1",
        port=a.port,
        interface=Interfaces.ASGI,
        workers=1,
        loop=Loops.uvloop,
        log_enabled=True,
        log_level="warning",
        backlog=2048,
    ).serve()


if __name__ == "__main__":
    main()

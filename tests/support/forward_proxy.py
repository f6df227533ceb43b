"""A tiny HTTP forward proxy for tests: absolute-form requests (each one recorded and passed on
in origin-form) and CONNECT tunnels (recorded, then bytes piped both ways), in a background
thread with its own event loop. `refuse=True` answers every CONNECT with 403."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from urllib.parse import urlsplit


class ForwardProxy:
    def __init__(self, *, refuse: bool = False) -> None:
        self.refuse = refuse
        self.port = 0
        # (request line, lower-cased header names -> values), in arrival order.
        self.seen: list[tuple[str, dict[str, str]]] = []
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def lines(self) -> list[str]:
        return [line for line, _ in self.seen]

    def __enter__(self) -> ForwardProxy:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    def __exit__(self, *exc: object) -> None:
        async def stop() -> None:
            if self._server is not None:
                self._server.close()

        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    async def _start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream: asyncio.StreamWriter | None = None
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                line, *fields = head.decode("latin-1").split("\r\n")[:-2]
                headers = {}
                for f in fields:
                    name, _, value = f.partition(":")
                    headers[name.strip().lower()] = value.strip()
                self.seen.append((line, headers))
                method, target, _ = line.split(" ")
                if method == "CONNECT":
                    if self.refuse:
                        writer.write(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
                        return
                    host, _, port = target.rpartition(":")
                    up_r, up_w = await asyncio.open_connection(host.strip("[]"), int(port))
                    writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
                    await asyncio.gather(_pipe(reader, up_w), _pipe(up_r, writer))
                    return
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                url = urlsplit(target)
                if upstream is None:
                    up_r, upstream = await asyncio.open_connection(url.hostname, url.port or 80)
                    asyncio.get_running_loop().create_task(_pipe(up_r, writer))
                origin_form = url.path + (f"?{url.query}" if url.query else "")
                kept = [f for f in fields if not f.lower().startswith("proxy-authorization:")]
                out = "\r\n".join([f"{method} {origin_form} HTTP/1.1", *kept]) + "\r\n\r\n"
                upstream.write(out.encode("latin-1") + body)
        except (asyncio.IncompleteReadError, ConnectionError, ValueError):
            pass
        finally:
            writer.close()
            if upstream is not None:
                upstream.close()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError, OSError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    with contextlib.suppress(ConnectionError, OSError, RuntimeError):
        writer.write_eof()

"""A scripted Redis for protocol abuse: a TCP server on a free port that parses each command
with hiredis and writes whatever `answer(args)` returns (raw RESP bytes, right or wrong).
Everything it received stays in `commands`."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import hiredis

Answer = Callable[[list[bytes]], bytes]


def default(args: list[bytes]) -> bytes:
    """What a Redis with nothing in it would say to the limits stores' setup commands."""
    name = args[0].upper()
    if name == b"SCRIPT":
        return b"$40\r\n" + b"0" * 40 + b"\r\n"
    return b"+OK\r\n"


class FakeRedis:
    def __init__(self, answer: Answer) -> None:
        self.answer = answer
        self.commands: list[list[bytes]] = []
        self.connections = 0
        self.writers: list[asyncio.StreamWriter] = []
        self.server: asyncio.Server | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def __aenter__(self) -> FakeRedis:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        for w in self.writers:
            w.transport.abort()

    async def _serve(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.writers.append(w)
        reader = hiredis.Reader()
        try:
            while data := await r.read(65536):
                reader.feed(data)
                while (args := reader.gets()) is not False:
                    self.commands.append(args)
                    w.write(self.answer(args))
                await w.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            w.close()

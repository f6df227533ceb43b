"""A unix-socket server on a daemon thread of the main process, serving its workers (the
shared limits' counters, the prefix indexes' relay) on a uvloop loop of its own: each wake-up
of that thread is CPU taken from the workers that share its core, and uvloop makes one
cheaper than asyncio's own loop."""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from collections.abc import Callable

import uvloop


def serve_unix(path: str, protocol: Callable[[], asyncio.Protocol], name: str) -> threading.Thread:
    """Serve `protocol` on `path` (a stale socket file there is replaced) from a daemon thread;
    returns once it listens. `name`: the thread's, and what a failure to start names."""
    ready = threading.Event()

    async def main() -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        server = await asyncio.get_running_loop().create_unix_server(protocol, path=path)
        ready.set()
        async with server:
            await server.serve_forever()

    def run() -> None:
        uvloop.new_event_loop().run_until_complete(main())

    t = threading.Thread(target=run, name=name, daemon=True)
    t.start()
    if not ready.wait(10):
        raise RuntimeError(f"{name} did not start on {path}")
    return t

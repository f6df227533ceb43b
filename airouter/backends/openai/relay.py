"""An OpenAI-compatible upstream's SSE stream, read from the upstream connection and fed to
the sans-IO relay (relay_state.py); the connection handed back to the pool or closed at
the end."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

from airouter.backends.base import Stats, Target
from airouter.backends.http.client import Disconnected, HttpError, Response
from airouter.backends.openai.relay_state import MODEL, RelayState
from airouter.errors import BadGateway, GatewayTimeout, RouterError


def rewrite_model(payload: bytes, target: Target) -> bytes:
    return MODEL.sub(target.model_repl, payload, count=1)


def _read_failed(name: str, e: Exception) -> RouterError:
    if isinstance(e, TimeoutError):
        return GatewayTimeout(
            f"The backend '{name}' stopped sending for longer than its idle_timeout."
        )
    # A connection closed before the first event can be retried on another node (failover
    # only ever sees errors from before the first event reached the client).
    return BadGateway(f"The backend '{name}' broke off the stream: {type(e).__name__}.",
                      retryable=isinstance(e, Disconnected))


class Relay:
    """An upstream SSE stream, relayed as reads arrive."""

    __slots__ = ("name", "resp", "state", "on_close")

    def __init__(self, name: str, resp: Response, target: Target,
                 stats: Stats, on_close: Callable[[], None]) -> None:
        self.name = name
        self.on_close = on_close
        self.resp = resp
        self.state = RelayState(name, target.model_repl, stats)

    async def _read(self) -> bytes:
        """What the upstream sent next (b"" at its end), its failures as router errors."""
        try:
            return await self.resp.readany()
        except (TimeoutError, HttpError) as e:
            raise _read_failed(self.name, e) from None

    async def next_batch(self) -> list[bytes] | None:
        """The next non-empty batch, or None at the end of the stream."""
        state = self.state
        while not state.done:
            batch = state.batch(await self._read())
            if batch:
                return batch
        state.end()
        return None

    async def next_raw(self) -> bytes | None:
        """The next whole SSE events, passed through as read, or None at the end."""
        state = self.state
        while True:
            if state.failed is not None:
                raise state.failed
            if state.done:
                state.end()
                return None
            was_raw = state.raw_ok
            out = state.raw(await self._read())
            # An upstream that needs the decoder is answered at once, events or not yet: the
            # client gets its headers as soon as the upstream's stream began.
            if out is None or out or was_raw != state.raw_ok:
                return out

    def iterate_raw(self, first: bytes | None) -> AsyncIterator[bytes]:
        return _Raw(self, first)

    async def iterate(self, first: list[bytes] | None) -> AsyncIterator[list[bytes]]:
        batch = first
        while batch is not None:
            yield batch
            batch = await self.next_batch()

    async def aclose(self) -> None:
        resp = self.resp
        done = self.state.done
        try:
            if done and not resp.at_eof():
                # [DONE] came before the body's end marker: wait a moment for it, so the
                # connection can be reused instead of paying a new handshake per stream.
                async with asyncio.timeout(0.05):
                    await resp.read()
        except (TimeoutError, HttpError):
            pass
        finally:
            # Whatever interrupted the wait (a cancellation too): close(), not release(), for
            # an unfinished stream: it must not go back to the pool, and closing the socket is
            # how the upstream learns the client went away.
            if done and resp.at_eof():
                resp.release()
            else:
                resp.close()
            self.on_close()


class _Raw:
    """Relay.next_raw as an iterator: per read one coroutine of its own instead of a generator
    and the two coroutines under it (a stream's per-token cost)."""

    __slots__ = ("relay", "first", "ended")

    def __init__(self, relay: Relay, first: bytes | None) -> None:
        self.relay = relay
        self.first = first
        self.ended = first is None

    def __aiter__(self) -> _Raw:
        return self

    async def __anext__(self) -> bytes:
        first = self.first
        if first is not None:
            self.first = None
            if first:
                return first
        if self.ended:
            raise StopAsyncIteration
        relay = self.relay
        state = relay.state
        resp = relay.resp
        while True:
            if state.failed is not None:
                self.ended = True
                raise state.failed
            if state.done:
                self.ended = True
                state.end()
                raise StopAsyncIteration
            try:
                data = await resp.readany()  # Relay._read inlined: no coroutine per read
            except (TimeoutError, HttpError) as e:
                raise _read_failed(relay.name, e) from None
            out = state.raw(data)
            if out is None:
                self.ended = True
                raise StopAsyncIteration
            if out:
                return out

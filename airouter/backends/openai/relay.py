"""An OpenAI-compatible upstream's SSE stream, read from the upstream connection and fed to
the sans-IO relay (relay_state.py); the connection handed back to the pool or closed at
the end."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

from airouter.backends.base import Reply, Stats, Target
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
                 stats: Stats, on_close: Callable[[], None],
                 state: RelayState | None = None) -> None:
        self.name = name
        self.on_close = on_close
        self.resp = resp
        self.state = state or RelayState(name, target.model_repl, stats)

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

    def iterate_raw(self, first: bytes | None, resume: Resume | None = None
                    ) -> AsyncIterator[bytes]:
        """The stream from its first events on. `resume`: called when the upstream broke off
        after the stream began, for a reply (from this module's relay) that continues it;
        it raises the error it was given when it cannot."""
        return _Raw(self, first, resume)

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


Resume = Callable[[RouterError], Awaitable[Reply]]


class _Raw:
    """Relay.next_raw as an iterator: per read one coroutine of its own instead of a generator
    and the two coroutines under it (a stream's per-token cost). A broken upstream is handed
    to `resume` (when set), and the stream goes on with the relay of the reply it returns."""

    __slots__ = ("relay", "first", "ended", "resume", "finished")

    def __init__(self, relay: Relay, first: bytes | None, resume: Resume | None = None) -> None:
        self.relay = relay
        self.first = first
        self.ended = first is None
        self.resume = resume
        # The upstream's [DONE] came with what was handed out last: the next step ends
        # (base.Finishing). An attribute, not a property: it is read once per event.
        self.finished = relay.state.done and relay.state.complete

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
                try:
                    state.end()
                except RouterError as e:  # cut short: no [DONE], no finish_reason
                    if self.resume is None:
                        raise
                    err = e
                else:
                    raise StopAsyncIteration
                return await self._resumed(err)
            try:
                data = await resp.readany()  # Relay._read inlined: no coroutine per read
            except (TimeoutError, HttpError) as e:
                err = _read_failed(relay.name, e)
                if self.resume is None:
                    raise err from None
            else:
                try:
                    out = state.raw(data)
                except RouterError as e:
                    # An event that is not JSON is not resumed; the end of a stream cut short
                    # (in the middle of an event, too) is.
                    if self.resume is None or (data and e is state.failed):
                        raise
                    err = e
                else:
                    if out is None:
                        self.ended = True
                        raise StopAsyncIteration
                    if out:
                        if state.done:
                            self.finished = state.complete
                        return out
                    continue
            return await self._resumed(err)

    async def _resumed(self, err: RouterError) -> bytes:
        """Go on with the continuation's relay (or raise `err`)."""
        assert self.resume is not None
        self.ended = True
        nxt = (await self.resume(err)).sse
        assert isinstance(nxt, _Raw)
        self.relay, self.first, self.ended = nxt.relay, nxt.first, nxt.ended
        self.finished = nxt.finished
        return await self.__anext__()

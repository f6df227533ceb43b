"""n choices from n backend calls: opened together, their chunk streams interleaved as they come."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import cast

from airouter.backends.base import Reply, Stats
from airouter.output.chunks import ChunkWriter

_END = object()


async def fan_out(opens: list[Awaitable[Reply]], tail: Callable[[], list[bytes]]) -> Reply:
    """Open every call; the first error (after the others are closed) is the request's error.

    The merged stream yields each call's batches whole (a batch is one choice's), then `tail()`
    (the summed usage, say) once every call has ended. Closing it closes all the calls.
    """
    tasks = [asyncio.ensure_future(o) for o in opens]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
    except asyncio.CancelledError:
        await _close_all(tasks)
        raise
    if any(t.done() and not t.cancelled() and t.exception() is not None for t in tasks):
        await _close_all(tasks)
        for t in tasks:
            if t.done() and not t.cancelled() and (e := t.exception()) is not None:
                raise e
    merged = _Merged([t.result() for t in tasks], tail)
    return Reply(chunks=merged.stream(), aclose=merged.aclose)


def summed(
    total: Stats, parts: list[Stats], writer: ChunkWriter | None
) -> Callable[[], list[bytes]]:
    """The tail of n choices: their stats summed into `total`, and the usage chunk if wanted.
    As OpenAI does, the prompt counts once and every choice's completion tokens count."""

    def tail() -> list[bytes]:
        total.prompt_tokens = parts[0].prompt_tokens or 0
        total.completion_tokens = sum(s.completion_tokens or 0 for s in parts)
        total.finish_reason = parts[0].finish_reason
        if writer is None:
            return []
        return [writer.usage(total.prompt_tokens, total.completion_tokens)]

    return tail


async def _close_all(tasks: Sequence[asyncio.Future[Reply]]) -> None:
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for t in tasks:
        if t.done() and not t.cancelled() and t.exception() is None:
            await t.result().aclose()


class _Merged:
    """One pump task per call (not per chunk) feeds a small queue; the consumer drains it."""

    __slots__ = ("replies", "tail", "queue", "pumps")

    def __init__(self, replies: list[Reply], tail: Callable[[], list[bytes]]) -> None:
        self.replies = replies
        self.tail = tail
        self.queue: asyncio.Queue[object] = asyncio.Queue(maxsize=4 * len(replies))
        self.pumps: list[asyncio.Task[None]] = []

    async def _pump(self, chunks: AsyncIterator[list[bytes]]) -> None:
        try:
            async for batch in chunks:
                await self.queue.put(batch)
        except Exception as e:  # noqa: BLE001 - handed to the consumer, raised there
            await self.queue.put(e)
            return
        await self.queue.put(_END)

    async def stream(self) -> AsyncIterator[list[bytes]]:
        self.pumps = [
            asyncio.create_task(self._pump(r.chunks)) for r in self.replies if r.chunks is not None
        ]
        left = len(self.pumps)
        while left:
            item = await self.queue.get()
            if item is _END:
                left -= 1
            elif isinstance(item, Exception):
                raise item
            else:
                yield cast(list[bytes], item)
        last = self.tail()
        if last:
            yield last

    async def aclose(self) -> None:
        for p in self.pumps:
            p.cancel()
        for p in self.pumps:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await p
        for r in self.replies:
            await r.aclose()

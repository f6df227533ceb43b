"""The limits' Redis reply parsing per reply: the hand-written parser the store used before
(kept here, as it was, for comparison) against resp's hiredis reader, for a one-item reply
(an admission's answer) and a 20,000-item reply, whole and in 1 KiB pieces (a large reply
arrives in pieces; the old parser started again from the beginning at each one)."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any

import pytest
from pytest_benchmark.fixture import BenchmarkFixture

from airouter.limits.resp import Connection

_INCOMPLETE = object()


def _parse(buf: bytes | bytearray, pos: int) -> tuple[Any, int]:
    end = buf.find(b"\r\n", pos)
    if end < 0:
        return _INCOMPLETE, pos
    kind = buf[pos]
    line = buf[pos + 1:end]
    if kind == 36:
        n = int(line)
        if n < 0:
            return None, end + 2
        stop = end + 2 + n
        if len(buf) < stop + 2:
            return _INCOMPLETE, pos
        return bytes(buf[end + 2:stop]), stop + 2
    if kind == 43:
        return bytes(line).decode(), end + 2
    if kind == 58:
        return int(line), end + 2
    if kind == 42:
        n = int(line)
        items: list[Any] = []
        at = end + 2
        for _ in range(n):
            item, nxt = _parse(buf, at)
            if item is _INCOMPLETE:
                return _INCOMPLETE, pos
            items.append(item)
            at = nxt
        return items, at
    raise ValueError(kind)


class OldConnection:
    """The old Connection's data_received, without its transport."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._waiting: deque[Callable[[Any], None]] = deque()

    def data_received(self, data: bytes) -> None:
        buf = self._buf
        if buf:
            buf += data
            data = bytes(buf)
            buf.clear()
        pos, size = 0, len(data)
        while pos < size:
            reply, pos = _parse(data, pos)
            if reply is _INCOMPLETE:
                break
            self._waiting.popleft()(reply)
        if pos < size:
            buf += data[pos:]


ONE = b"$20\r\n" + b"x" * 20 + b"\r\n"
BIG = b"*20000\r\n" + b"$3\r\nabc\r\n" * 20_000
PIECES = [BIG[i:i + 1024] for i in range(0, len(BIG), 1024)]
CASES = {"1-item": [ONE], "20k-items": [BIG], "20k-items-1KiB-pieces": PIECES}


@pytest.mark.parametrize("parser", ["old", "hiredis"])
@pytest.mark.parametrize("case", list(CASES))
def test_resp_reply(benchmark: BenchmarkFixture, parser: str, case: str) -> None:
    """One reply on a connection that stays open (as the store's does)."""
    pieces = CASES[case]
    conn = OldConnection() if parser == "old" else Connection()
    got: list[Any] = []
    waiting = conn._waiting

    def one() -> None:
        waiting.append(got.append)
        for p in pieces:
            conn.data_received(p)

    if parser == "old" and case.endswith("pieces"):
        benchmark.pedantic(one, rounds=3, iterations=1)
    else:
        benchmark(one)
    assert got and len(got[-1]) == (20 if case == "1-item" else 20_000)

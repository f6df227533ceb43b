"""The Redis reply parser of the limits store: every reply kind, pipelined replies in order,
and the same replies however the socket splits them."""

from __future__ import annotations

import time
from typing import Any

import pytest

from airouter.limits.resp import Connection, ProtocolError, ReplyError, command

REPLIES = b"".join([
    b"$5\r\nhe\r\no\r\n",  # a bulk string holding CRLF
    b"+OK\r\n",
    b":-42\r\n",
    b"$-1\r\n",
    b"-NOSCRIPT No matching script\r\n",
    b"*3\r\n$1\r\na\r\n:7\r\n*1\r\n+x\r\n",
    b"$0\r\n\r\n",
])
WANT: list[Any] = [b"he\r\no", b"OK", -42, None, "NOSCRIPT No matching script",
                   [b"a", 7, [b"x"]], b""]


def _fed(*pieces: bytes) -> list[Any]:
    conn = Connection()
    got: list[Any] = []
    for _ in WANT:
        conn._waiting.append(got.append)
    for p in pieces:
        conn.data_received(p)
    return [str(r) if isinstance(r, ReplyError) else r for r in got]


def test_replies_in_order() -> None:
    assert _fed(REPLIES) == WANT


@pytest.mark.parametrize("cut", range(1, len(REPLIES)))
def test_replies_split_anywhere(cut: int) -> None:
    assert _fed(REPLIES[:cut], REPLIES[cut:]) == WANT


def test_replies_byte_by_byte() -> None:
    assert _fed(*(REPLIES[i:i + 1] for i in range(len(REPLIES)))) == WANT


def test_a_reply_nobody_asked_for_closes_the_connection() -> None:
    conn = Connection()
    conn.data_received(b"+OK\r\n")
    assert isinstance(conn.error, ProtocolError)


def test_command_is_resp() -> None:
    assert command(b"GET", b"k\r\n") == b"*2\r\n$3\r\nGET\r\n$3\r\nk\r\n\r\n"


def test_a_long_reply_in_small_pieces_costs_linear_time() -> None:
    """A 20,000-item reply arriving 1 KiB at a time is parsed once, not once per piece."""
    reply = b"*20000\r\n" + b"$3\r\nabc\r\n" * 20_000
    conn = Connection()
    got: list[Any] = []
    conn._waiting.append(got.append)
    start = time.perf_counter()
    for i in range(0, len(reply), 1024):
        conn.data_received(reply[i:i + 1024])
    took = time.perf_counter() - start
    assert got == [[b"abc"] * 20_000]
    assert took < 0.1, f"{took * 1000:.0f} ms"


def test_deep_nesting_closes_the_connection_without_raising() -> None:
    conn = Connection()
    got: list[Any] = []
    conn._waiting.append(got.append)
    conn.data_received(b"*1\r\n" * 100_000 + b":1\r\n")
    assert isinstance(conn.error, ProtocolError)
    assert len(got) == 1 and isinstance(got[0], ProtocolError)

"""The Redis reply parser of the limits store: every reply kind, pipelined replies in order,
and the same replies however the socket splits them."""

from __future__ import annotations

from typing import Any

import pytest

from airouter.limits.resp import Connection, ReplyError, command

REPLIES = b"".join([
    b"$5\r\nhe\r\no\r\n",  # a bulk string holding CRLF
    b"+OK\r\n",
    b":-42\r\n",
    b"$-1\r\n",
    b"-NOSCRIPT No matching script\r\n",
    b"*3\r\n$1\r\na\r\n:7\r\n*1\r\n+x\r\n",
    b"$0\r\n\r\n",
])
WANT: list[Any] = [b"he\r\no", "OK", -42, None, "NOSCRIPT No matching script",
                   [b"a", 7, ["x"]], b""]


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
    assert isinstance(conn.error, ReplyError)


def test_command_is_resp() -> None:
    assert command(b"GET", b"k\r\n") == b"*2\r\n$3\r\nGET\r\n$3\r\nk\r\n\r\n"

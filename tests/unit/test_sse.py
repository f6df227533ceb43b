"""The SSE decoder, fed every split of realistic upstream bytes."""

from __future__ import annotations

import pytest

from airouter.protocol.sse import SSEDecoder, frame

STREAM = (
    b': keep-alive\n\ndata: {"a":1}\n\ndata:{"b":"caf\xc3\xa9"}\r\n\r\n'
    b"event: message\ndata: line1\ndata: line2\nid: 7\n\n"
    b"data: [DONE]\n\n"
)
WANT = [b'{"a":1}', b'{"b":"caf\xc3\xa9"}', b"line1\nline2", b"[DONE]"]


def decode_in_pieces(data: bytes, cuts: list[int]) -> list[bytes]:
    d = SSEDecoder()
    out: list[bytes] = []
    prev = 0
    for c in [*cuts, len(data)]:
        out += d.feed(data[prev:c])
        prev = c
    return out + d.close()


def test_whole() -> None:
    assert decode_in_pieces(STREAM, []) == WANT


@pytest.mark.parametrize("cut", range(1, len(STREAM)))
def test_every_single_split(cut: int) -> None:
    assert decode_in_pieces(STREAM, [cut]) == WANT


def test_every_pair_of_splits() -> None:
    n = len(STREAM)
    for i in range(1, n):
        for j in range(i, n):
            assert decode_in_pieces(STREAM, [i, j]) == WANT, (i, j)


def test_byte_at_a_time_and_lone_cr() -> None:
    data = b"data: x\r\rdata: y\r\n\r\n"
    assert decode_in_pieces(data, list(range(1, len(data)))) == [b"x", b"y"]


def test_unterminated_last_event_is_dispatched_on_close() -> None:
    assert decode_in_pieces(b"data: a\n\ndata: b\n", []) == [b"a", b"b"]


def test_frame() -> None:
    assert frame([b"1"]) == b"data: 1\n\n"
    assert frame([b"1", b"2"]) == b"data: 1\n\ndata: 2\n\n"
    # A multi-line payload stays one event, and decodes back to itself.
    framed = frame([b'{"a":\n1}'])
    assert framed == b'data: {"a":\ndata: 1}\n\n'
    assert SSEDecoder().feed(framed) == [b'{"a":\n1}']

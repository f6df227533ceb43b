"""The Triton stream client's byte handling: HTTP/2 frames, gRPC messages, BYTES tensors and
call statuses, whatever the reads' boundaries."""

from __future__ import annotations

import struct

import pytest
from hpack import Decoder

from airouter.backends.triton import h2frames as h2
from airouter.backends.triton.models import first_bytes

FRAMES = [
    (h2.SETTINGS, 0, 0, h2.settings({h2.INITIAL_WINDOW_SIZE: 1 << 20})[9:]),
    (h2.HEADERS, h2.END_HEADERS, 1, b"\x88"),
    (h2.DATA, 0, 1, b"x" * 300),
    (h2.DATA, h2.END_STREAM, 3, b""),
    (h2.PING, h2.ACK, 0, b"12345678"),
    (h2.WINDOW_UPDATE, 0, 5, struct.pack(">I", 1000)),
]
WIRE = b"".join(h2.frame(*f) for f in FRAMES)


def test_frames_round_trip() -> None:
    assert h2.FrameReader().feed(WIRE) == FRAMES


@pytest.mark.parametrize("cut", range(len(WIRE) + 1))
def test_frames_split_at_every_position(cut: int) -> None:
    r = h2.FrameReader()
    assert r.feed(WIRE[:cut]) + r.feed(WIRE[cut:]) == FRAMES


def test_frames_byte_by_byte() -> None:
    r = h2.FrameReader()
    got = [f for i in range(len(WIRE)) for f in r.feed(WIRE[i : i + 1])]
    assert got == FRAMES


def test_a_frame_over_the_announced_size_is_an_error() -> None:
    with pytest.raises(ValueError, match="limit"):
        h2.FrameReader(max_size=100).feed(h2.frame(h2.DATA, 0, 1, b"x" * 101))


def test_the_stream_id_drops_the_reserved_bit() -> None:
    raw = bytearray(h2.frame(h2.DATA, 0, 7, b"a"))
    raw[5] |= 0x80
    assert h2.FrameReader().feed(bytes(raw)) == [(h2.DATA, 0, 7, b"a")]


MESSAGES = [b"", b"a", b"hello world" * 30, bytes(range(256))]
PAYLOAD = b"".join(h2.grpc_message(m) for m in MESSAGES)


@pytest.mark.parametrize("cut", range(len(PAYLOAD) + 1))
def test_messages_split_at_every_position(cut: int) -> None:
    d, out = h2.Deframer(1 << 20), []
    d.feed(PAYLOAD[:cut], out)
    d.feed(PAYLOAD[cut:], out)
    assert out == MESSAGES
    assert d.partial == 0


def test_messages_byte_by_byte_and_the_partial_count() -> None:
    d, out = h2.Deframer(1 << 20), []
    for i in range(len(PAYLOAD)):
        d.feed(PAYLOAD[i : i + 1], out)
    assert out == MESSAGES
    d.feed(h2.grpc_message(b"abc")[:6], out)
    assert d.partial == 6 and out == MESSAGES


def test_a_compressed_or_oversized_message_is_an_error() -> None:
    with pytest.raises(ValueError, match="compressed"):
        h2.Deframer(100).feed(b"\x01" + struct.pack(">I", 1) + b"a", [])
    with pytest.raises(ValueError, match="limit"):
        h2.Deframer(100).feed(h2.grpc_message(b"x" * 101), [])


def test_unpad() -> None:
    assert h2.unpad(0, b"abc") == b"abc"
    assert h2.unpad(h2.PADDED, b"\x02abcXX") == b"abc"
    prio = b"\x00\x00\x00\x01\x10"
    assert h2.unpad(h2.PADDED | h2.PRIORITY_FLAG, b"\x01" + prio + b"hdrX", priority=True) == b"hdr"
    with pytest.raises(ValueError):
        h2.unpad(h2.PADDED, b"\x09abc")
    with pytest.raises(ValueError):
        h2.unpad(h2.PADDED, b"")


def test_control_payloads() -> None:
    assert h2.read_settings(h2.settings({1: 2, 4: 65535})[9:]) == {1: 2, 4: 65535}
    assert h2.read_u32(h2.window_update(1, 99)[9:]) == 99
    assert h2.read_u32(h2.rst_stream(1, h2.CANCEL)[9:]) == h2.CANCEL
    assert h2.read_u32(b"") == 0
    assert h2.read_goaway(h2.goaway(7, h2.NO_ERROR)[9:]) == (7, h2.NO_ERROR)
    assert h2.read_goaway(b"\x00") == (0, h2.PROTOCOL_ERROR)


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ([(":status", "200"), ("content-type", "application/grpc")], None),
        ([("grpc-status", "0")], (0, "")),
        ([("grpc-status", "3"), ("grpc-message", "bad%20input%3A%20%C3%A9")],
         (3, "bad input: é")),
        # Trailers-only: the status in the response headers.
        ([(":status", "200"), ("grpc-status", "5"), ("grpc-message", "no model")],
         (5, "no model")),
        ([(":status", "503")], (h2.UNAVAILABLE, "HTTP status 503")),
        ([(":status", "404"), ("grpc-status", "0")], (h2.UNIMPLEMENTED, "HTTP status 404")),
        ([(":status", "418")], (h2.UNKNOWN, "HTTP status 418")),
        ([("grpc-status", "x")], (h2.UNKNOWN, "")),
    ],
)
def test_call_status(headers: list[tuple[str, str]], status: tuple[int, str] | None) -> None:
    assert h2.call_status(headers) == status


def bytes_tensor(*items: bytes) -> bytes:
    return b"".join(struct.pack("<I", len(b)) + b for b in items)


@pytest.mark.parametrize(
    ("raw", "first"),
    [
        (bytes_tensor(b"Hello"), b"Hello"),
        (bytes_tensor(b"", b"x"), b""),
        (bytes_tensor(b"\xc3", b"\xa9"), b"\xc3"),
        (b"", b""),
        (b"\x05\x00\x00", b""),
        # A length past the end: what there is.
        (b"\x09\x00\x00\x00abc", b"abc"),
    ],
)
def test_first_element_of_a_bytes_tensor(raw: bytes, first: bytes) -> None:
    assert first_bytes(raw) == first


@pytest.mark.parametrize("size", [0, 1, 126, 127, 128, 254, 255, 300, 16_383, 16_384, 70_000])
def test_header_fields_decode_as_sent_and_leave_the_table_empty(size: int) -> None:
    fields = [(":method", "POST"), (":path", "/inference.GRPCInferenceService/ModelStreamInfer"),
              ("x-" + "n" * size, "v" * size), ("traceparent", "00-" + "ab" * 16 + "-01"),
              ("x-label", "caf\u00e9")]
    decoder = Decoder(max_header_list_size=1 << 20)
    block = b"".join(h2.header_field(n, v) for n, v in fields)
    assert decoder.decode(block) == fields
    # Never indexed: the same bytes mean the same fields every time, nothing was added.
    assert decoder.decode(block) == fields
    assert len(decoder.header_table.dynamic_entries) == 0

"""grpc_wire against a scripted HTTP/2 server: what a real Triton seldom does (GOAWAY, a
refused stream, padding, header blocks in pieces, pings, small windows)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import pytest
from hpack import Decoder, Encoder

from airouter.backends.triton import h2frames as h2
from airouter.backends.triton.grpc_wire import Channel, RpcError

Fixture = tuple[str, list["Conn"], dict[int, int]]
OK_HEADERS = [(":status", "200"), ("content-type", "application/grpc")]


@dataclass
class Conn:
    """One client connection as the scripted server sees it."""

    transport: asyncio.Transport
    enc: Encoder = field(default_factory=Encoder)
    frames: list[h2.Frame] = field(default_factory=list)
    seen: asyncio.Event = field(default_factory=asyncio.Event)

    def send(self, *frames: bytes) -> None:
        self.transport.write(b"".join(frames))

    def headers(self, sid: int, fields: list[tuple[str, str]], end: bool = False) -> bytes:
        return h2.frame(h2.HEADERS, h2.END_HEADERS | (h2.END_STREAM if end else 0), sid,
                        self.enc.encode(fields))

    async def wait(self, match: Callable[[h2.Frame], bool]) -> h2.Frame:
        while True:
            for f in self.frames:
                if match(f):
                    return f
            self.seen.clear()
            await self.seen.wait()


class Server(asyncio.Protocol):
    conns: list[Conn]
    settings: dict[int, int]

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.conn = Conn(transport)  # type: ignore[arg-type]
        self.conns.append(self.conn)
        self.reader = h2.FrameReader(1 << 20)
        self.preface = b""
        self.conn.send(h2.settings(self.settings))

    def data_received(self, data: bytes) -> None:
        if len(self.preface) < len(h2.PREFACE):
            need = len(h2.PREFACE) - len(self.preface)
            self.preface += data[:need]
            data = data[need:]
        self.conn.frames += self.reader.feed(data)
        self.conn.seen.set()


@pytest.fixture
async def server() -> AsyncIterator[Fixture]:
    conns: list[Conn] = []
    settings: dict[int, int] = {}
    proto = type("S", (Server,), {"conns": conns, "settings": settings})
    srv = await asyncio.get_running_loop().create_server(proto, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    yield f"127.0.0.1:{port}", conns, settings
    srv.close()


def request_end(sid: int) -> Callable[[h2.Frame], bool]:
    return lambda f: f[0] == h2.DATA and f[2] == sid and bool(f[1] & h2.END_STREAM)


async def test_padding_split_header_blocks_and_pings(server: Fixture) -> None:
    target, conns, _ = server
    ch = Channel(target)
    try:
        call = await ch.stream("/x", b"req")
        c = conns[0]
        await c.wait(request_end(1))
        block = c.enc.encode(OK_HEADERS)
        padded = b"\x03" + h2.grpc_message(b"one") + h2.grpc_message(b"two") + b"\0\0\0"
        trailers = c.enc.encode([("grpc-status", "0")])
        c.send(
            h2.frame(h2.HEADERS, 0, 1, block[:2]),
            h2.frame(h2.CONTINUATION, h2.END_HEADERS, 1, block[2:]),
            h2.frame(h2.DATA, h2.PADDED, 1, padded),
            h2.frame(h2.PING, 0, 0, b"pingpong"),
            h2.frame(h2.HEADERS, h2.END_STREAM, 1, trailers[:1]),
            h2.frame(h2.CONTINUATION, h2.END_HEADERS, 1, trailers[1:]),
        )
        assert await call.read() == [b"one", b"two"]
        assert await call.read() == []
        ack = await c.wait(lambda f: f[0] == h2.PING)
        assert ack[1] == h2.ACK and ack[3] == b"pingpong"
    finally:
        ch.close()


async def test_goaway_fails_the_calls_it_drops_and_a_new_call_gets_a_new_connection(
    server: Fixture,
) -> None:
    target, conns, _ = server
    ch = Channel(target)
    try:
        first = await ch.stream("/x", b"a")
        second = await ch.stream("/x", b"b")
        c = conns[0]
        await c.wait(request_end(3))
        c.send(h2.goaway(1, h2.NO_ERROR))
        with pytest.raises(RpcError) as e:
            await second.read()
        assert e.value.code == h2.UNAVAILABLE
        # The call the server kept ends as it would have.
        c.send(c.headers(1, OK_HEADERS), h2.frame(h2.DATA, 0, 1, h2.grpc_message(b"kept")),
               c.headers(1, [("grpc-status", "0")], end=True))
        assert await first.read() == [b"kept"]
        assert await first.read() == []
        third = await ch.stream("/x", b"c")
        assert len(conns) == 2 and third.id == 1
    finally:
        ch.close()


@pytest.mark.parametrize(("code", "status"), [(h2.REFUSED_STREAM, h2.UNAVAILABLE),
                                              (h2.CANCEL, h2.CANCELLED),
                                              (h2.PROTOCOL_ERROR, h2.INTERNAL)])
async def test_a_reset_stream(server: Fixture, code: int, status: int) -> None:
    target, conns, _ = server
    ch = Channel(target)
    try:
        call = await ch.stream("/x", b"a")
        await conns[0].wait(request_end(1))
        conns[0].send(h2.rst_stream(1, code))
        with pytest.raises(RpcError) as e:
            await call.read()
        assert e.value.code == status
    finally:
        ch.close()


async def test_a_request_waits_for_the_servers_windows(server: Fixture) -> None:
    target, conns, settings = server
    settings.update({h2.INITIAL_WINDOW_SIZE: 100, h2.MAX_FRAME_SIZE: 16_384})
    ch = Channel(target)
    try:
        conn = await ch._connection()
        while conn.peer_window != 100:  # the server's SETTINGS taken
            await asyncio.sleep(0.005)
        body = bytes(range(256)) * 4  # 1024 bytes, 1029 with the message prefix
        await ch.stream("/x", body)
        c = conns[0]
        await asyncio.sleep(0.05)
        sent = [f for f in c.frames if f[0] == h2.DATA]
        assert sum(len(f[3]) for f in sent) == 100 and not sent[-1][1] & h2.END_STREAM
        c.send(h2.window_update(1, 2000))
        await c.wait(request_end(1))
        data = b"".join(f[3] for f in c.frames if f[0] == h2.DATA)
        assert data == h2.grpc_message(body)
    finally:
        ch.close()


async def test_cancel_resets_the_stream(server: Fixture) -> None:
    target, conns, _ = server
    ch = Channel(target)
    try:
        call = await ch.stream("/x", b"a")
        reader = asyncio.ensure_future(call.read())
        await asyncio.sleep(0)
        call.cancel()
        with pytest.raises(RpcError) as e:
            await reader
        assert e.value.code == h2.CANCELLED
        rst = await conns[0].wait(lambda f: f[0] == h2.RST_STREAM)
        assert rst[2] == 1 and h2.read_u32(rst[3]) == h2.CANCEL
    finally:
        ch.close()


async def test_a_lost_connection_fails_its_calls(server: Fixture) -> None:
    target, conns, _ = server
    ch = Channel(target)
    try:
        call = await ch.stream("/x", b"a")
        await conns[0].wait(request_end(1))
        conns[0].transport.close()
        with pytest.raises(RpcError) as e:
            await call.read()
        assert e.value.code == h2.UNAVAILABLE
        again = await ch.stream("/x", b"b")  # a new connection
        assert len(conns) == 2 and again.id == 1
    finally:
        ch.close()


async def test_a_lowered_header_table_size_is_answered_in_the_next_header_block(
        server: Fixture) -> None:
    # A server may shrink the table our header blocks index into (SETTINGS_HEADER_TABLE_SIZE);
    # the next block must then start with a table size update (RFC 7541 section 4.2), which a
    # strict decoder (hpack's, here) requires. The blocks after it need none.
    target, conns, settings = server
    settings.update({h2.HEADER_TABLE_SIZE: 0})
    ch = Channel(target)
    try:
        conn = await ch._connection()
        c = conns[0]
        await c.wait(lambda f: f[0] == h2.SETTINGS and bool(f[1] & h2.ACK))
        await ch.stream("/x", b"one", metadata=[("x-request-id", "r1")])
        await ch.stream("/x", b"two")
        blocks = [(await c.wait(lambda f, sid=sid: f[0] == h2.HEADERS and f[2] == sid))[3]
                  for sid in (1, 3)]
        assert blocks[0][:1] == h2.TABLE_SIZE_ZERO and blocks[1][:1] != h2.TABLE_SIZE_ZERO
        decoder = Decoder()
        decoder.max_allowed_table_size = 0
        first = decoder.decode(blocks[0])
        assert (":path", "/x") in first and ("x-request-id", "r1") in first
        assert ("content-type", "application/grpc") in decoder.decode(blocks[1])
        assert not conn._resize
    finally:
        ch.close()

"""gRPC server-streaming calls over one HTTP/2 connection per Triton node, on the event loop.

The generation path's transport: one ModelStreamInfer call per request, as with grpcio, but
read by the loop's own socket callbacks rather than through grpcio's completion-queue thread.
Each read of the socket is cut into frames and each stream's messages are handed to its reader
in one wake-up, however many arrived. Cancelling a call resets its stream (RST_STREAM CANCEL),
which Triton's gRPC server passes on to the model as a cancellation, as with grpcio.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import Iterable
from typing import cast

from hpack import Decoder
from hpack.exceptions import HPACKError

from airouter.backends.triton import h2frames as h2
from airouter.backends.triton.h2frames import RpcError

__all__ = ["Call", "Channel", "Connection", "RpcError"]

# This side's flow-control windows: a stream's is refilled as its reader takes messages (the
# reader's pace holds the server back), the connection's as bytes arrive.
STREAM_WINDOW = 4 * 1024 * 1024
CONN_WINDOW = h2.MAX_WINDOW
MAX_MESSAGE = 64 * 1024 * 1024
# A connection with calls open that hears nothing for this long is pinged; one that does not
# answer the ping within PING_TIMEOUT is dropped (its calls fail UNAVAILABLE, retryable).
KEEPALIVE_S = 30.0
PING_TIMEOUT_S = 20.0
_LAST_ID = 2**31 - 1


class Call:
    """One server-streaming call: `read()` the messages as they come, `cancel()` to stop."""

    __slots__ = ("_conn", "id", "_msgs", "_waiter", "_status", "_deframer", "_unacked", "_out",
                 "_timer", "_window")

    def __init__(self, conn: Connection, stream_id: int, body: bytes) -> None:
        self._conn = conn
        self.id = stream_id
        self._msgs: list[bytes] = []
        self._waiter: asyncio.Future[None] | None = None
        self._status: RpcError | None = None  # set once the call ended
        self._deframer = h2.Deframer(MAX_MESSAGE)
        self._unacked = 0  # bytes of this stream not given back to the server's window yet
        self._out = body  # request bytes the server's windows have not let through yet
        self._window = conn.peer_window
        self._timer: asyncio.TimerHandle | None = None

    def done(self) -> bool:
        return self._status is not None

    async def read(self) -> list[bytes]:
        """Every message that arrived since the last read (at least one); [] once the call
        ended with status OK. Raises RpcError for any other status."""
        while not self._msgs:
            if self._status is not None:
                if self._status.code == h2.OK:
                    return []
                raise self._status
            waiter = self._waiter = self._conn.loop.create_future()
            try:
                await waiter
            finally:
                self._waiter = None
        msgs, self._msgs = self._msgs, []
        if self._unacked >= STREAM_WINDOW // 2 and self._status is None:
            self._conn.ack(self.id, self._unacked)
            self._unacked = 0
        return msgs

    def cancel(self) -> None:
        """Stop the call now: the server sees the stream reset (a gRPC cancellation)."""
        if self._status is None:
            self._conn.reset(self.id)
            self.end(RpcError(h2.CANCELLED, "Cancelled by the client"))

    def end(self, status: RpcError) -> None:
        if self._status is not None:
            return
        self._status = status
        if self._timer is not None:
            self._timer.cancel()
        self._conn.forget(self.id)
        self._wake()

    def _wake(self) -> None:
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)

    def _expire(self) -> None:
        if self._status is None:
            self._conn.reset(self.id)
            self.end(RpcError(h2.DEADLINE_EXCEEDED, "Deadline Exceeded"))

    def received(self, data: bytes, flow: int) -> None:
        """A DATA frame's payload (`flow`: its length for flow control, padding included)."""
        before = len(self._msgs)
        try:
            self._deframer.feed(data, self._msgs)
        except ValueError as e:
            self._conn.reset(self.id)
            self.end(RpcError(h2.RESOURCE_EXHAUSTED if "limit" in str(e) else h2.INTERNAL,
                              str(e)))
            return
        self._unacked += flow
        if self._deframer.partial and self._unacked >= STREAM_WINDOW // 2:
            # A message larger than the window must not wait for a reader that needs it whole.
            self._conn.ack(self.id, self._unacked)
            self._unacked = 0
        if len(self._msgs) != before:
            self._wake()


class Connection(asyncio.Protocol):
    """One HTTP/2 connection (cleartext, prior knowledge) to a gRPC server."""

    def __init__(self, authority: str) -> None:
        self.loop = asyncio.get_running_loop()
        self.authority = authority
        self.transport: asyncio.Transport | None = None
        self.calls: dict[int, Call] = {}
        self.closed: RpcError | None = None  # why no new call may start here
        self._next_id = 1
        self._frames = h2.FrameReader()
        self._decoder = Decoder(max_header_list_size=1 << 20)  # a long grpc-message too
        self._heads: dict[str, bytes] = {}  # a path's fixed header fields, encoded
        self._resize = False  # the server set a table size: say ours is 0 (RFC 7541 4.2)
        self._header_block: list[bytes] = []
        self._header_stream = 0
        self._header_end = False
        self.peer_window = h2.DEFAULT_WINDOW  # the server's initial stream window
        self._conn_window = h2.DEFAULT_WINDOW  # what the server lets us send on the connection
        self._max_frame = h2.DEFAULT_FRAME
        self._max_streams = 2**31
        self._conn_unacked = 0
        self._blocked: list[Call] = []
        self._heard = time.monotonic()
        self._ping_sent = 0.0
        self._keepalive: asyncio.TimerHandle | None = None

    # -- the protocol's callbacks --

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses: they only behave as one.
        self.transport = transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        transport.write(
            h2.PREFACE
            + h2.settings({h2.ENABLE_PUSH: 0, h2.INITIAL_WINDOW_SIZE: STREAM_WINDOW,
                           h2.MAX_FRAME_SIZE: h2.DEFAULT_FRAME})
            + h2.window_update(0, CONN_WINDOW - h2.DEFAULT_WINDOW)
        )
        self._keepalive = self.loop.call_later(KEEPALIVE_S, self._check_alive)

    def connection_lost(self, exc: Exception | None) -> None:
        why = f"the connection to {self.authority} closed" + (f": {exc}" if exc else "")
        self._fail(RpcError(h2.UNAVAILABLE, why))

    def data_received(self, data: bytes) -> None:
        self._heard = time.monotonic()
        try:
            frames = self._frames.feed(data)
        except ValueError as e:
            self._abort(str(e))
            return
        calls = self.calls
        for ftype, flags, sid, payload in frames:
            if ftype == h2.DATA:
                call = calls.get(sid)
                flow = len(payload)
                if flags & h2.PADDED:
                    try:
                        payload = h2.unpad(flags, payload)
                    except ValueError as e:
                        self._abort(str(e))
                        return
                if call is not None:
                    call.received(payload, flow)
                    if flags & h2.END_STREAM:
                        call.end(RpcError(h2.INTERNAL, "the stream ended without a status"))
                self._conn_unacked += flow
                if self._conn_unacked >= CONN_WINDOW // 2:
                    self.ack(0, self._conn_unacked)
                    self._conn_unacked = 0
            elif not self._control(ftype, flags, sid, payload):
                return

    def _control(self, ftype: int, flags: int, sid: int, payload: bytes) -> bool:
        """Every frame but DATA; False once the connection is given up."""
        if self._header_stream and ftype != h2.CONTINUATION:
            self._abort("a header block interrupted")
            return False
        if ftype == h2.HEADERS:
            try:
                block = h2.unpad(flags, payload, priority=True)
            except ValueError as e:
                self._abort(str(e))
                return False
            self._header_block = [block]
            self._header_end = bool(flags & h2.END_STREAM)
            if flags & h2.END_HEADERS:
                return self._headers(sid)
            self._header_stream = sid
        elif ftype == h2.CONTINUATION:
            if sid != self._header_stream:
                self._abort("a CONTINUATION frame out of place")
                return False
            self._header_block.append(payload)
            if flags & h2.END_HEADERS:
                self._header_stream = 0
                return self._headers(sid)
        elif ftype == h2.SETTINGS:
            if not flags & h2.ACK:
                self._settings(h2.read_settings(payload))
        elif ftype == h2.WINDOW_UPDATE:
            self._window_update(sid, h2.read_u32(payload))
        elif ftype == h2.PING:
            if not flags & h2.ACK:
                self._write(h2.frame(h2.PING, h2.ACK, 0, payload))
            else:
                self._ping_sent = 0.0
        elif ftype == h2.RST_STREAM:
            call = self.calls.get(sid)
            if call is not None:
                code = h2.read_u32(payload)
                status = {h2.CANCEL: h2.CANCELLED, h2.REFUSED_STREAM: h2.UNAVAILABLE}
                call.end(RpcError(status.get(code, h2.INTERNAL),
                                  f"the server reset the stream (HTTP/2 error {code})"))
        elif ftype == h2.GOAWAY:
            last, code = h2.read_goaway(payload)
            self.closed = self.closed or RpcError(
                h2.UNAVAILABLE, f"{self.authority} is closing the connection (GOAWAY {code})")
            for call in [c for i, c in self.calls.items() if i > last]:
                call.end(RpcError(h2.UNAVAILABLE, "the server refused the call (GOAWAY)"))
        elif ftype == h2.PUSH_PROMISE:
            self._abort("a PUSH_PROMISE (push is disabled)")
            return False
        return True

    def _headers(self, sid: int) -> bool:
        block = b"".join(self._header_block)
        self._header_block = []
        try:
            # Every block goes through the decoder, a dropped call's too: the table is shared.
            fields = self._decoder.decode(block)
        except HPACKError as e:
            self._abort(f"undecodable headers: {e}")
            return False
        call = self.calls.get(sid)
        if call is None:
            return True
        status = h2.call_status(fields)  # type: ignore[arg-type]
        if status is not None:
            code, details = status
            call.end(RpcError(code, details))
            if not self._header_end:
                self.reset(sid)
        elif self._header_end:
            call.end(RpcError(h2.INTERNAL, "the stream ended without a status"))
        return True

    def _settings(self, values: dict[int, int]) -> None:
        window = values.get(h2.INITIAL_WINDOW_SIZE)
        if window is not None:
            delta, self.peer_window = window - self.peer_window, window
            for call in self.calls.values():
                call._window += delta
        self._max_frame = values.get(h2.MAX_FRAME_SIZE, self._max_frame)
        self._max_streams = values.get(h2.MAX_CONCURRENT_STREAMS, self._max_streams)
        self._resize |= h2.HEADER_TABLE_SIZE in values  # answered in the next header block
        self._write(h2.frame(h2.SETTINGS, h2.ACK, 0))
        self._flush_blocked()

    def _window_update(self, sid: int, increment: int) -> None:
        if sid == 0:
            self._conn_window += increment
            self._flush_blocked()
            return
        call = self.calls.get(sid)
        if call is not None:
            call._window += increment
            if call._out:
                self._send(call)

    # -- calls --

    def start(self, path: str, body: bytes, metadata: Iterable[tuple[str, str]],
                    deadline_s: float | None) -> Call:
        if self.closed is not None:
            raise self.closed
        if len(self.calls) >= self._max_streams:  # Triton sets no limit unless told to
            raise RpcError(h2.RESOURCE_EXHAUSTED, "the server's stream limit is reached")
        sid = self._next_id
        self._next_id += 2
        if self._next_id >= _LAST_ID:
            self.closed = RpcError(h2.UNAVAILABLE, "stream ids used up")
        head = self._heads.get(path)
        if head is None:
            head = self._heads[path] = b"".join(h2.header_field(n, v) for n, v in (
                (":method", "POST"), (":scheme", "http"), (":path", path),
                (":authority", self.authority), ("content-type", "application/grpc"),
                ("te", "trailers"), ("user-agent", "airouter")))
        fields = [h2.TABLE_SIZE_ZERO, head] if self._resize else [head]
        self._resize = False
        if deadline_s is not None:
            fields.append(h2.header_field("grpc-timeout", f"{max(int(deadline_s * 1000), 1)}m"))
        fields += [h2.header_field(n, v) for n, v in metadata]
        call = Call(self, sid, h2.grpc_message(body))
        self.calls[sid] = call
        if deadline_s is not None:
            call._timer = self.loop.call_later(deadline_s, call._expire)
        block = b"".join(fields)
        out = []
        for i in range(0, max(len(block), 1), self._max_frame):
            ftype = h2.HEADERS if i == 0 else h2.CONTINUATION
            last = i + self._max_frame >= len(block)
            out.append(h2.frame(ftype, h2.END_HEADERS if last else 0, sid,
                                block[i : i + self._max_frame]))
        self._write(b"".join(out))
        self._send(call)
        return call

    def _send(self, call: Call) -> None:
        """As much of the call's request as the windows allow; the last frame ends it."""
        out = []
        while call._out:
            n = min(len(call._out), call._window, self._conn_window, self._max_frame)
            if n <= 0:
                if call not in self._blocked:
                    self._blocked.append(call)
                break
            chunk, call._out = call._out[:n], call._out[n:]
            call._window -= n
            self._conn_window -= n
            out.append(h2.frame(h2.DATA, 0 if call._out else h2.END_STREAM, call.id, chunk))
        if out:
            self._write(b"".join(out))

    def _flush_blocked(self) -> None:
        blocked, self._blocked = self._blocked, []
        for call in blocked:
            if not call.done():
                self._send(call)

    def ack(self, sid: int, n: int) -> None:
        self._write(h2.window_update(sid, n))

    def reset(self, sid: int) -> None:
        self._write(h2.rst_stream(sid, h2.CANCEL))

    def forget(self, sid: int) -> None:
        call = self.calls.pop(sid, None)
        if call is not None and call in self._blocked:
            self._blocked.remove(call)
        if self.closed is not None and not self.calls and self.transport is not None:
            self.transport.close()

    def _write(self, data: bytes) -> None:
        t = self.transport
        if t is not None and not t.is_closing():
            t.write(data)

    def _check_alive(self) -> None:
        now = time.monotonic()
        if self._ping_sent and now - self._ping_sent > PING_TIMEOUT_S:
            self._abort(f"{self.authority} did not answer a ping in {PING_TIMEOUT_S:g}s")
            return
        if self.calls and not self._ping_sent and now - self._heard >= KEEPALIVE_S:
            self._ping_sent = now
            self._write(h2.frame(h2.PING, 0, 0, b"airouter"))
        self._keepalive = self.loop.call_later(
            PING_TIMEOUT_S if self._ping_sent else KEEPALIVE_S, self._check_alive)

    def _abort(self, why: str) -> None:
        self._write(h2.goaway(0, h2.PROTOCOL_ERROR))
        self._fail(RpcError(h2.UNAVAILABLE, f"HTTP/2 error from {self.authority}: {why}"))

    def _fail(self, error: RpcError) -> None:
        self.closed = self.closed or error
        if self._keepalive is not None:
            self._keepalive.cancel()
        for call in list(self.calls.values()):
            call.end(error)
        if self.transport is not None:
            self.transport.close()

    def close(self) -> None:
        self._fail(RpcError(h2.UNAVAILABLE, "the router is shutting down"))


class Channel:
    """Calls to one node (`host:port`): one connection, replaced when it closes."""

    def __init__(self, target: str, connect_timeout: float = 10.0) -> None:
        host, _, port = target.rpartition(":")
        self.host = host.strip("[]") or "127.0.0.1"
        self.port = int(port)
        self.target = target
        self.connect_timeout = connect_timeout
        self._conn: Connection | None = None
        self._connecting: asyncio.Task[Connection] | None = None

    async def _connection(self) -> Connection:
        conn = self._conn
        if conn is not None and conn.closed is None:
            return conn
        if self._connecting is None:
            self._connecting = asyncio.get_running_loop().create_task(self._connect())
            # Its failure is seen by whoever awaits it; none may be left (all cancelled).
            self._connecting.add_done_callback(lambda t: t.cancelled() or t.exception())
        task = self._connecting
        try:
            return await asyncio.shield(task)
        finally:
            if task.done() and self._connecting is task:
                self._connecting = None

    async def _connect(self) -> Connection:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.connect_timeout):
                _, conn = await loop.create_connection(
                    lambda: Connection(self.target), self.host, self.port)
        except (OSError, TimeoutError) as e:
            raise RpcError(h2.UNAVAILABLE, f"failed to connect to {self.target}: {e}") from None
        self._conn = conn
        return conn

    async def stream(self, path: str, body: bytes, *, deadline_s: float | None = None,
                     metadata: Iterable[tuple[str, str]] = ()) -> Call:
        """Start a server-streaming call of one request message (`body`, serialized)."""
        conn = await self._connection()
        return conn.start(path, body, metadata, deadline_s)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

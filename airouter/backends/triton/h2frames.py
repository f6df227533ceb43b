"""HTTP/2 frames and gRPC messages as bytes: what the Triton stream client reads and writes.

Pure: no I/O. A reader cuts a byte stream into frames, whatever the reads' boundaries; a
deframer cuts a stream's DATA payloads into gRPC messages (a 1-byte compressed flag, a 4-byte
big-endian length, the message).
"""

from __future__ import annotations

import struct
from urllib.parse import unquote

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

# Frame types (RFC 9113 section 6).
DATA = 0x0
HEADERS = 0x1
PRIORITY = 0x2
RST_STREAM = 0x3
SETTINGS = 0x4
PUSH_PROMISE = 0x5
PING = 0x6
GOAWAY = 0x7
WINDOW_UPDATE = 0x8
CONTINUATION = 0x9

# Flags.
END_STREAM = 0x1
ACK = 0x1
END_HEADERS = 0x4
PADDED = 0x8
PRIORITY_FLAG = 0x20

# Settings.
HEADER_TABLE_SIZE = 0x1
ENABLE_PUSH = 0x2
MAX_CONCURRENT_STREAMS = 0x3
INITIAL_WINDOW_SIZE = 0x4
MAX_FRAME_SIZE = 0x5

# Error codes.
NO_ERROR = 0x0
PROTOCOL_ERROR = 0x1
REFUSED_STREAM = 0x7
CANCEL = 0x8

MAX_WINDOW = 2**31 - 1
DEFAULT_WINDOW = 65_535
DEFAULT_FRAME = 16_384

# The 9-byte frame header: length (24 bits) and type in one int, flags, stream id.
_HEAD = struct.Struct(">IBI")
_U32 = struct.Struct(">I")
_SETTING = struct.Struct(">HI")
_GOAWAY = struct.Struct(">II")
_MSG = struct.Struct(">BI")

Frame = tuple[int, int, int, bytes]  # type, flags, stream id, payload


def frame(ftype: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    return _HEAD.pack(len(payload) << 8 | ftype, flags, stream) + payload


def settings(values: dict[int, int]) -> bytes:
    return frame(SETTINGS, 0, 0, b"".join(_SETTING.pack(k, v) for k, v in values.items()))


def window_update(stream: int, increment: int) -> bytes:
    return frame(WINDOW_UPDATE, 0, stream, _U32.pack(increment))


def rst_stream(stream: int, code: int) -> bytes:
    return frame(RST_STREAM, 0, stream, _U32.pack(code))


def goaway(last: int, code: int) -> bytes:
    return frame(GOAWAY, 0, 0, _GOAWAY.pack(last, code))


def grpc_message(message: bytes) -> bytes:
    """One uncompressed gRPC message, length-prefixed."""
    return _MSG.pack(0, len(message)) + message


# A dynamic table size update to 0 (RFC 7541 section 6.3): the fields above never use the
# table, but a peer's SETTINGS_HEADER_TABLE_SIZE must be answered by one at the start of the
# next header block (section 4.2), which a strict decoder checks.
TABLE_SIZE_ZERO = b"\x20"


def header_field(name: str, value: str) -> bytes:
    """One request header field as HPACK's literal never indexed, name and value raw (RFC 7541
    section 6.2.3): it changes no table on either side, so fields can be encoded once and sent
    with every request (hpack's encoder: about 18 us for a call's nine fields)."""
    n, v = name.encode(), value.encode()
    return b"\x10" + _length(len(n)) + n + _length(len(v)) + v


def _length(i: int) -> bytes:
    """A string length: an integer on a 7-bit prefix, the Huffman bit clear (section 5.1)."""
    if i < 127:
        return bytes((i,))
    out = bytearray((127,))
    i -= 127
    while i >= 128:
        out.append((i & 127) | 128)
        i >>= 7
    out.append(i)
    return bytes(out)


def read_settings(payload: bytes) -> dict[int, int]:
    return {k: v for k, v in _SETTING.iter_unpack(payload[: len(payload) // 6 * 6])}


def read_u32(payload: bytes) -> int:
    """A WINDOW_UPDATE increment or an RST_STREAM code (0 when the payload is short)."""
    return _U32.unpack_from(payload)[0] & 0x7FFFFFFF if len(payload) >= 4 else 0


def read_goaway(payload: bytes) -> tuple[int, int]:
    """The last stream id the server processes, and the error code."""
    if len(payload) < 8:
        return 0, PROTOCOL_ERROR
    last, code = _GOAWAY.unpack_from(payload)
    return last & 0x7FFFFFFF, code


def unpad(flags: int, payload: bytes, priority: bool = False) -> bytes:
    """A DATA or HEADERS payload without its padding (and HEADERS' priority fields)."""
    start, end = 0, len(payload)
    if flags & PADDED:
        if not payload:
            raise ValueError("padded frame without a pad length")
        start, end = 1, end - payload[0]
    if priority and flags & PRIORITY_FLAG:
        start += 5
    if end < start:
        raise ValueError("padding longer than the frame")
    return payload[start:end]


class FrameReader:
    """Bytes from the socket in, whole frames out, whatever the reads' boundaries."""

    __slots__ = ("_rest", "max_size")

    def __init__(self, max_size: int = DEFAULT_FRAME) -> None:
        self._rest = b""
        self.max_size = max_size  # what this side announced (SETTINGS_MAX_FRAME_SIZE)

    def feed(self, data: bytes) -> list[Frame]:
        if self._rest:
            data = self._rest + data
        out = []
        pos, n = 0, len(data)
        head = _HEAD.unpack_from
        while n - pos >= 9:
            lt, flags, stream = head(data, pos)
            end = pos + 9 + (lt >> 8)
            if lt >> 8 > self.max_size:
                raise ValueError(f"a frame of {lt >> 8} bytes (the limit is {self.max_size})")
            if end > n:
                break
            out.append((lt & 0xFF, flags, stream & 0x7FFFFFFF, data[pos + 9 : end]))
            pos = end
        self._rest = data[pos:] if pos < n else b""
        return out


class Deframer:
    """One stream's DATA payloads in, its gRPC messages out."""

    __slots__ = ("_rest", "limit")

    def __init__(self, limit: int) -> None:
        self._rest = b""
        self.limit = limit  # the largest message taken

    @property
    def partial(self) -> int:
        """Bytes held of a message not whole yet."""
        return len(self._rest)

    def feed(self, data: bytes, out: list[bytes]) -> None:
        """Append the messages `data` completes to `out`."""
        if self._rest:
            data = self._rest + data
            self._rest = b""
        pos, n = 0, len(data)
        while n - pos >= 5:
            flag, size = _MSG.unpack_from(data, pos)
            if flag:
                raise ValueError("a compressed message (none was asked for)")
            if size > self.limit:
                raise ValueError(f"a message of {size} bytes (the limit is {self.limit})")
            end = pos + 5 + size
            if end > n:
                break
            out.append(data[pos + 5 : end])
            pos = end
        if pos < n:
            self._rest = data[pos:]


class RpcError(Exception):
    """A call ended with a non-OK gRPC status."""

    def __init__(self, code: int, details: str) -> None:
        super().__init__(f"gRPC status {code}: {details}")
        self.code = code
        self.details = details


# gRPC status codes (the numbers of grpc.StatusCode).
OK = 0
CANCELLED = 1
UNKNOWN = 2
INVALID_ARGUMENT = 3
DEADLINE_EXCEEDED = 4
RESOURCE_EXHAUSTED = 8
INTERNAL = 13
UNAVAILABLE = 14
UNIMPLEMENTED = 12
UNAUTHENTICATED = 16
PERMISSION_DENIED = 7
FAILED_PRECONDITION = 9
OUT_OF_RANGE = 11

# What an HTTP status other than 200 means to a gRPC client (gRPC's http-grpc-status-mapping).
_HTTP_STATUS = {400: INTERNAL, 401: UNAUTHENTICATED, 403: PERMISSION_DENIED, 404: UNIMPLEMENTED,
                429: UNAVAILABLE, 502: UNAVAILABLE, 503: UNAVAILABLE, 504: UNAVAILABLE}


def call_status(headers: list[tuple[str, str]]) -> tuple[int, str] | None:
    """The status a header block carries: (gRPC code, message), None if it carries none (the
    response headers of a call whose trailers come later)."""
    status = message = http = None
    for name, value in headers:
        if name == "grpc-status":
            status = value
        elif name == "grpc-message":
            message = value
        elif name == ":status":
            http = value
    if http is not None and http != "200":
        code = _HTTP_STATUS.get(int(http) if http.isdigit() else 0, UNKNOWN)
        return code, f"HTTP status {http}"
    if status is None:
        return None
    code = int(status) if status.isdigit() else UNKNOWN
    return code, unquote(message or "")

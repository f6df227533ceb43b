"""The hand-written sans-IO HTTP/1.1 response parser the upstream client used before llhttp,
kept for `make bench-micro` to compare against (not used by the router).

HTTP/1.1 responses, parsed sans-IO: bytes in, the status and headers, then the body with its
framing (Content-Length, chunked, or until the connection closes) taken off, and whether the
connection may carry another request."""

from __future__ import annotations

import re

MAX_HEAD = 64 * 1024  # status line + headers, or a chunked body's trailers
MAX_LINE = 1024  # a chunk-size line, extensions included

_HEAD, _LENGTH, _SIZE, _DATA, _DATA_END, _TRAILER, _UNTIL_CLOSE, _DONE = range(8)

_STATUS = re.compile(r"HTTP/1\.([01]) ([1-9][0-9]{2})(?: [^\r\n]*)?")
_HEX = re.compile(rb"[0-9A-Fa-f]{1,15}")
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_DIGITS = re.compile(r"[0-9]{1,18}")


class ProtocolError(Exception):
    """The upstream's bytes are not a well-formed HTTP/1.x response."""


class ResponseParser:
    """One response on a connection. Feed it every byte read; `feed` returns the body bytes
    those carried (b"" when none). `status` and `headers` (lower-case names, repeated fields
    joined with ", ") are set once the head is whole; 1xx interim responses are skipped.
    `complete` is true at the body's end; `keep_alive` then says whether the connection may be
    reused (never when bytes follow the response, nor after a close-delimited body)."""

    __slots__ = ("state", "buf", "left", "status", "headers", "keep_alive", "head_request")

    def __init__(self, *, head_request: bool = False) -> None:
        self.state = _HEAD
        self.buf = b""
        self.left = 0
        self.status = 0
        self.headers: dict[str, str] = {}
        self.keep_alive = False
        self.head_request = head_request

    @property
    def head_done(self) -> bool:
        return self.state != _HEAD

    @property
    def complete(self) -> bool:
        return self.state == _DONE

    def feed(self, data: bytes) -> bytes:
        state = self.state
        if state == _SIZE and not self.buf:
            # A chunked stream read on chunk boundaries (an event per chunk, per read).
            out: list[bytes] = []
            pos = self._chunks(data, 0, out)
            if pos < len(data):
                out.append(self._feed(data[pos:]))
            return out[0] if len(out) == 1 else b"".join(out)
        # The common cases first, without a copy: a length-delimited body inside one read.
        if state == _LENGTH:
            n, left = len(data), self.left
            if n < left:
                self.left = left - n
                return data
            self.left = 0
            self.state = _DONE
            if n > left:
                self.keep_alive = False  # bytes nobody asked for: the stream is out of step
                return data[:left]
            return data
        if state == _UNTIL_CLOSE:
            return data
        if state == _DONE:
            if data:
                self.keep_alive = False
            return b""
        if self.buf:
            data, self.buf = self.buf + data, b""
        return self._feed(data)

    def feed_eof(self) -> None:
        """The connection closed: the end of a close-delimited body, an error otherwise."""
        if self.state == _UNTIL_CLOSE:
            self.state = _DONE
        elif self.state != _DONE:
            raise ProtocolError("the connection closed before the response was complete")
        self.keep_alive = False

    def _feed(self, data: bytes) -> bytes:
        out: list[bytes] = []
        pos, end = 0, len(data)
        while pos < end:
            state = self.state
            if state == _DATA or state == _LENGTH:
                take = min(self.left, end - pos)
                out.append(data[pos : pos + take] if take < end or pos else data)
                pos += take
                self.left -= take
                if not self.left:
                    self.state = _DATA_END if state == _DATA else _DONE
            elif state == _SIZE:
                pos = self._chunks(data, pos, out)
            elif state == _DATA_END:
                if end - pos < 2:
                    if data[pos:] != b"\r":
                        raise ProtocolError("a chunk is longer than its size")
                    self.buf = b"\r"
                    break
                if data[pos : pos + 2] != b"\r\n":
                    raise ProtocolError("a chunk is longer than its size")
                pos += 2
                self.state = _SIZE
            elif state == _HEAD:
                i = data.find(b"\r\n\r\n", pos)
                if i < 0:
                    self._keep(data, pos, MAX_HEAD)
                    break
                if i - pos > MAX_HEAD:
                    raise ProtocolError("the response head is too long")
                self._head(data[pos:i])
                pos = i + 4
            elif state == _TRAILER:
                i = data.find(b"\r\n", pos)
                if i < 0:
                    self._keep(data, pos, MAX_HEAD)
                    break
                if i == pos:
                    self.state = _DONE
                elif b":" not in data[pos:i]:
                    raise ProtocolError("a malformed trailer field")
                self.left += i + 2 - pos  # trailer bytes so far, bounded like a head
                if self.left > MAX_HEAD:
                    raise ProtocolError("the trailers are too long")
                pos = i + 2
            elif state == _UNTIL_CLOSE:
                out.append(data[pos:])
                break
            else:  # _DONE
                self.keep_alive = False
                break
        if not out:
            return b""
        return out[0] if len(out) == 1 else b"".join(out)

    def _chunks(self, data: bytes, pos: int, out: list[bytes]) -> int:
        """Whole chunks, read in one tight loop (the common case: each SSE event a chunk,
        several to a read); where one is cut off, the state to go on from. Returns the
        position reached."""
        end = len(data)
        find = data.find
        sizes = _SIZES
        while True:
            i = find(b"\r\n", pos)
            if i < 0:
                self._keep(data, pos, MAX_LINE)
                return end
            line = data[pos:i]
            n = sizes.get(line)
            if n is None:
                n = _chunk_size(line)
            start = i + 2
            if not n:
                self.state = _TRAILER
                return start
            stop = start + n
            if stop + 2 > end:
                if stop >= end:
                    self.state, self.left = _DATA, stop - end
                    out.append(data[start:])
                    return end
                out.append(data[start:stop])
                self.state = _DATA_END
                return stop
            if data[stop : stop + 2] != b"\r\n":
                raise ProtocolError("a chunk is longer than its size")
            out.append(data[start:stop])
            pos = stop + 2
            if pos == end:
                return end

    def _keep(self, data: bytes, pos: int, limit: int) -> None:
        rest = data[pos:]
        if len(rest) > limit:
            raise ProtocolError("a line of the response is too long")
        self.buf = rest

    def _head(self, head: bytes) -> None:
        # One decode for the whole head: cheaper than one per field.
        lines = head.decode("latin-1").split("\r\n")
        if head.count(b"\n") != len(lines) - 1 or head.count(b"\r") != len(lines) - 1:
            raise ProtocolError("a bare CR or LF in the response head")
        m = _STATUS.fullmatch(lines[0])
        if m is None:
            raise ProtocolError("not an HTTP/1.x status line")
        status = int(m.group(2))
        headers: dict[str, str] = {}
        names = _NAMES
        for line in lines[1:]:
            name, colon, value = line.partition(":")
            key = names.get(name)
            if key is None:
                if not colon or _TOKEN.fullmatch(name) is None:
                    raise ProtocolError("a malformed header field")
                key = name.lower()
                if len(names) < 1024:
                    names[name] = key
            value = value.strip(" \t")
            headers[key] = f"{headers[key]}, {value}" if key in headers else value
        if status < 200:
            if status == 101:
                raise ProtocolError("the upstream switched protocols unasked")
            return  # an interim response (100 Continue, 103 Early Hints): the real one follows
        self.status = status
        self.headers = headers
        conn = headers.get("connection", "").lower()
        if m.group(1) == "1":
            self.keep_alive = "close" not in _tokens(conn)
        else:
            self.keep_alive = "keep-alive" in _tokens(conn)
        self._framing(status, headers)

    def _framing(self, status: int, headers: dict[str, str]) -> None:
        """How the body ends (RFC 9112 section 6.3)."""
        if self.head_request or status == 204 or status == 304:
            self.state = _DONE
            return
        te = headers.get("transfer-encoding")
        if te is not None:
            if _tokens(te.lower()) != ["chunked"]:
                raise ProtocolError(f"unsupported transfer-coding {te!r}")
            if "content-length" in headers:
                self.keep_alive = False  # both framings: read as chunked, never reuse
            self.state = _SIZE
            return
        cl = headers.get("content-length")
        if cl is None:
            self.state = _UNTIL_CLOSE
            self.keep_alive = False
            return
        values = {v.strip() for v in cl.split(",")}
        value = values.pop()
        if values or _DIGITS.fullmatch(value) is None:
            raise ProtocolError(f"a malformed Content-Length {cl!r}")
        self.left = int(value)
        self.state = _LENGTH if self.left else _DONE


# Field names seen before, validated, and their lower-case form.
_NAMES: dict[str, str] = {}
# Size lines seen before, and their values: most streams repeat a few dozen sizes.
_SIZES: dict[bytes, int] = {}


def _chunk_size(line: bytes) -> int:
    size = line.split(b";", 1)[0].strip(b" \t")
    if _HEX.fullmatch(size) is None:
        raise ProtocolError("a malformed chunk size")
    n = int(size, 16)
    if len(_SIZES) < 4096:
        _SIZES[line] = n
    return n


def _tokens(value: str) -> list[str]:
    return [t.strip() for t in value.split(",") if t.strip()]

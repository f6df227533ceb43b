"""HTTP/1.1 responses, parsed sans-IO by llhttp (through httptools, the parser inside uvicorn
and aiohttp) in its strict mode: bytes in, the status and headers, then the body with its
framing (Content-Length, chunked, or until the connection closes) taken off, and whether the
connection may carry another request. Anything that is not HTTP/1.x (an HTTP/2 frame, an
HTTP/0.9 reply, bare LF line ends) fails at its first bytes. What llhttp lets through and the
pool must not is checked here: the head's size, control bytes in the reason phrase, status
codes under 100, transfer-codings other than `chunked`, an unasked protocol switch."""

from __future__ import annotations

import re

from httptools import HttpParserError, HttpParserUpgrade, HttpResponseParser

MAX_HEAD = 64 * 1024  # status line + headers; chunked framing or trailers without a body byte

# Control bytes (HTAB aside) in a reason phrase; llhttp refuses them in header values itself.
_CTL = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")


class ProtocolError(Exception):
    """The upstream's bytes are not a well-formed HTTP/1.x response."""


class _Stop(Exception):
    """Raised from a callback to stop llhttp: the response ended without its knowing."""


class ResponseParser:
    """One response on a connection. Feed it every byte read; `feed` returns the body bytes
    those carried (b"" when none). `status` and `headers` (lower-case names, repeated fields
    joined with ", ") are set once the head is whole; 1xx interim responses are skipped.
    `complete` is true at the body's end; `keep_alive` then says whether the connection may be
    reused (never when bytes follow the response, nor after a close-delimited body)."""

    __slots__ = ("_parser", "_out", "on_body", "_size", "_fields", "status", "headers",
                 "keep_alive", "head_request", "head_done", "complete", "_until_close", "_left")

    def __init__(self, *, head_request: bool = False) -> None:
        out: list[bytes] = []
        self._out = out
        # llhttp hands each body piece to the list itself: no Python frame per chunk.
        self.on_body = out.append
        # Head (or, after it, framing and trailer) bytes since the last body byte.
        self._size = 0
        self._fields = 0  # the fields' bytes, head and trailers
        self.status = 0
        self.headers: dict[str, str] = {}
        self.keep_alive = False
        self.head_request = head_request
        self.head_done = False
        self.complete = False
        self._until_close = False
        # A Content-Length body's bytes still to come once llhttp has read its head: they
        # are counted here and handed on as they are read, without a copy or a parser call.
        self._left = 0
        self._parser: HttpResponseParser | None = HttpResponseParser(self)

    def feed(self, data: bytes) -> bytes:
        left = self._left
        if left:
            n = len(data)
            if n < left:
                self._left = left - n
                return data
            self._left = 0
            self.complete = True
            if n > left:
                self.keep_alive = False  # bytes after the response: the stream is out of step
                return data[:left]
            return data
        if self.complete:
            if data:
                self.keep_alive = False  # bytes nobody asked for: the stream is out of step
            return b""
        out = self._out
        parser = self._parser
        if parser is None:
            raise ProtocolError("bytes after the response was let go")
        try:
            parser.feed_data(data)
        except (HttpParserError, HttpParserUpgrade) as e:
            self._failed(e, data)
        if out:
            self._size = 0
            body = out[0] if len(out) == 1 else b"".join(out)
            out.clear()
            if self._left:
                self._left -= len(body)  # what llhttp read of a Content-Length body
            return body
        if not self.complete:
            self._size += len(data)
            if self._size > MAX_HEAD:
                raise ProtocolError("the response head or its trailers are too long")
        return b""

    def release(self) -> None:
        """The response is over: llhttp goes. It holds this object's callbacks, and the cycle
        would keep both alive until the next cyclic collection."""
        self._parser = None

    def _failed(self, e: Exception, data: bytes) -> None:
        cause = e.__context__
        if isinstance(cause, ProtocolError):
            raise cause from None
        if isinstance(cause, _Stop) and self.head_request and self.head_done:
            # A HEAD response ends with its head; llhttp would read a body after it.
            self.complete = True
            if not data.endswith(b"\r\n\r\n") and data != b"\n":
                self.keep_alive = False  # bytes after the head
            return
        if self.complete:  # bytes after the response (a new one begun, or after a close)
            self.keep_alive = False
            return
        if isinstance(e, HttpParserUpgrade):
            raise ProtocolError("the upstream switched protocols unasked") from None
        raise ProtocolError(f"not a well-formed HTTP/1.x response: {e}") from None

    def feed_eof(self) -> None:
        """The connection closed: the end of a close-delimited body, an error otherwise."""
        if not self.complete:
            if not self._until_close:
                raise ProtocolError("the connection closed before the response was complete")
            self.complete = True
        self.keep_alive = False

    # -- llhttp's callbacks
    def on_message_begin(self) -> None:
        if self.complete:
            raise _Stop  # a second response where none was asked for
        self.headers = {}
        self._size = self._fields = 0

    def on_status(self, reason: bytes) -> None:
        if _CTL.search(reason) is not None:
            raise ProtocolError("a control byte in the status line")

    def on_header(self, name: bytes, value: bytes) -> None:
        self._fields += len(name) + len(value)
        if self._fields > MAX_HEAD:
            raise ProtocolError("the response head or its trailers are too long")
        if self.head_done:
            return  # a trailer field (llhttp has checked its syntax): not used
        key = _NAMES.get(name)
        if key is None:
            key = name.decode("latin-1").lower()
            if len(_NAMES) < 1024:
                _NAMES[name] = key
        text = value.decode("latin-1").strip(" \t")
        headers = self.headers
        headers[key] = f"{headers[key]}, {text}" if key in headers else text

    def on_headers_complete(self) -> None:
        parser = self._parser
        assert parser is not None  # called by it
        status = parser.get_status_code()
        if status < 100:
            raise ProtocolError(f"a malformed status code {status}")
        if status < 200:
            if status == 101:
                raise ProtocolError("the upstream switched protocols unasked")
            return  # an interim response (100 Continue, 103 Early Hints): the real one follows
        self.status = status
        self.head_done = True
        self._size = 0
        headers = self.headers
        self.keep_alive = parser.should_keep_alive()
        if self.head_request:
            raise _Stop
        te = headers.get("transfer-encoding")
        if te is not None:
            # llhttp has refused Content-Length beside it; any coding but chunked is refused.
            if _tokens(te.lower()) != ["chunked"]:
                raise ProtocolError(f"unsupported transfer-coding {te!r}")
        elif "content-length" not in headers:
            if status != 204 and status != 304:
                self._until_close = True
                self.keep_alive = False
        elif status != 204 and status != 304:
            # llhttp has checked the value (digits, one length); what it reads of the body in
            # this feed is taken off in feed(), the rest is counted there.
            self._left = int(headers["content-length"])

    def on_message_complete(self) -> None:
        if self.head_done:
            self.complete = True


# Field names seen before and their lower-case form.
_NAMES: dict[bytes, str] = {}


def _tokens(value: str) -> list[str]:
    return [t.strip() for t in value.split(",") if t.strip()]

"""Server-sent events: a sans-IO decoder for upstream streams, and the framing we send."""

from __future__ import annotations

DONE = b"[DONE]"
DONE_EVENT = b"data: [DONE]\n\n"


def _line(p: bytes) -> bytes:
    # A payload with line breaks (multi-line `data:` upstream) stays one event.
    return p.replace(b"\n", b"\ndata: ") if b"\n" in p else p


def frame(payloads: list[bytes]) -> bytes:
    """SSE-frame JSON payloads as `data: ...` events, in one buffer for one send."""
    if len(payloads) == 1:
        return b"data: " + _line(payloads[0]) + b"\n\n"
    return b"".join([b"data: " + _line(p) + b"\n\n" for p in payloads])


class SSEDecoder:
    """Feed bytes as they arrive; get the `data` payloads of completed events.

    Lines may end in LF, CRLF or CR and may be split anywhere across feeds. Comment lines
    and fields other than `data` are ignored; multi-line data is joined with LF, per the
    WHATWG event-stream rules.
    """

    __slots__ = ("_buf", "_data")

    def __init__(self) -> None:
        self._buf = b""
        self._data: list[bytes] = []

    def feed(self, chunk: bytes) -> list[bytes]:
        if not self._buf and not self._data and chunk.endswith(b"\n\n") and b"\r" not in chunk:
            # The common case, in C: whole `data: ...` events, one line each.
            events = chunk[:-2].split(b"\n\n")
            out = []
            for e in events:
                if e.startswith(b"data: ") and b"\n" not in e:
                    out.append(e[6:])
                else:
                    return self._feed(chunk)
            return out
        return self._feed(chunk)

    def _feed(self, chunk: bytes) -> list[bytes]:
        buf = self._buf + chunk if self._buf else chunk
        if b"\r" in buf:
            if buf.endswith(b"\r"):
                # Could be the first half of a CRLF: decide once more bytes arrive.
                self._buf = buf
                buf = buf[:-1]
                keep_cr = True
            else:
                keep_cr = False
            buf = buf.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        else:
            keep_cr = False
        out: list[bytes] = []
        data = self._data
        start = 0
        find = buf.find
        while True:
            nl = find(b"\n", start)
            if nl < 0:
                break
            line = buf[start:nl]
            start = nl + 1
            if not line:
                if data:
                    out.append(data[0] if len(data) == 1 else b"\n".join(data))
                    data.clear()
            elif line.startswith(b"data:"):
                value = line[5:]
                data.append(value[1:] if value[:1] == b" " else value)
            # Comments (":") and event/id/retry fields carry nothing the router relays.
        if keep_cr:
            self._buf = buf[start:] + b"\r"
        else:
            self._buf = buf[start:]
        return out

    def close(self) -> list[bytes]:
        """End of stream: an event missing its final blank line is still dispatched (more
        lenient than WHATWG, which drops it: some upstreams omit the last blank line)."""
        tail = self._buf.rstrip(b"\r")
        self._buf = b""
        out = self.feed(tail + b"\n\n") if tail or self._data else []
        self._buf = b""
        return out

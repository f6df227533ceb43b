"""Length-prefixed frames (a 4-byte big-endian length, then the body): how the workers talk to
the servers in the main process (shared limits, the prefix indexes' relay). Pure."""

from __future__ import annotations

import struct

HEAD = struct.Struct("!I")  # a frame's length


def whole(buf: bytes, limit: int | None = None) -> int:
    """Where the whole frames at the start of `buf` end (0: none yet). ValueError for a frame
    declared longer than `limit`."""
    pos, n = 0, len(buf)
    while n - pos >= 4:
        size = HEAD.unpack_from(buf, pos)[0]
        if limit is not None and size > limit:
            raise ValueError("frame too large")
        if n - pos - 4 < size:
            break
        pos += 4 + size
    return pos


def split(buf: bytes, limit: int | None = None) -> tuple[list[bytes], bytes]:
    """The complete frames' bodies in `buf`, and the bytes left of an incomplete one.
    ValueError for a frame declared longer than `limit`."""
    out = []
    pos, n = 0, len(buf)
    while n - pos >= 4:
        size = HEAD.unpack_from(buf, pos)[0]
        if limit is not None and size > limit:
            raise ValueError("frame too large")
        end = pos + 4 + size
        if end > n:
            break
        out.append(buf[pos + 4:end])
        pos = end
    return out, buf[pos:]

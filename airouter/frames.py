"""Length-prefixed frames (a 4-byte big-endian length, then the body): how the workers talk to
the servers in the main process (shared limits, the prefix indexes' relay). Pure."""

from __future__ import annotations

import struct
from collections import deque
from collections.abc import Iterator

HEAD = struct.Struct("!I")  # a frame's length


def _ends(buf: bytes, limit: int | None) -> Iterator[int]:
    """Where each whole frame at the start of `buf` ends. ValueError for a frame declared
    longer than `limit`."""
    pos, n = 0, len(buf)
    while n - pos >= 4:
        size = HEAD.unpack_from(buf, pos)[0]
        if limit is not None and size > limit:
            raise ValueError("frame too large")
        pos += 4 + size
        if pos > n:
            return
        yield pos


def whole(buf: bytes, limit: int | None = None) -> int:
    """Where the whole frames at the start of `buf` end (0: none yet)."""
    last = deque(_ends(buf, limit), maxlen=1)
    return last[0] if last else 0


def split(buf: bytes, limit: int | None = None) -> tuple[list[bytes], bytes]:
    """The complete frames' bodies in `buf`, and the bytes left of an incomplete one."""
    out = []
    pos = 0
    for end in _ends(buf, limit):
        out.append(buf[pos + 4:end])
        pos = end
    return out, buf[pos:]

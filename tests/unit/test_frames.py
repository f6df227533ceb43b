"""Length-prefixed frames, cut from a byte stream at every split point: whole frames out, the
rest kept, a frame declared past the limit refused before its body is waited for."""

from __future__ import annotations

import pytest

from airouter import frames

BODIES = [b"ab", b"", b"x" * 300, b"\x00\x00\x00\x01"]
STREAM = b"".join(frames.HEAD.pack(len(b)) + b for b in BODIES)


def test_split_and_whole_agree_at_every_split_point() -> None:
    for cut in range(len(STREAM) + 1):
        got: list[bytes] = []
        buf = b""
        for piece in (STREAM[:cut], STREAM[cut:]):
            buf += piece
            end = frames.whole(buf)
            bodies, rest = frames.split(buf)
            # whole() ends where split() stops: the frames passed on as they came are the
            # frames split() decodes.
            assert rest == buf[end:]
            assert frames.split(buf[:end]) == (bodies, b"")
            got += bodies
            buf = rest
        assert got == BODIES and buf == b""


def test_a_frame_past_the_limit_is_refused_from_its_head() -> None:
    head = frames.HEAD.pack(1000)
    with pytest.raises(ValueError, match="too large"):
        frames.whole(head, limit=999)
    with pytest.raises(ValueError, match="too large"):
        frames.split(frames.HEAD.pack(1) + b"a" + head, limit=999)
    assert frames.whole(head + b"x" * 1000, limit=1000) == 1004
    assert frames.split(head, limit=1000) == ([], head)

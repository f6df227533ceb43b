"""Finding literal markers (tags) in a text stream that arrives in pieces."""

from __future__ import annotations

import re

__all__ = ["WS_RUN", "PieceScan", "partial_start"]

WS_RUN = re.compile(r"\s*")


def partial_start(s: str, i: int, tag: str) -> int:
    """Start of the longest suffix of ``s[i:]`` that is a proper prefix of ``tag`` (else len).

    That suffix must be held back: the next piece may complete the tag. Cost is bounded by
    ``len(tag)``, whatever the length of ``s``.
    """
    n = len(s)
    p = s.find(tag[0], max(i, n - len(tag) + 1))
    while p >= 0:
        if tag.startswith(s[p:]):
            return p
        p = s.find(tag[0], p + 1)
    return n


class PieceScan:
    """A sans-IO scanner of text in pieces: it holds back a possible partial tag for the next
    piece and counts the characters it looks at."""

    __slots__ = ("_tail", "_scanned")

    def __init__(self) -> None:
        self._tail = ""  # a possible partial tag, scanned again with the next piece
        self._scanned = 0

    @property
    def scanned(self) -> int:
        """Characters looked at so far (held-back ones count each time they are looked at)."""
        return self._scanned

    def _resume(self, text: str) -> str:
        """``text`` behind the held-back tail, counted as looked at."""
        s = self._tail + text if self._tail else text
        self._tail = ""
        self._scanned += len(s)
        return s

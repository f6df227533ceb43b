"""Finding literal markers (tags) in a text stream that arrives in pieces."""

from __future__ import annotations

import re

__all__ = ["WS_RUN", "partial_start"]

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

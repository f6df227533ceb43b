"""Client-supplied strings (a glob-matched model name, a path) are cut to a bounded length
before they reach logs, span attributes or metric labels: one request must not grow the log
by megabytes."""

from __future__ import annotations

MAX_LOGGED = 256


def bounded(text: str, limit: int = MAX_LOGGED) -> str:
    if len(text) <= limit:
        return text
    return f"{text[:limit]}...[{len(text) - limit} more chars]"


def escaped(text: str, limit: int = MAX_LOGGED) -> str:
    """Upstream text for a log line: its first `limit` characters, with control characters
    and non-ASCII escaped, so that it stays one line and cannot forge another."""
    return text[:limit].encode("unicode_escape", "backslashreplace").decode("ascii")

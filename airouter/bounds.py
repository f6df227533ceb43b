"""Client-supplied strings (a glob-matched model name, a path) are cut to a bounded length
before they reach logs, span attributes or metric labels: one request must not grow the log
by megabytes."""

from __future__ import annotations

MAX_LOGGED = 256
UPSTREAM_LOGGED = 500  # characters of an upstream's text (an error body, a bad event) logged


def bounded(text: str, limit: int = MAX_LOGGED) -> str:
    if len(text) <= limit:
        return text
    return f"{text[:limit]}...[{len(text) - limit} more chars]"


def escaped(text: str, limit: int = UPSTREAM_LOGGED) -> str:
    """Upstream text for a log line: its first `limit` characters, with control characters
    and non-ASCII escaped, so that it stays one line and cannot forge another."""
    return text[:limit].encode("unicode_escape", "backslashreplace").decode("ascii")

"""What the upstream HTTP client raises: connection failures, malformed answers, deadlines."""

from __future__ import annotations


class HttpError(Exception):
    """The upstream's connection failed (refused, reset, closed early, not HTTP)."""


class ConnectError(HttpError):
    """No connection could be made: nothing was sent."""


class Disconnected(HttpError):
    """The connection closed before the response was whole."""


class BadResponse(HttpError):
    """The upstream's bytes are not a well-formed HTTP/1.x response."""


class Deadline(TimeoutError):
    """A deadline of the exchange passed: `what` is "head" (the response's head did not come
    in time), "whole" (the response did not end in time) or "idle" (the upstream went
    silent for longer than the pool's idle timeout once the head was in)."""

    def __init__(self, what: str) -> None:
        super().__init__(what)
        self.what = what

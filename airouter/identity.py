"""Who is asking and which request this is: the credentials, the request id (the client's or
a minted one) and the trace headers passed on to the backend."""

from __future__ import annotations

import itertools
import os
import re
import uuid
from collections.abc import Callable

_UNSAFE = re.compile(r"[^\x20-\x7e]")
# A client's x-request-id is kept only when it is an id: at most 128 characters of these (no
# space, quote or bracket: it is written into log lines' prefix and upstream headers).
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:/+=@-]{1,128}")
_FORWARD = ("traceparent", "tracestate")

# UUID-shaped (some upstreams, starlette-context behind llama.cpp's server for one, reject
# anything else): a random per-process prefix and a counter, cheaper than uuid4 per request.
_RID_PREFIX = str(uuid.UUID(bytes=os.urandom(16), version=4))[:24]
_rid_counter = itertools.count(int.from_bytes(os.urandom(4)))


def new_request_id() -> str:
    return f"{_RID_PREFIX}{next(_rid_counter) & 0xFFFFFFFFFFFF:012x}"


class RequestHeaders:
    """The headers a request's handling needs, looked up by name (the server parsed them):
    `get` answers a header's value by its name in lower case."""

    __slots__ = ("authorization", "api_key", "request_id", "forward", "length")

    def __init__(self, get: Callable[[str], str | None]) -> None:
        self.authorization: str | None = get("authorization")
        self.api_key: str | None = get("api-key") or get("x-api-key")
        self.length: str | None = get("content-length")
        rid = get("x-request-id")
        # Anything else is replaced by a minted id (echoed like the client's would be): a
        # client's string must not shape our log lines, headers or gRPC metadata.
        if rid is None or _REQUEST_ID.fullmatch(rid) is None:
            rid = new_request_id()
        self.request_id: str = rid
        self.forward: dict[str, str] = {"x-request-id": rid}
        for name in _FORWARD:
            v = get(name)
            if v is not None and not _UNSAFE.search(v):
                self.forward[name] = v

"""Who is asking and which request this is: the credentials, the request id (the client's or
a minted one) and the trace headers passed on to the backend."""

from __future__ import annotations

import itertools
import os
import re
import uuid

from airouter.asgi import Scope

_UNSAFE = re.compile(rb"[^\x20-\x7e]")
_FORWARD = frozenset({b"traceparent", b"tracestate", b"x-request-id"})

# UUID-shaped (some upstreams, starlette-context behind llama.cpp's server for one, reject
# anything else): a random per-process prefix and a counter, cheaper than uuid4 per request.
_RID_PREFIX = str(uuid.UUID(bytes=os.urandom(16), version=4))[:24]
_rid_counter = itertools.count(int.from_bytes(os.urandom(4)))


def new_request_id() -> bytes:
    return f"{_RID_PREFIX}{next(_rid_counter) & 0xFFFFFFFFFFFF:012x}".encode()


class RequestHeaders:
    """The headers a request's handling needs, read in one pass."""

    __slots__ = ("authorization", "api_key", "request_id", "forward")

    def __init__(self, scope: Scope) -> None:
        self.authorization: bytes | None = None
        self.api_key: bytes | None = None
        self.request_id: bytes | None = None
        self.forward: dict[str, str] = {}
        for k, v in scope["headers"]:
            if k == b"authorization":
                self.authorization = v
            elif k == b"api-key" or k == b"x-api-key":
                self.api_key = v
            elif k in _FORWARD:
                if _UNSAFE.search(v):
                    continue  # not printable ASCII: not fit for our headers, logs or gRPC metadata
                if k == b"x-request-id":
                    # Bound what we echo back and log.
                    v = v[:128]
                    self.request_id = v
                self.forward[k.decode()] = v.decode("latin-1")
        if self.request_id is None:
            self.request_id = new_request_id()
            self.forward["x-request-id"] = self.request_id.decode()

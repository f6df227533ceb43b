"""The OpenAI endpoints a call is for."""

from __future__ import annotations

import enum


class Endpoint(enum.Enum):
    CHAT = "chat.completions"
    COMPLETIONS = "completions"
    EMBEDDINGS = "embeddings"

    # Members are singletons compared by identity: hash them so too, in C (Enum's own
    # __hash__ is a Python call, and endpoints key dicts on the request path).
    __hash__ = object.__hash__

"""Chunk payloads the router writes itself (Triton): per-request templates, one encode per token."""

from __future__ import annotations

import os
import time
from typing import Any

import msgspec

from airouter.backends.base import Endpoint

_encode = msgspec.json.Encoder().encode


class ChunkWriter:
    """Builds chat.completion.chunk / text_completion payloads for one request.

    Everything but the text is fixed for the life of a request, so the JSON around it is
    encoded once; each token costs one string encode and one join.
    """

    __slots__ = ("_pre", "_post", "_head", "_endpoint", "_usage_null", "id", "created", "alias")

    def __init__(self, endpoint: Endpoint, alias: str, include_usage: bool) -> None:
        self.id = ("chatcmpl-" if endpoint is Endpoint.CHAT else "cmpl-") + os.urandom(12).hex()
        self.created = int(time.time())
        self.alias = alias
        self._endpoint = endpoint
        self._usage_null = include_usage
        obj = "chat.completion.chunk" if endpoint is Endpoint.CHAT else "text_completion"
        self._head = (
            b'{"id":"'
            + self.id.encode()
            + b'","object":"'
            + obj.encode()
            + b'","created":'
            + str(self.created).encode()
            + b',"model":'
            + _encode(alias)
        )
        tail = b',"usage":null}' if include_usage else b"}"
        if endpoint is Endpoint.CHAT:
            self._pre = self._head + b',"choices":[{"index":0,"delta":{"content":'
            self._post = b'},"logprobs":null,"finish_reason":null}]' + tail
        else:
            self._pre = self._head + b',"choices":[{"index":0,"text":'
            self._post = b',"logprobs":null,"finish_reason":null}]' + tail

    def role(self) -> bytes:
        """The opening chunk of a chat stream."""
        tail = b',"usage":null}' if self._usage_null else b"}"
        return (
            self._head + b',"choices":[{"index":0,"delta":{"role":"assistant","content":""},'
            b'"logprobs":null,"finish_reason":null}]' + tail
        )

    def text(self, text: str) -> bytes:
        return self._pre + _encode(text) + self._post

    def finish(self, reason: str) -> bytes:
        tail = b',"usage":null}' if self._usage_null else b"}"
        if self._endpoint is Endpoint.CHAT:
            choice = b'{"index":0,"delta":{},"logprobs":null,"finish_reason":"'
        else:
            choice = b'{"index":0,"text":"","logprobs":null,"finish_reason":"'
        return self._head + b',"choices":[' + choice + reason.encode() + b'"}]' + tail

    def usage(self, prompt_tokens: int, completion_tokens: int) -> bytes:
        u: dict[str, Any] = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        }
        return self._head + b',"choices":[],"usage":' + _encode(u) + b"}"

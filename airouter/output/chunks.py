"""Chunk payloads the router writes itself (Triton): per-request templates, one encode per token."""

from __future__ import annotations

import os
import time
from typing import Any

import msgspec

from airouter.protocol.endpoints import Endpoint

_encode = msgspec.json.Encoder().encode


def new_id(endpoint: Endpoint) -> str:
    return ("chatcmpl-" if endpoint is Endpoint.CHAT else "cmpl-") + os.urandom(12).hex()


class ChunkWriter:
    """Builds chat.completion.chunk / text_completion payloads for one choice of a request.

    Everything but the text is fixed for the life of a request, so the JSON around it is
    encoded once; each token costs one string encode and one join. The choices of one
    request (n > 1) share `id` and `created` and differ in `index`.
    """

    __slots__ = (
        "_pre",
        "_post",
        "_head",
        "_endpoint",
        "_usage_null",
        "_choice",
        "_tail",
        "id",
        "created",
        "alias",
        "index",
    )

    def __init__(
        self,
        endpoint: Endpoint,
        alias: str,
        include_usage: bool,
        *,
        index: int = 0,
        id: str | None = None,
        created: int | None = None,
    ) -> None:
        self.id = id or new_id(endpoint)
        self.created = int(time.time()) if created is None else created
        self.alias = alias
        self.index = index
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
        self._tail = b',"usage":null}' if include_usage else b"}"
        self._choice = self._head + b',"choices":[{"index":' + str(index).encode()
        if endpoint is Endpoint.CHAT:
            self._pre = self._choice + b',"delta":{"content":'
            self._post = b'},"logprobs":null,"finish_reason":null}]' + self._tail
        else:
            self._pre = self._choice + b',"text":'
            self._post = b',"logprobs":null,"finish_reason":null}]' + self._tail

    def sibling(self, index: int) -> ChunkWriter:
        """The writer of another choice of the same request."""
        return ChunkWriter(
            self._endpoint, self.alias, self._usage_null, index=index, id=self.id,
            created=self.created,
        )

    def role(self) -> bytes:
        """The opening chunk of a chat stream."""
        return (
            self._choice + b',"delta":{"role":"assistant","content":""},'
            b'"logprobs":null,"finish_reason":null}]' + self._tail
        )

    def text(self, text: str) -> bytes:
        return self._pre + _encode(text) + self._post

    def text_logprobs(self, text: str, logprobs: Any) -> bytes:
        """A text delta with its tokens' logprobs (chat: {"content": [...]}; completions:
        the legacy tokens / token_logprobs / top_logprobs / text_offset object)."""
        if self._endpoint is Endpoint.CHAT:
            mid = b'},"logprobs":' + _encode({"content": logprobs, "refusal": None})
        else:
            mid = b',"logprobs":' + _encode(logprobs)
        return self._pre + _encode(text) + mid + b',"finish_reason":null}]' + self._tail

    def _delta(self, delta: bytes) -> bytes:
        return (
            self._choice
            + b',"delta":'
            + delta
            + b',"logprobs":null,"finish_reason":null}]'
            + self._tail
        )

    def reasoning(self, text: str) -> bytes:
        return self._delta(b'{"reasoning_content":' + _encode(text) + b"}")

    def call_start(self, index: int, call_id: str, name: str) -> bytes:
        """A tool call's first delta: its id, type and name, and empty arguments."""
        call = {
            "index": index,
            "id": call_id,
            "type": "function",
            "function": {"name": name, "arguments": ""},
        }
        return self._delta(b'{"tool_calls":[' + _encode(call) + b"]}")

    def call_args(self, index: int, fragment: str) -> bytes:
        return self._delta(
            b'{"tool_calls":[{"index":'
            + str(index).encode()
            + b',"function":{"arguments":'
            + _encode(fragment)
            + b"}}]}"
        )

    def finish(self, reason: str, stop_reason: str | None = None) -> bytes:
        """The choice's last chunk; `stop_reason` names the stop sequence that ended it, as
        vLLM's servers do."""
        if self._endpoint is Endpoint.CHAT:
            body = b',"delta":{},"logprobs":null,"finish_reason":"'
        else:
            body = b',"text":"","logprobs":null,"finish_reason":"'
        end = b'"}]' if stop_reason is None else b'","stop_reason":' + _encode(stop_reason) + b"}]"
        return self._choice + body + reason.encode() + end + self._tail

    def usage(self, prompt_tokens: int, completion_tokens: int) -> bytes:
        u: dict[str, Any] = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        }
        return self._head + b',"choices":[],"usage":' + _encode(u) + b"}"

"""Fixed request and response bodies: what an OpenAI client sends and an upstream answers."""

from __future__ import annotations

import json
from typing import Any

CLIENT_KEY = "sk-bench-client"
UPSTREAM_MODEL = "bench-upstream-model-2024"  # what the upstream calls itself
ALIAS_JSON = "bench-chat"  # router aliases: differ from the upstream model, so it rewrites
ALIAS_SSE = "bench-stream"
ALIAS_PACED = "bench-paced"
ALIAS_TRITON = "bench-triton"
SSE_CHUNKS = 64
CREATED = 1_700_000_000

MESSAGES: list[dict[str, str]] = [
    {"role": "system", "content": "You are a helpful assistant. Answer briefly and precisely."},
    {"role": "user", "content": "Summarise the plot of Hamlet in three sentences, please."},
]


def chat_request(model: str, *, stream: bool, max_tokens: int = 128) -> bytes:
    body: dict[str, Any] = {
        "model": model,
        "messages": MESSAGES,
        "max_tokens": max_tokens,
        "temperature": 0.7,
    }
    if stream:
        body["stream"] = True
    return json.dumps(body, separators=(",", ":")).encode()


_WORDS = (
    "The",
    " prince",
    " of",
    " Denmark",
    " seeks",
    " revenge",
    " for",
    " his",
    " father",
    "'s",
    " murder",
    ",",
    " feigns",
    " madness",
    " and",
    " dies",
    ".",
)


def completion_json() -> bytes:
    text = "".join(_WORDS[i % len(_WORDS)] for i in range(SSE_CHUNKS))
    body = {
        "id": "chatcmpl-bench0000000000000000000001",
        "object": "chat.completion",
        "created": CREATED,
        "model": UPSTREAM_MODEL,
        "system_fingerprint": "fp_bench",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text, "refusal": None},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 31, "completion_tokens": SSE_CHUNKS, "total_tokens": 95},
    }
    return json.dumps(body, separators=(",", ":")).encode()


def chunk_json(content: str | None, *, role: bool = False, finish: str | None = None) -> bytes:
    delta: dict[str, Any] = {}
    if role:
        delta["role"] = "assistant"
    if content is not None:
        delta["content"] = content
    body = {
        "id": "chatcmpl-bench0000000000000000000002",
        "object": "chat.completion.chunk",
        "created": CREATED,
        "model": UPSTREAM_MODEL,
        "system_fingerprint": "fp_bench",
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
    }
    return json.dumps(body, separators=(",", ":")).encode()


def sse_body(chunks: int = SSE_CHUNKS) -> bytes:
    """`chunks` data events (role first, finish last), then [DONE]: one file, as nginx serves it."""
    events = [chunk_json("", role=True)]
    events += [chunk_json(_WORDS[i % len(_WORDS)]) for i in range(chunks - 2)]
    events.append(chunk_json(None, finish="stop"))
    return b"".join(b"data: " + e + b"\n\n" for e in events) + b"data: [DONE]\n\n"

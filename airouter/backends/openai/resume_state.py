"""A streamed chat answer whose node broke off mid-answer, finished by another, without I/O:
which requests may be resumed, what the client has seen so far (read back from the events
relayed, only when a stream broke), the continuation request (the text so far as the final
assistant message, vLLM's `continue_final_message`), and the continuation's events rewritten
to continue the client's one stream (its `id`, `created` and `model`, no second role delta,
usage summed)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgspec

from airouter.backends.openai.relay_state import RelayState, Usage, decode_any
from airouter.protocol.sse import SSEDecoder, frame

_encode = msgspec.json.Encoder().encode

# Request members that make the answer more than text to continue: tool calls, logprobs,
# several choices, guided output, a client's own continuation.
_NOT_RESUMABLE = (
    "tools", "functions", "function_call", "logprobs", "top_logprobs", "response_format",
    "guided_json", "guided_regex", "guided_choice", "guided_grammar", "structured_outputs",
    "continue_final_message", "echo", "prompt_logprobs",
)
_ABSENT: tuple[Any, ...] = (None, False, [], {}, "")
_MAX_TOKENS = ("max_tokens", "max_completion_tokens")


def resumable(body: dict[str, Any]) -> bool:
    """Whether a chat request's answer is plain text another node can continue: one choice,
    no tools, no logprobs, no guided output."""
    if body.get("n") not in (None, 1):
        return False
    if body.get("tool_choice") not in (None, "none"):
        return False
    if body.get("add_generation_prompt") is False:
        return False
    return all(body.get(k) in _ABSENT for k in _NOT_RESUMABLE)


@dataclass(slots=True)
class Relayed:
    """What the client has seen of the answer."""

    id: Any = None
    created: Any = None
    model: Any = None
    text: str = ""
    # Completion tokens relayed: the last usage member's count, else the content deltas'.
    tokens: int = 0
    # The prompt's tokens, when a usage member (continuous usage stats) said.
    prompt_tokens: int | None = None


def relayed(kept: list[bytes]) -> Relayed | None:
    """What the events relayed so far (whole SSE events) said; None when they were more than
    one choice's content (a tool call, reasoning, logprobs, a finish_reason, an error)."""
    dec = SSEDecoder()
    payloads = dec.feed(b"".join(kept)) + dec.close()
    out = Relayed()
    parts: list[str] = []
    deltas = 0
    counted: int | None = None
    for p in payloads:
        try:
            obj = decode_any(p)
        except msgspec.DecodeError:
            return None
        if not isinstance(obj, dict) or "error" in obj:
            return None
        if out.id is None:
            out.id, out.created, out.model = obj.get("id"), obj.get("created"), obj.get("model")
        usage = obj.get("usage")
        if isinstance(usage, dict):
            if isinstance(usage.get("completion_tokens"), int):
                counted = usage["completion_tokens"]
            if isinstance(usage.get("prompt_tokens"), int):
                out.prompt_tokens = usage["prompt_tokens"]
        for choice in obj.get("choices") or ():
            text = _content(choice)
            if text is None:
                return None
            if text:
                parts.append(text)
                deltas += 1
    out.text = "".join(parts)
    out.tokens = counted if counted is not None else deltas
    return out


def _content(choice: Any) -> str | None:
    """The text one choice's delta adds; None if it is anything but the first choice's text."""
    if not isinstance(choice, dict) or choice.get("index", 0) != 0:
        return None
    if choice.get("finish_reason") is not None or choice.get("logprobs") is not None:
        return None
    delta = choice.get("delta")
    text = ""
    if not isinstance(delta, dict):
        return None if delta is not None else text
    for k, v in delta.items():
        if k == "content" and isinstance(v, str):
            text = v
        elif k == "role" and v == "assistant":
            continue
        elif v not in _ABSENT:  # tool_calls, reasoning_content, ...
            return None
    return text


def continuation(body: dict[str, Any], seen: Relayed) -> dict[str, Any] | None:
    """The request that continues the answer from where `seen` ends (the client's request when
    no text was relayed yet); None when no tokens are left to ask for."""
    if not seen.text:
        return dict(body)
    messages = body.get("messages")
    if not isinstance(messages, list):
        return None
    out = {**body, "messages": [*messages, {"role": "assistant", "content": seen.text}],
           "continue_final_message": True, "add_generation_prompt": False}
    for k in _MAX_TOKENS:
        limit = body.get(k)
        if isinstance(limit, int) and not isinstance(limit, bool):
            if limit - seen.tokens < 1:
                return None
            out[k] = limit - seen.tokens
    return out


class Continuation:
    """Rewrites a continuation's events (whole SSE events, `model` already the alias) into the
    rest of the client's stream."""

    __slots__ = ("seen",)

    def __init__(self, seen: Relayed) -> None:
        self.seen = seen

    def rewrite(self, out: bytes) -> bytes:
        dec = SSEDecoder()
        kept = []
        for p in dec.feed(out) + dec.close():
            obj = decode_any(p)
            if not isinstance(obj, dict):
                kept.append(p)
                continue
            if self._chunk(obj):
                kept.append(_encode(obj))
        return frame(kept) if kept else b""

    def _chunk(self, obj: dict[str, Any]) -> bool:
        """Rewrite one chunk in place; False: drop it (nothing left but a role)."""
        seen = self.seen
        for k in ("id", "created", "model"):
            v = getattr(seen, k)
            if v is not None and k in obj:
                obj[k] = v
        usage = obj.get("usage")
        if isinstance(usage, dict):
            self._usage(usage)
        choices = obj.get("choices")
        if not isinstance(choices, list) or not choices:
            return True
        empty = usage is None
        for c in choices:
            if not isinstance(c, dict):
                return True
            delta = c.get("delta")
            if isinstance(delta, dict):
                delta.pop("role", None)
                if any(v not in _ABSENT for v in delta.values()):
                    empty = False
            if c.get("finish_reason") is not None or c.get("logprobs") is not None:
                empty = False
        return not empty

    def _usage(self, usage: dict[str, Any]) -> None:
        """The whole answer's: the first attempt's prompt (when it said; else this one's less
        the tokens relayed), the completion tokens of both."""
        seen = self.seen
        completion = usage.get("completion_tokens")
        if isinstance(completion, int):
            completion = usage["completion_tokens"] = completion + seen.tokens
        prompt = usage.get("prompt_tokens")
        if seen.prompt_tokens is not None:
            prompt = usage["prompt_tokens"] = seen.prompt_tokens
        elif isinstance(prompt, int):
            prompt = usage["prompt_tokens"] = max(0, prompt - seen.tokens)
        if isinstance(prompt, int) and isinstance(completion, int):
            usage["total_tokens"] = prompt + completion
            details = usage.get("prompt_tokens_details")
            if isinstance(details, dict) and isinstance(details.get("cached_tokens"), int):
                details["cached_tokens"] = min(details["cached_tokens"], prompt)


class KeptState(RelayState):
    """A relay that remembers what it relayed (to read back if the stream breaks) and, for a
    continuation, rewrites it first. One list append per read on the way."""

    __slots__ = ("kept", "cont")

    def __init__(self, name: str, model_repl: bytes, stats: Usage, kept: list[bytes],
                 cont: Continuation | None = None) -> None:
        super().__init__(name, model_repl, stats)
        self.kept = kept
        self.cont = cont

    def raw(self, data: bytes) -> bytes | None:
        cont = self.cont
        if cont is None:
            out = RelayState.raw(self, data)
            if out:
                self.kept.append(out)
            return out
        tail = self.tail
        out = RelayState.raw(self, data)
        if out:
            # The tail as the client sees it: finish_reason and the summed usage, for the stats.
            self.tail = tail
            out = cont.rewrite(out)
            if out:
                self._keep_tail(out)
                self.kept.append(out)
        return out

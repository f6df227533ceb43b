"""Reading the chat path's answers for the translating front doors: chunk payloads and the
parts of a whole chat.completion they need."""

from __future__ import annotations

from typing import Any

import msgspec

from airouter.errors import BadGateway, UpstreamError

_decode = msgspec.json.Decoder().decode


class FunctionDelta(msgspec.Struct):
    name: str | None = None
    arguments: str | None = None


class ToolCallDelta(msgspec.Struct):
    index: int | None = None
    id: str | None = None
    function: FunctionDelta | None = None


class Delta(msgspec.Struct):
    content: str | None = None
    reasoning_content: str | None = None
    reasoning: str | None = None  # what some servers call reasoning_content
    tool_calls: list[ToolCallDelta] | None = None


class ChunkChoice(msgspec.Struct):
    delta: Delta | None = None
    finish_reason: str | None = None
    stop_reason: str | int | None = None  # the matched stop sequence, where vLLM reports it


class Chunk(msgspec.Struct):
    """The parts of a chat.completion.chunk a translator reads; the rest is skipped unread."""

    choices: list[ChunkChoice] | None = None
    usage: dict[str, Any] | None = None
    error: Any = None


_decode_chunk = msgspec.json.Decoder(Chunk).decode


def read_chunk(payload: bytes) -> Chunk:
    """One chat chunk payload, typed; an in-band upstream error is raised as the error it is."""
    try:
        c = _decode_chunk(payload)
    except (msgspec.DecodeError, msgspec.ValidationError):
        raise BadGateway("The backend sent a malformed stream chunk.") from None
    if c.error is not None:
        chunk_obj(payload)  # raises the upstream's error
    return c


class ChunkEvents:
    """The loop every translating front door runs over chat chunks: usage is kept, and the
    first choice's reasoning, content and tool-call deltas and its finish go to the door's
    event writer, which appends the events it makes to `out`."""

    started: bool
    usage: dict[str, Any] | None

    def start(self) -> bytes:
        raise NotImplementedError

    def _reasoning(self, text: str, out: list[bytes]) -> None:
        raise NotImplementedError

    def _content(self, text: str, out: list[bytes]) -> None:
        raise NotImplementedError

    def _tool_delta(self, tc: ToolCallDelta, out: list[bytes]) -> None:
        raise NotImplementedError

    def _finished(self, choice: ChunkChoice) -> None:
        raise NotImplementedError

    def feed(self, payloads: list[bytes]) -> bytes:
        out: list[bytes] = [] if self.started else [self.start()]
        for payload in payloads:
            c = read_chunk(payload)
            if c.usage is not None:
                self.usage = c.usage
            if not c.choices:
                continue
            choice = c.choices[0]
            delta = choice.delta
            if delta is not None:
                reasoning = delta.reasoning_content or delta.reasoning
                if reasoning:
                    self._reasoning(reasoning, out)
                if delta.content:
                    self._content(delta.content, out)
                for tc in delta.tool_calls or ():
                    self._tool_delta(tc, out)
            if choice.finish_reason:
                self._finished(choice)
        return b"".join(out)


def chunk_obj(payload: bytes) -> dict[str, Any]:
    """One chat chunk payload; an in-band upstream error is raised as the error it is."""
    try:
        obj = _decode(payload)
    except msgspec.DecodeError:
        raise BadGateway("The backend sent a malformed stream chunk.") from None
    if not isinstance(obj, dict):
        raise BadGateway("The backend sent a malformed stream chunk.")
    err = obj.get("error")
    if isinstance(err, dict):
        code = err.get("code")
        raise UpstreamError(
            str(err.get("message") or "The backend reported an error."),
            status=502,
            code=code if isinstance(code, str) else "upstream_error",
        )
    return obj


def first_choice(obj: dict[str, Any]) -> dict[str, Any] | None:
    choices = obj.get("choices")
    if isinstance(choices, list) and choices and isinstance(choices[0], dict):
        return choices[0]
    return None


def token_counts(usage: Any) -> tuple[int, int, int, int]:
    """(prompt, completion, cached prompt, reasoning) tokens of a chat usage object."""
    if not isinstance(usage, dict):
        return 0, 0, 0, 0
    pd = usage.get("prompt_tokens_details") or {}
    cd = usage.get("completion_tokens_details") or {}
    return (
        int(usage.get("prompt_tokens") or 0),
        int(usage.get("completion_tokens") or 0),
        int(pd.get("cached_tokens") or 0) if isinstance(pd, dict) else 0,
        int(cd.get("reasoning_tokens") or 0) if isinstance(cd, dict) else 0,
    )


def tool_calls(message: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(id, name, arguments) of each tool call in a whole chat message."""
    out = []
    for tc in message.get("tool_calls") or ():
        fn = tc.get("function") or {}
        out.append((str(tc.get("id") or ""), str(fn.get("name") or ""),
                    str(fn.get("arguments") or "")))
    return out

"""Chat answers -> OpenAI Responses objects and stream events (sans-IO).

Output items come in the order the chat stream opens them: reasoning (from
`reasoning_content`), then the message, then one `function_call` item per tool call.
"""

from __future__ import annotations

import os
import time
from typing import Any

import msgspec

from airouter.doors.chat_read import (
    ChunkChoice,
    ChunkEvents,
    ToolCallDelta,
    chunk_obj,
    first_choice,
    token_counts,
    tool_calls,
)
from airouter.doors.responses import ResponsesRequest

_encode = msgspec.json.Encoder().encode


def _new_id(prefix: str) -> str:
    return prefix + os.urandom(12).hex()


def _usage(chat_usage: Any) -> dict[str, Any] | None:
    if chat_usage is None:
        return None
    prompt, completion, cached, reasoning = token_counts(chat_usage)
    return {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": cached, "cache_write_tokens": 0},
        "output_tokens": completion,
        "output_tokens_details": {"reasoning_tokens": reasoning},
        "total_tokens": prompt + completion,
    }


def _status(finish: str | None) -> tuple[str, dict[str, str] | None]:
    if finish == "length":
        return "incomplete", {"reason": "max_output_tokens"}
    if finish == "content_filter":
        return "incomplete", {"reason": "content_filter"}
    return "completed", None


def response_object(
    req: ResponsesRequest,
    rid: str,
    created: int,
    alias: str,
    status: str,
    output: list[dict[str, Any]],
    *,
    usage: dict[str, Any] | None = None,
    incomplete: dict[str, str] | None = None,
    error: dict[str, str] | None = None,
) -> dict[str, Any]:
    r = {
        "id": rid,
        "object": "response",
        "created_at": created,
        "status": status,
        "completed_at": int(time.time()) if status == "completed" else None,
        "error": error,
        "incomplete_details": incomplete,
        "instructions": req.instructions,
        "max_output_tokens": req.max_output_tokens,
        "model": alias,
        "output": output,
        "parallel_tool_calls": req.parallel_tool_calls,
        "previous_response_id": None,
        "reasoning": req.reasoning,
        "store": req.store,
        "temperature": req.temperature,
        "text": req.text,
        "tool_choice": req.tool_choice,
        "tools": req.tools,
        "top_p": req.top_p,
        "truncation": "disabled",
        "metadata": req.metadata,
    }
    # The schema has no null for these: absent until known.
    if usage is not None:
        r["usage"] = usage
    if req.user is not None:
        r["user"] = req.user
    return r


def _text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def _reasoning_item(item_id: str, text: str, status: str) -> dict[str, Any]:
    content = [{"type": "reasoning_text", "text": text}] if text else []
    return {"id": item_id, "type": "reasoning", "summary": [], "content": content,
            "status": status}


def _message_item(item_id: str, parts: list[dict[str, Any]], status: str) -> dict[str, Any]:
    return {"id": item_id, "type": "message", "role": "assistant", "status": status,
            "content": parts}


def _call_item(item_id: str, call_id: str, name: str, args: str, status: str) -> dict[str, Any]:
    return {"id": item_id, "type": "function_call", "call_id": call_id, "name": name,
            "arguments": args, "status": status}


def response_from_chat(req: ResponsesRequest, chat: bytes, alias: str) -> bytes:
    """A whole chat.completion -> a whole Responses `response` object."""
    obj = chunk_obj(chat)
    alias = str(obj.get("model") or alias)
    choice = first_choice(obj) or {}
    message = choice.get("message") or {}
    status, incomplete = _status(choice.get("finish_reason"))
    output: list[dict[str, Any]] = []
    reasoning = message.get("reasoning_content") or message.get("reasoning")
    if isinstance(reasoning, str) and reasoning:
        output.append(_reasoning_item(_new_id("rs_"), reasoning, "completed"))
    parts = []
    if message.get("content"):
        parts.append(_text_part(str(message["content"])))
    if message.get("refusal"):
        parts.append({"type": "refusal", "refusal": str(message["refusal"])})
    if parts:
        output.append(_message_item(_new_id("msg_"), parts, "completed"))
    for call_id, name, args in tool_calls(message):
        output.append(_call_item(_new_id("fc_"), call_id, name, args, "completed"))
    if output and status == "incomplete":
        output[-1]["status"] = "incomplete"  # the item the limit cut; those before it ended
    created = obj.get("created")
    return _encode(response_object(
        req, _new_id("resp_"), created if isinstance(created, int) else int(time.time()),
        alias, status, output, usage=_usage(obj.get("usage")), incomplete=incomplete,
    ))


class _Item:
    __slots__ = ("kind", "id", "index", "parts", "call_id", "name", "prefix", "status")

    def __init__(self, kind: str, item_id: str, index: int) -> None:
        self.kind = kind
        self.id = item_id
        self.index = index
        self.parts: list[str] = []
        self.call_id = ""
        self.name = ""
        self.prefix = b""  # the encoded head of this item's delta events
        self.status = "in_progress"

    def text(self) -> str:
        return "".join(self.parts)

    def done(self, status: str | None = None) -> dict[str, Any]:
        status = status or self.status
        if self.kind == "reasoning":
            return _reasoning_item(self.id, self.text(), status)
        if self.kind == "message":
            return _message_item(self.id, [_text_part(self.text())], status)
        return _call_item(self.id, self.call_id, self.name, self.text(), status)


_DELTA_TYPES = {
    "reasoning": "response.reasoning_text.delta",
    "message": "response.output_text.delta",
    "function_call": "response.function_call_arguments.delta",
}


class ResponsesStream(ChunkEvents):
    """Feed chat chunk payloads; get Responses SSE events, each with its `sequence_number`."""

    def __init__(self, req: ResponsesRequest, alias: str) -> None:
        self.req = req
        self.alias = alias
        self.id = _new_id("resp_")
        self.created = int(time.time())
        self.seq = 0
        self.items: list[_Item] = []
        self.open: _Item | None = None
        self.calls: dict[int, _Item] = {}
        self.finish: str | None = None
        self.usage: Any = None
        self.started = False

    def _event(self, kind: str, fields: dict[str, Any]) -> bytes:
        fields["type"] = kind
        fields["sequence_number"] = self.seq
        self.seq += 1
        return b"event: " + kind.encode() + b"\ndata: " + _encode(fields) + b"\n\n"

    def _response(self, status: str, **kw: Any) -> dict[str, Any]:
        output = [it.done() for it in self.items if it is not self.open]
        return response_object(self.req, self.id, self.created, self.alias, status, output, **kw)

    def start(self) -> bytes:
        """The stream's opening events (sent with the first chunk's, or by end/fail)."""
        self.started = True
        r = self._response("in_progress")
        return self._event("response.created", {"response": r}) + self._event(
            "response.in_progress", {"response": r}
        )

    def _open(self, kind: str, out: list[bytes], call_id: str = "", name: str = "") -> _Item:
        prefix = {"reasoning": "rs_", "message": "msg_", "function_call": "fc_"}[kind]
        item = _Item(kind, _new_id(prefix), len(self.items))
        item.call_id, item.name = call_id, name
        self.items.append(item)
        self.open = item
        out.append(self._event("response.output_item.added",
                               {"output_index": item.index, "item": item.done("in_progress")}))
        if kind == "message":
            out.append(self._event("response.content_part.added", {
                "item_id": item.id, "output_index": item.index, "content_index": 0,
                "part": _text_part("")}))
        head = {"type": _DELTA_TYPES[kind], "item_id": item.id, "output_index": item.index}
        if kind != "function_call":
            head["content_index"] = 0
        if kind == "message":
            head["logprobs"] = []
        item.prefix = b"event: " + _DELTA_TYPES[kind].encode() + b"\ndata: " + _encode(head)[:-1]
        return item

    def _delta(self, item: _Item, text: str) -> bytes:
        item.parts.append(text)
        seq = self.seq
        self.seq += 1
        return (item.prefix + b',"delta":' + _encode(text) + b',"sequence_number":'
                + str(seq).encode() + b"}\n\n")

    def _close(self, out: list[bytes], status: str) -> None:
        item = self.open
        if item is None:
            return
        self.open = None
        item.status = status
        text = item.text()
        where = {"item_id": item.id, "output_index": item.index}
        if item.kind == "message":
            out.append(self._event("response.output_text.done",
                                   {**where, "content_index": 0, "text": text, "logprobs": []}))
            out.append(self._event("response.content_part.done",
                                   {**where, "content_index": 0, "part": _text_part(text)}))
        elif item.kind == "reasoning":
            out.append(self._event("response.reasoning_text.done",
                                   {**where, "content_index": 0, "text": text}))
        else:
            out.append(self._event("response.function_call_arguments.done",
                                   {**where, "name": item.name, "arguments": text}))
        out.append(self._event("response.output_item.done",
                               {"output_index": item.index, "item": item.done()}))

    def _switch(self, kind: str, out: list[bytes]) -> _Item:
        item = self.open
        if item is not None and item.kind == kind:
            return item
        self._close(out, "completed")
        return self._open(kind, out)

    def _reasoning(self, text: str, out: list[bytes]) -> None:
        out.append(self._delta(self._switch("reasoning", out), text))

    def _content(self, text: str, out: list[bytes]) -> None:
        out.append(self._delta(self._switch("message", out), text))

    def _finished(self, choice: ChunkChoice) -> None:
        self.finish = choice.finish_reason

    def _tool_delta(self, tc: ToolCallDelta, out: list[bytes]) -> None:
        index = len(self.calls) if tc.index is None else tc.index
        fn = tc.function
        item = self.calls.get(index)
        if item is None:
            self._close(out, "completed")
            name = fn.name if fn is not None else None
            item = self._open("function_call", out, tc.id or "", name or "")
            self.calls[index] = item
        args = fn.arguments if fn is not None else None
        if args:
            if item is not self.open:  # a backend interleaving calls: keep each item whole
                item.parts.append(args)
            else:
                out.append(self._delta(item, args))

    def end(self) -> bytes:
        """The chat stream ended: close the open item and send the final response."""
        status, incomplete = _status(self.finish)
        out: list[bytes] = [] if self.started else [self.start()]
        self._close(out, "incomplete" if incomplete else "completed")
        r = self._response(status, usage=_usage(self.usage), incomplete=incomplete)
        kind = "response.completed" if status == "completed" else "response.incomplete"
        out.append(self._event(kind, {"response": r}))
        return b"".join(out)

    def fail(self, message: str) -> bytes:
        """The stream broke after it started: the response ends as failed."""
        head = b"" if self.started else self.start()
        if self.open is not None:
            self.open.status = "incomplete"  # cut short; the items before it ended
            self.open = None
        r = self._response("failed", usage=_usage(self.usage),
                           error={"code": "server_error", "message": message})
        return head + self._event("response.failed", {"response": r})

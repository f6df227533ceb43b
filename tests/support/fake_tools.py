"""fake-tools: a scripted model that calls the request's first tool, then answers from its result.

Without tools it echoes like fake-echo, cut at the first of the request's `stop` strings it
contains, naming that one in the choice's `stop_reason` (as vLLM does). With tools, and the
conversation not yet holding a tool result, it calls the first tool with
`{<first parameter>: <last user text>}` (arguments streamed in pieces), after a short
`reasoning_content`. Once the last message is a tool result it answers `tool said: <result>`.
"""

from __future__ import annotations

import json

from tests.support.fake_upstream import (
    CREATED,
    MODEL_SUFFIX,
    Json,
    Reply,
    _usage,
    chat_reply,
    content_text,
    last_user_text,
    pieces,
    words,
)

TOOL_CALL_ID = "call_fake_1"
REASONING = "The user wants a tool."


def _call_arguments(tool: Json, text: str) -> str:
    fn = tool.get("function") or {}
    props = (fn.get("parameters") or {}).get("properties") or {}
    name = next(iter(props), "input")
    return json.dumps({name: text})


def _stopped(req: Json, text: str) -> Reply:
    stops = req.get("stop") or []
    found = [(text.find(s), s) for s in ([stops] if isinstance(stops, str) else stops)
             if s in text]
    if not found:
        return chat_reply(req, text)
    at, matched = min(found)
    reply = chat_reply(req, text[:at])
    reply.body["choices"][0]["stop_reason"] = matched
    for kind, c in reply.chunks:
        if kind == "finish":
            c["choices"][0]["stop_reason"] = matched
    return reply


def tool_reply(req: Json) -> Reply:
    messages = req.get("messages") or []
    tools = req.get("tools") or []
    if messages and messages[-1].get("role") == "tool":
        return chat_reply(req, "tool said: " + content_text(messages[-1].get("content")))
    if not tools:
        return _stopped(req, "echo: " + last_user_text(messages))
    fn_name = (tools[0].get("function") or {}).get("name", "")
    args = _call_arguments(tools[0], last_user_text(messages))
    prompt = sum(words(content_text(m.get("content"))) for m in messages)
    usage = _usage(prompt, 5)
    include_usage = bool((req.get("stream_options") or {}).get("include_usage"))
    base = {"id": "chatcmpl-fake-tools", "created": CREATED,
            "model": req["model"] + MODEL_SUFFIX}
    call = {"id": TOOL_CALL_ID, "type": "function",
            "function": {"name": fn_name, "arguments": args}}
    message = {"role": "assistant", "content": None, "reasoning_content": REASONING,
               "tool_calls": [call]}
    body = {**base, "object": "chat.completion", "usage": usage, "choices": [
        {"index": 0, "message": message, "logprobs": None, "finish_reason": "tool_calls"}]}

    def chunk(delta: Json, finish: str | None = None) -> Json:
        out = {**base, "object": "chat.completion.chunk", "choices": [
            {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}
        return {**out, "usage": None} if include_usage else out

    chunks: list[tuple[str, Json]] = [("role", chunk({"role": "assistant", "content": None}))]
    chunks.append(("content", chunk({"reasoning_content": REASONING})))
    chunks.append(("content", chunk({"tool_calls": [
        {"index": 0, "id": TOOL_CALL_ID, "type": "function",
         "function": {"name": fn_name, "arguments": ""}}]})))
    chunks += [("content", chunk({"tool_calls": [{"index": 0, "function": {"arguments": p}}]}))
               for p in pieces(args, 5)]
    chunks.append(("finish", chunk({}, "tool_calls")))
    if include_usage:
        chunks.append(("usage", {**base, "object": "chat.completion.chunk", "choices": [],
                                 "usage": usage}))
    return Reply(body, chunks)

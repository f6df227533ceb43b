"""Resuming a broken stream (openai/resume_state.py): which requests may be resumed, what the
client saw (read back from the events relayed, whatever the upstream's reads), the continuation
request, and the continuation's events rewritten into the rest of the client's stream, fed
split at every point."""

from __future__ import annotations

import json
from typing import Any

import pytest

from airouter.backends.base import Stats
from airouter.backends.openai.relay_state import RelayState
from airouter.backends.openai.resume_state import (
    Continuation,
    KeptState,
    Relayed,
    continuation,
    relayed,
    resumable,
)
from airouter.errors import RouterError
from airouter.protocol.sse import SSEDecoder

REPL = b'"model":"alias"'


def chunk(delta: dict[str, Any] | None, finish: str | None = None, *, cid: str = "chatcmpl-a",
          created: int = 111, usage: dict[str, Any] | None = None, **choice: Any) -> bytes:
    obj: dict[str, Any] = {"id": cid, "object": "chat.completion.chunk", "created": created,
                           "model": "up-1"}
    obj["choices"] = [] if delta is None else [
        {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish, **choice}]
    if usage is not None:
        obj["usage"] = usage
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()


def events(*payloads: bytes) -> bytes:
    return b"".join(b"data: " + p + b"\n\n" for p in payloads)


def payloads(data: bytes) -> list[dict[str, Any]]:
    dec = SSEDecoder()
    return [json.loads(p) for p in dec.feed(data) + dec.close() if p != b"[DONE]"]


FIRST = events(chunk({"role": "assistant", "content": ""}), chunk({"content": "Hel"}),
               chunk({"content": "lo é"}), chunk({"content": "😀 "}))
BODY = {"model": "up", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 10,
        "stream": True, "stream_options": {"include_usage": True}}


# --- which requests ----------------------------------------------------------------------


@pytest.mark.parametrize("extra", [
    {}, {"n": 1}, {"tools": []}, {"tool_choice": "none"}, {"logprobs": False},
    {"response_format": None}, {"temperature": 0.7, "stop": ["\n"], "seed": 3},
])
def test_plain_chat_requests_are_resumable(extra: dict[str, Any]) -> None:
    assert resumable({**BODY, **extra})


@pytest.mark.parametrize("extra", [
    {"n": 2}, {"tools": [{"type": "function", "function": {"name": "f"}}]},
    {"tool_choice": "auto"}, {"tool_choice": "required"}, {"logprobs": True},
    {"top_logprobs": 2}, {"response_format": {"type": "json_object"}},
    {"guided_json": {"type": "object"}}, {"guided_regex": "a+"}, {"guided_choice": ["a"]},
    {"structured_outputs": {"json": {}}}, {"continue_final_message": True},
    {"add_generation_prompt": False}, {"functions": [{"name": "f"}]},
])
def test_requests_with_more_than_text_are_not(extra: dict[str, Any]) -> None:
    assert not resumable({**BODY, **extra})


# --- what the client saw -----------------------------------------------------------------


def fed(st: KeptState, data: bytes, cuts: list[int]) -> list[bytes]:
    """What `st` relays from `data` read in pieces cut at `cuts` (the end not yet fed)."""
    out = []
    bounds = [0, *cuts, len(data)]
    for a, b in zip(bounds, bounds[1:], strict=False):
        if a == b:
            continue  # b"" is the end
        got = st.raw(data[a:b])
        if got:
            out.append(got)
    return out


def kept_by_relay(data: bytes, cuts: list[int]) -> tuple[list[bytes], bytes]:
    """What a KeptState relays and keeps from `data` read in pieces cut at `cuts`."""
    kept: list[bytes] = []
    st = KeptState("b", REPL, Stats(), kept)
    return kept, b"".join(fed(st, data, cuts))


def test_relayed_reads_back_the_text_at_every_split() -> None:
    for cut in range(len(FIRST) + 1):
        kept, out = kept_by_relay(FIRST, [cut])
        assert b"".join(kept) == out  # exactly what was relayed, nothing more
        seen = relayed(kept)
        assert seen == Relayed("chatcmpl-a", 111, "alias", "Hello é😀 ", 3, None), cut


def test_relayed_takes_what_whole_events_say_only() -> None:
    # Half an event was not relayed: it is not counted.
    kept, _ = kept_by_relay(FIRST + FIRST[:30], [len(FIRST) + 10])
    assert relayed(kept) == Relayed("chatcmpl-a", 111, "alias", "Hello é😀 ", 3, None)


def test_relayed_prefers_a_usage_count() -> None:
    usage = {"prompt_tokens": 7, "completion_tokens": 5, "total_tokens": 12}
    kept = [events(chunk({"content": "a"}), chunk({"content": "bc"}, usage=usage))]
    assert relayed(kept) == Relayed("chatcmpl-a", 111, "up-1", "abc", 5, 7)


@pytest.mark.parametrize("bad", [
    chunk({"reasoning_content": "hmm"}),
    chunk({"tool_calls": [{"index": 0, "function": {"arguments": "{"}}]}),
    chunk({"content": "x"}, logprobs={"content": []}),
    chunk({"content": "x"}, "stop"),
    json.dumps({"id": "c", "choices": [{"index": 1, "delta": {"content": "x"}}]}).encode(),
    json.dumps({"error": {"message": "boom"}}).encode(),
    b"[1]",
])
def test_more_than_content_is_not_resumed(bad: bytes) -> None:
    assert relayed([FIRST, events(bad)]) is None


def test_empty_deltas_and_nulls_are_content_only() -> None:
    kept = [events(chunk({"content": "a", "tool_calls": None, "reasoning_content": None}),
                   chunk({}), chunk({"content": None}))]
    seen = relayed(kept)
    assert seen is not None and (seen.text, seen.tokens) == ("a", 1)


# --- the continuation request -------------------------------------------------------------


def test_continuation_adds_the_text_and_takes_the_tokens_off() -> None:
    seen = Relayed("chatcmpl-a", 111, "alias", "Hello", 3)
    body = {**BODY, "max_completion_tokens": 8}
    assert continuation(body, seen) == {
        **body, "messages": [*BODY["messages"], {"role": "assistant", "content": "Hello"}],
        "continue_final_message": True, "add_generation_prompt": False,
        "max_tokens": 7, "max_completion_tokens": 5}
    assert body == {**BODY, "max_completion_tokens": 8}  # untouched
    # No limit: none added.
    assert "max_tokens" not in (continuation({"messages": []}, seen) or {})


def test_continuation_without_tokens_left_is_none() -> None:
    assert continuation(BODY, Relayed(text="x", tokens=10)) is None
    assert continuation(BODY, Relayed(text="x", tokens=9)) is not None


def test_no_text_yet_asks_again() -> None:
    assert continuation(BODY, Relayed(text="", tokens=0)) == BODY


# --- the continuation's events ------------------------------------------------------------

SECOND = events(
    chunk({"role": "assistant", "content": ""}, cid="chatcmpl-b", created=222),
    chunk({"content": " world"}, cid="chatcmpl-b", created=222),
    chunk({"content": "!"}, "stop", cid="chatcmpl-b", created=222),
    chunk(None, cid="chatcmpl-b", created=222,
          usage={"prompt_tokens": 20, "completion_tokens": 2, "total_tokens": 22,
                 "prompt_tokens_details": {"cached_tokens": 19}}),
) + b"data: [DONE]\n\n"


def drive(data: bytes, cuts: list[int], seen: Relayed, kept: list[bytes],
          stats: Stats) -> bytes:
    st = KeptState("b", REPL, stats, kept, Continuation(seen))
    out = fed(st, data, cuts)
    while not st.done:
        got = st.raw(b"")
        if got is None:
            break
    st.end()
    return b"".join(out)


def test_continuation_events_continue_the_clients_stream_at_every_split() -> None:
    seen = Relayed("chatcmpl-a", 111, "alias", "Hello", 3, None)
    want = None
    for cut in range(len(SECOND) + 1):
        kept: list[bytes] = []
        stats = Stats()
        out = drive(SECOND, [cut], seen, kept, stats)
        chunks = payloads(out)
        assert b"".join(kept) == out
        # The role-only chunk is gone; same id, created and model; one finish_reason.
        assert [c["choices"][0]["delta"] for c in chunks[:-1]] == [
            {"content": " world"}, {"content": "!"}], cut
        assert {(c["id"], c["created"], c["model"]) for c in chunks} == {
            ("chatcmpl-a", 111, "alias")}
        # Usage: the tokens relayed taken off the prompt and added to the completion.
        assert chunks[-1]["usage"] == {"prompt_tokens": 17, "completion_tokens": 5,
                                       "total_tokens": 22,
                                       "prompt_tokens_details": {"cached_tokens": 17}}
        assert (stats.prompt_tokens, stats.completion_tokens, stats.finish_reason) == (
            17, 5, "stop")
        assert want is None or out == want
        want = out


def test_continuation_usage_keeps_a_known_prompt() -> None:
    seen = Relayed("chatcmpl-a", 111, "alias", "Hello", 3, 15)
    out = drive(SECOND, [], seen, [], Stats())
    assert payloads(out)[-1]["usage"]["prompt_tokens"] == 15
    assert payloads(out)[-1]["usage"]["total_tokens"] == 20


def test_a_second_break_reads_back_both_parts() -> None:
    kept, _ = kept_by_relay(FIRST, [])
    seen = relayed(kept)
    assert seen is not None
    cut = SECOND.index(b"data: ", SECOND.index(b"world"))  # after " world"
    st = KeptState("b", REPL, Stats(), kept, Continuation(seen))
    st.raw(SECOND[:cut])
    again = relayed(kept)
    assert again == Relayed("chatcmpl-a", 111, "alias", "Hello é😀  world", 4, None)


def test_a_continuation_cut_short_still_raises() -> None:
    seen = Relayed("chatcmpl-a", 111, "alias", "Hello", 3)
    st = KeptState("b", REPL, Stats(), [], Continuation(seen))
    assert st.raw(SECOND[: SECOND.rindex(b"data: ", 0, SECOND.index(b"!"))]) is not None
    with pytest.raises(RouterError) as e:
        st.raw(b"")
    assert e.value.code == "stream_truncated"


def test_kept_state_relays_what_a_plain_one_does() -> None:
    for cut in range(0, len(FIRST) + 1, 7):
        plain = RelayState("b", REPL, Stats())
        kept, out = kept_by_relay(FIRST, [cut])
        want = b"".join(x for x in (plain.raw(FIRST[:cut]) if cut else b"",
                                    plain.raw(FIRST[cut:]) if cut < len(FIRST) else b"") if x)
        assert out == want

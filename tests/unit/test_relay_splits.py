"""The relay state machine (openai/relay_state.py), fed upstream bytes split at every point:
the pass-through fast path and the decoder it falls back to give the same events, model
rewritten, whatever the reads; errors (a non-JSON event, a truncated stream) come at the same
place."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from airouter.backends.base import Stats
from airouter.backends.openai.relay_state import RelayState
from airouter.errors import RouterError
from airouter.protocol.sse import SSEDecoder

REPL = b'"model":"alias"'


def chunk(delta: dict[str, object], finish: str | None = None, model: str = "up-1") -> bytes:
    return json.dumps({"id": "c1", "object": "chat.completion.chunk", "model": model,
                       "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]},
                      separators=(",", ":")).encode()


HELLO, WORLD = chunk({"role": "assistant", "content": "Hel"}), chunk({"content": "lo [DONE]"})
END = chunk({}, "stop")
FIVES = (chunk({"content": "a"}, model="abcde"), chunk({"content": "b"}, model="abcdf"),
         chunk({}, "stop", model="abcde"))


def events(*payloads: bytes, eol: bytes = b"\n") -> bytes:
    return b"".join(b"data: " + p + eol + eol for p in payloads)


def aliased(p: bytes) -> bytes:
    """Every chunk names the alias, whichever model the upstream named."""
    return re.sub(rb'"model":"[^"]*"', REPL, p)


def drive_raw(reads: Sequence[bytes]) -> tuple[list[bytes], str | None, Stats]:
    """What Relay.next_raw does with these reads, then the end of the stream."""
    stats = Stats()
    st = RelayState("b", REPL, stats)
    out: list[bytes] = []
    feed = iter([*reads, b""])
    try:
        while True:
            if st.failed is not None:
                raise st.failed
            if st.done:
                st.end()
                break
            got = st.raw(next(feed))
            if got is None:
                break
            out.append(got)
    except RouterError as e:
        return _payloads(out), e.code, stats
    return _payloads(out), None, stats


def drive_batch(reads: Sequence[bytes]) -> tuple[list[bytes], str | None, Stats]:
    """What Relay.next_batch does with these reads, then the end of the stream."""
    stats = Stats()
    st = RelayState("b", REPL, stats)
    out: list[bytes] = []
    feed = iter([*reads, b""])
    try:
        while not st.done:
            out += st.batch(next(feed))
        st.end()
    except RouterError as e:
        return out, e.code, stats
    return out, None, stats


def _payloads(sent: list[bytes]) -> list[bytes]:
    wire = b"".join(sent)
    assert not wire or wire.endswith(b"\n\n"), wire  # only whole events reach the client
    dec = SSEDecoder()
    return dec.feed(wire) + dec.close()


CASES: dict[str, tuple[bytes, list[bytes], str | None]] = {
    "plain": (events(HELLO, WORLD, END, b"[DONE]"), [HELLO, WORLD, END], None),
    "crlf": (events(HELLO, END, b"[DONE]", eol=b"\r\n"), [HELLO, END], None),
    "cr": (events(HELLO, END, b"[DONE]", eol=b"\r"), [HELLO, END], None),
    "comments": (b": keep-alive\n\n" + events(HELLO) + b": ping\n\nevent: x\n"
                 + events(END, b"[DONE]"), [HELLO, END], None),
    "multi-line data": (b"data: " + HELLO[:20] + b"\ndata: " + HELLO[20:] + b"\n\n"
                        + events(END, b"[DONE]"), [HELLO[:20] + b"\n" + HELLO[20:], END], None),
    "done in content": (events(HELLO, chunk({"content": "data: [DONE]\n\n"}), END, b"[DONE]"),
                        [HELLO, chunk({"content": "data: [DONE]\n\n"}), END], None),
    "non-json event": (events(HELLO, b"oops", END, b"[DONE]"), [HELLO], "bad_upstream_event"),
    "non-json first": (events(b"[1, 2]", HELLO, END, b"[DONE]"), [], "bad_upstream_event"),
    # The end marker's text ending a line that holds a payload: one bad event, not the end.
    "done after a payload": (events(HELLO) + b"data: " + END + b" data: [DONE]\n\n", [HELLO],
                             "bad_upstream_event"),
    "truncated": (events(HELLO, WORLD), [HELLO, WORLD], "stream_truncated"),
    # The decoder hands the cut event over at the end: not JSON, so not relayed.
    "truncated mid-event": (events(HELLO) + b"data: " + END[:15], [HELLO], "bad_upstream_event"),
    "finished, no [DONE]": (events(HELLO, END), [HELLO, END], None),
    "another model": (events(HELLO, chunk({"content": "x"}, model="up-2"), END, b"[DONE]"),
                      [HELLO, chunk({"content": "x"}, model="up-2"), END], None),
    # Model names as long as the alias: the rewrite cannot count replacements by length.
    "another model, alias-long": (events(*FIVES, b"[DONE]"), list(FIVES), None),
    # Events after the end marker are not relayed.
    "events after [DONE]": (events(HELLO, END, b"[DONE]", WORLD), [HELLO, END], None),
}


@pytest.mark.parametrize("drive", [drive_raw, drive_batch], ids=["raw", "batch"])
@pytest.mark.parametrize("name", list(CASES))
def test_every_split_point_gives_the_same_events(
    drive: Callable[[Sequence[bytes]], tuple[list[bytes], str | None, Stats]], name: str
) -> None:
    stream, want, error = CASES[name]
    if drive is drive_batch and error == "bad_upstream_event":
        # Batches are decoded by their consumer, which rejects what is not JSON.
        dec = SSEDecoder()
        want, error = (dec.feed(stream) + dec.close()), None
        if b"[DONE]" in want:
            want = want[: want.index(b"[DONE]")]
        else:
            error = "stream_truncated"
    want = [aliased(p) for p in want]
    assert drive([stream])[:2] == (want, error)
    for i in range(1, len(stream)):
        assert drive([stream[:i], stream[i:]])[:2] == (want, error), (name, i)
    assert drive([stream[i : i + 1] for i in range(len(stream))])[:2] == (want, error)


@pytest.mark.parametrize("drive", [drive_raw, drive_batch], ids=["raw", "batch"])
def test_the_tail_is_noted_for_metrics(
    drive: Callable[[Sequence[bytes]], tuple[list[bytes], str | None, Stats]]
) -> None:
    usage = json.dumps({"id": "c1", "model": "up-1", "choices": [],
                        "usage": {"prompt_tokens": 3, "completion_tokens": 2}}).encode()
    stream = events(HELLO, END, usage, b"[DONE]")
    for i in range(1, len(stream)):
        _, error, stats = drive([stream[:i], stream[i:]])
        assert error is None
        assert (stats.finish_reason, stats.prompt_tokens, stats.completion_tokens,
                stats.response_model) == ("stop", 3, 2, "up-1"), i


def test_plain_events_pass_through_byte_for_byte() -> None:
    """The fast path's promise: apart from `model`, the client gets the upstream's bytes."""
    stream = events(HELLO, chunk({"content": "lo"}), END)
    st = RelayState("b", REPL, Stats())
    assert st.raw(stream) == aliased(stream)
    assert st.raw_ok


@st.composite
def upstream(draw: st.DrawFn) -> tuple[list[bytes], list[bytes]]:
    """An upstream stream in any framing the event-stream rules allow, cut into reads."""
    contents = draw(st.lists(st.text(max_size=8) | st.just("data: [DONE]\n\n"), max_size=6))
    payloads = [chunk({"content": c}) for c in contents] + [END]
    eol = draw(st.sampled_from([b"\n", b"\r\n", b"\r"]))
    wire = b""
    for p in payloads:
        if draw(st.booleans()):
            wire += b": comment" + eol
        if draw(st.booleans()):
            wire += b"event: message" + eol
        wire += b"data:" + draw(st.sampled_from([b" ", b""])) + p + eol + eol
    wire += b"data: [DONE]" + eol + eol
    cuts = sorted(draw(st.sets(st.integers(1, max(1, len(wire) - 1)), max_size=8)))
    reads = [wire[a:b] for a, b in zip([0, *cuts], [*cuts, len(wire)], strict=True)]
    return [r for r in reads if r], payloads


@settings(max_examples=300, deadline=None)
@given(upstream())
def test_any_framing_and_any_reads_give_the_upstream_events(
    case: tuple[list[bytes], list[bytes]]
) -> None:
    reads, payloads = case
    want = [aliased(p) for p in payloads]
    assert drive_raw(reads)[:2] == (want, None)
    assert drive_batch(reads)[:2] == (want, None)

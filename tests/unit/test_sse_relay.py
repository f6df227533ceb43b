"""The relay's check that every event it passes through is a JSON object in UTF-8."""

from __future__ import annotations

import json

import pytest

from airouter.backends.openai.relay_state import first_bad_event

GOOD = [json.dumps({"id": "c", "choices": [{"index": 0, "delta": {"content": t}}]},
                   ensure_ascii=False).encode() for t in ("Hel", "lo", " Café", " 😀", "!")]
BAD = [b"{not json", b'{"a": }', b'{"a": 1,}', b"[1, 2]", b'"text"', b'{"a": 1} x',
       b'{"content": "\xc3\x28"}', b'{"content": "\xff"}']


def framed(payloads: list[bytes]) -> bytes:
    return b"".join(b"data: " + p + b"\n\n" for p in payloads)


def test_good_events_pass() -> None:
    for n in range(1, len(GOOD) + 1):
        assert first_bad_event(framed(GOOD[:n])) == -1


@pytest.mark.parametrize("bad", BAD)
def test_a_bad_event_is_found_at_every_position(bad: bytes) -> None:
    for at in range(len(GOOD) + 1):
        payloads = [*GOOD[:at], bad, *GOOD[at:]]
        out = framed(payloads)
        want = len(framed(GOOD[:at]))
        assert first_bad_event(out) == want, (bad, at)
        # What comes before it is whole, good events.
        assert first_bad_event(out[:want]) == -1 if at else want == 0


@pytest.mark.parametrize(
    "pair",
    [
        (b'{"a": 1', b'"b": 2}'),  # two halves that join into one object
        (b'{"a": [1', b'2]}'),
        (b"{}, {}", b"{}"),  # one event holding two objects
        # One holding two and two that join into one: as many objects as events, joined.
        (b'{"a":1},{"b":2}', b'{"x":[{}', b"{}]}"),
    ],
)
def test_events_valid_only_when_joined_are_still_found(pair: tuple[bytes, ...]) -> None:
    """Events that parse only together (or one that holds two values) are reported, at the
    right place, however their counts add up."""
    for at in range(len(GOOD) + 1):
        payloads = [*GOOD[:at], *pair, *GOOD[at:]]
        out = framed(payloads)
        assert first_bad_event(out) == len(framed(GOOD[:at])), (pair, at)

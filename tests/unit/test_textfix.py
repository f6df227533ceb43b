"""Exhaustive chunking tests for the sans-IO text fixups in airouter.output.textfix."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import TypeVar

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from airouter.output.cutter import SpecialTokenFilter, StopMatcher
from airouter.output.textfix import (
    CumulativeToDelta,
    PrefixStripper,
    TextPipeline,
    Utf8Joiner,
)

S = TypeVar("S", str, bytes)

# ---------------------------------------------------------------------------
# chunking helpers and independent references
# ---------------------------------------------------------------------------


def chunkings(seq: S, pairs_max: int = 40) -> Iterator[list[S]]:
    """Every split at one position, at every pair of positions (short inputs), per item."""
    n = len(seq)
    yield [seq]
    yield [seq[i : i + 1] for i in range(n)]
    # Interleave empty chunks: they must be no-ops everywhere.
    yield [part for i in range(n) for part in (seq[:0], seq[i : i + 1], seq[:0])]
    for i in range(n + 1):
        yield [seq[:i], seq[i:]]
    if n <= pairs_max:
        for i in range(n + 1):
            for j in range(i, n + 1):
                yield [seq[:i], seq[i:j], seq[j:]]


def split_at(seq: S, points: Sequence[int]) -> list[S]:
    cuts: list[int] = sorted({min(max(p, 0), len(seq)) for p in points})
    bounds = [0, *cuts, len(seq)]
    return [seq[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]


def ref_stop(text: str, stops: Sequence[str]) -> str:
    hits = [text.find(s) for s in stops if s and s in text]
    return text[: min(hits)] if hits else text


def ref_filter(
    text: str, ends: Sequence[str], strips: Sequence[str] = ()
) -> tuple[str, str | None]:
    """Char-by-char scan: END first (shortest), else longest STRIP, else emit the char."""
    end_list = sorted({e for e in ends if e}, key=len)
    strip_list = [s for s in strips if s and s not in end_list]
    out: list[str] = []
    i = 0
    while i < len(text):
        end = next((e for e in end_list if text.startswith(e, i)), None)
        if end is not None:
            return "".join(out), end
        strip = max((s for s in strip_list if text.startswith(s, i)), key=len, default=None)
        if strip is not None:
            i += len(strip)
            continue
        out.append(text[i])
        i += 1
    return "".join(out), None


def ref_echo(out: bytes, prompt: bytes) -> bytes:
    return out[len(prompt) :] if out.startswith(prompt) else out


def run_str(feed: Callable[[str], str], flush: Callable[[], str], chunks: list[str]) -> str:
    return "".join(feed(c) for c in chunks) + flush()


def cumulative_inputs(chunks: Sequence[bytes]) -> list[bytes]:
    acc = b""
    out = []
    for c in chunks:
        acc += c
        out.append(acc)
    return out


MIXED = "héllo 😀 wörld 中文字 ok"
MIXED_B = MIXED.encode()


# ---------------------------------------------------------------------------
# CumulativeToDelta
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("text", [b"", b"a", b"hello world", MIXED_B])
def test_cumulative_every_split(text: bytes) -> None:
    for chunks in chunkings(text):
        c = CumulativeToDelta()
        assert b"".join(c.feed(x) for x in cumulative_inputs(chunks)) == text
        assert c.diverged == 0


def test_cumulative_divergence_emits_after_common_prefix() -> None:
    c = CumulativeToDelta()
    assert c.feed(b"Hello wor") == b"Hello wor"
    assert c.feed(b"Hello, world") == b", world"
    assert c.diverged == 1
    # Later outputs extend the rewritten text, not the one the client saw.
    assert c.feed(b"Hello, world!") == b"!"
    assert c.diverged == 1


def test_cumulative_divergence_never_splits_a_character() -> None:
    c = CumulativeToDelta()
    assert c.feed("caf\u00e9".encode()) == b"caf\xc3\xa9"
    # é (C3 A9) -> è (C3 A8): byte LCP ends inside the character.
    assert c.feed("caf\u00e8s".encode()) == "\u00e8s".encode()
    assert c.diverged == 1
    c = CumulativeToDelta()
    c.feed("x😀".encode())
    assert c.feed("x😁".encode()) == "😁".encode()


def test_cumulative_shrink_keeps_baseline() -> None:
    c = CumulativeToDelta()
    assert c.feed(b"hello wor") == b"hello wor"
    assert c.feed(b"hello w") == b""
    assert c.diverged == 1
    assert c.feed(b"hello world") == b"ld"
    assert c.diverged == 1


def test_cumulative_empty_input_is_ignored() -> None:
    c = CumulativeToDelta()
    assert c.feed(b"") == b""
    assert c.feed(b"abc") == b"abc"
    assert c.feed(b"") == b""
    assert c.feed(b"abcd") == b"d"
    assert c.diverged == 0


def test_cumulative_total_rewrite() -> None:
    c = CumulativeToDelta()
    assert c.feed(b"abc") == b"abc"
    assert c.feed(b"xyz") == b"xyz"
    assert c.diverged == 1


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=12), max_size=8))
def test_cumulative_property(inputs: list[bytes]) -> None:
    c = CumulativeToDelta()
    base = b""
    for new in inputs:
        before = c.diverged
        delta = c.feed(new)
        if new.startswith(base):
            assert delta == new[len(base) :] and c.diverged == before
            base = new
            continue
        if not new:
            assert delta == b"" and c.diverged == before
            continue
        assert c.diverged == before + 1
        lcp = next((i for i, (x, y) in enumerate(zip(base, new, strict=False)) if x != y), None)
        lcp = min(len(base), len(new)) if lcp is None else lcp
        if lcp == len(new):
            assert delta == b""  # shrink: baseline kept
            continue
        assert new.endswith(delta) and lcp - 3 <= len(new) - len(delta) <= lcp
        base = new


# ---------------------------------------------------------------------------
# PrefixStripper
# ---------------------------------------------------------------------------

ECHO_CASES = [
    (b"Hello", b"Hello there"),  # echo then continuation
    (b"Hello", b"Hello"),  # echo only
    (b"Hello", b"Help me"),  # diverges mid-prompt
    (b"Hello", b"Hel"),  # strict prefix at end of stream: released
    (b"Hello", b"Goodbye"),  # no echo at all
    (b"Hello", b""),
    (b"", b"anything"),
    ("héllo 😀".encode(), "héllo 😀 wörld".encode()),
    ("héllo 😀".encode(), "héllo 😁 wörld".encode()),  # diverges inside a 4-byte char
    (b"aaa", b"aaaa"),
    (b"aaa", b"aab"),
]


@pytest.mark.parametrize(("prompt", "out"), ECHO_CASES)
def test_prefix_stripper_every_split(prompt: bytes, out: bytes) -> None:
    expected = ref_echo(out, prompt)
    for chunks in chunkings(out):
        p = PrefixStripper(prompt)
        got = b"".join(p.feed(c) for c in chunks) + p.flush()
        assert got == expected, chunks
        assert p.done
        assert p.stripped == (bool(prompt) and out.startswith(prompt))


def test_prefix_stripper_holds_then_passes_through() -> None:
    p = PrefixStripper(b"abc")
    assert p.feed(b"ab") == b""
    assert not p.done
    assert p.feed(b"cde") == b"de"
    assert p.done and p.stripped
    assert p.feed(b"abc") == b"abc"  # no second stripping
    assert p.flush() == b""


def test_prefix_stripper_release_on_divergence() -> None:
    p = PrefixStripper(b"abc")
    assert p.feed(b"a") == b""
    assert p.feed(b"b") == b""
    assert p.feed(b"x") == b"abx"
    assert p.done and not p.stripped
    assert p.flush() == b""


# ---------------------------------------------------------------------------
# Utf8Joiner
# ---------------------------------------------------------------------------

UTF8_CASES = [
    b"",
    b"plain ascii",
    MIXED_B,
    "😀😁😂".encode(),
    "中文字符".encode(),
    b"bad \xff byte",
    b"lone \xc3 lead then ascii",
    b"truncated at end \xf0\x9f\x98",
    b"overlong \xe0\x80\xaf and \xc0\xaf",
    b"surrogate \xed\xa0\x80 x",
    b"\x80\x80 continuation first",
    b"\xf4\x90\x80\x80 above max",
    "é".encode() + b"\xa9\xa9" + "😀".encode()[:2] + "中".encode(),
]


@pytest.mark.parametrize("data", UTF8_CASES)
def test_utf8_every_split(data: bytes) -> None:
    expected = data.decode("utf-8", "replace")
    for chunks in chunkings(data):
        j = Utf8Joiner()
        parts = []
        for c in chunks:
            parts.append(j.feed(c))
            assert j.pending <= 3
        assert "".join(parts) + j.flush() == expected, chunks
        assert j.pending == 0


def test_utf8_holds_incomplete_sequence() -> None:
    j = Utf8Joiner()
    emoji = "😀".encode()
    assert j.feed(b"a" + emoji[:1]) == "a"
    assert j.feed(emoji[1:3]) == ""
    assert j.pending == 3
    assert j.feed(emoji[3:] + b"b") == "😀b"
    assert j.feed(emoji[:2]) == ""
    assert j.flush() == "\ufffd"
    assert j.flush() == ""


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.sampled_from(
            [
                b"a",
                b" ",
                "é".encode(),
                "😀".encode(),
                "中".encode(),
                b"\xff",
                b"\xc3",
                b"\x80",
                b"\xf0\x9f",
            ]
        ),
        max_size=20,
    ).map(b"".join),
    st.lists(st.integers(0, 60), max_size=6),
)
def test_utf8_property(data: bytes, points: list[int]) -> None:
    j = Utf8Joiner()
    got = "".join(j.feed(c) for c in split_at(data, points)) + j.flush()
    assert got == data.decode("utf-8", "replace")


# ---------------------------------------------------------------------------
# SpecialTokenFilter
# ---------------------------------------------------------------------------

END_TOKENS = ["<|eot_id|>", "</s>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>"]

FILTER_CASES = [
    "Hello world",
    "Hello<|eot_id|>",
    "Hello<|eot_id|> trailing garbage",
    "<|eot_id|>",
    "<|im_end|>never shown",
    "a < b and c > d </s>",
    "html <b>bold</b> then </s> x",
    "almost <|eot_id| but not",
    "ends with a partial <|eot",
    "<<<|end|>",
    "é😀中<end_of_turn>中",
    "<|endoftext|><|end|>",
    "<|end|>oftext|>",
]


@pytest.mark.parametrize("text", FILTER_CASES)
def test_special_tokens_every_split(text: str) -> None:
    expected, token = ref_filter(text, END_TOKENS)
    for chunks in chunkings(text):
        f = SpecialTokenFilter(END_TOKENS)
        assert run_str(f.feed, f.flush, chunks) == expected, chunks
        assert f.ended == (token is not None)
        assert f.end_token == token


def test_special_tokens_drop_everything_after_end() -> None:
    f = SpecialTokenFilter(["</s>"])
    assert f.feed("ok </") == "ok "
    assert f.pending == "</"
    assert f.feed("s> more") == ""
    assert f.ended and f.end_token == "</s>"
    assert f.feed("anything") == ""
    assert f.flush() == ""


def test_special_tokens_partial_released_at_flush() -> None:
    f = SpecialTokenFilter(["<|eot_id|>"])
    assert f.feed("x <|eot") == "x "
    assert f.flush() == "<|eot"
    assert not f.ended


STRIP_CASES = [
    "<|im_start|>assistant hi<|im_end|>rest",
    "a<|im_start|>b<|im_start|>c",
    "<|im_start|><|im_end|>",
    "<|im_start<|im_start|>|>",
    "partial <|im_sta",
]


@pytest.mark.parametrize("text", STRIP_CASES)
def test_strip_tokens_every_split(text: str) -> None:
    ends, strips = ["<|im_end|>"], ["<|im_start|>", "assistant "]
    expected, token = ref_filter(text, ends, strips)
    for chunks in chunkings(text):
        f = SpecialTokenFilter(ends, strips)
        assert run_str(f.feed, f.flush, chunks) == expected, chunks
        assert f.end_token == token


def test_strip_prefers_end_and_longest() -> None:
    # At one position an END token beats a STRIP token; among STRIP the longest wins.
    f = SpecialTokenFilter(["<x>"], ["<x>y", "<"])
    assert run_str(f.feed, f.flush, ["a<x", ">y"]) == "a"
    f = SpecialTokenFilter([], ["ab", "abc"])
    assert run_str(f.feed, f.flush, ["xa", "b", "cd"]) == "xd"
    f = SpecialTokenFilter([], ["ab", "abc"])
    assert run_str(f.feed, f.flush, ["xa", "b"]) == "x"


def test_partial_match_cannot_reach_back_into_a_stripped_token() -> None:
    # After "ab" is stripped, the trailing "b" is no longer text: it must not be held
    # as the start of the end token "bc".
    f = SpecialTokenFilter(["bc"], ["ab"])
    assert f.feed("ab") == ""
    assert f.feed("c") == "c"
    assert not f.ended
    f = SpecialTokenFilter(["bcd"], ["ab"])
    assert f.feed("abc") == "c"
    assert f.feed("d") == "d"
    assert not f.ended


def test_end_token_cuts_without_waiting_for_longer_partial() -> None:
    f = SpecialTokenFilter(["<e>"], ["<e>x"])
    assert f.feed("a<e>") == "a"
    assert f.ended


def test_special_tokens_empty_config_is_identity() -> None:
    f = SpecialTokenFilter([])
    chunk = "any <|eot_id|> text"
    assert f.feed(chunk) is chunk
    assert f.flush() == ""


TOKEN_ALPHABET = "ab<|>/sé😀中"
TOKEN_TEXT = st.text(alphabet=TOKEN_ALPHABET, max_size=24)
TOKEN = st.text(alphabet=TOKEN_ALPHABET, min_size=1, max_size=5)


@settings(max_examples=500, deadline=None)
@given(
    TOKEN_TEXT,
    st.lists(TOKEN, max_size=3),
    st.lists(TOKEN, max_size=3),
    st.lists(st.integers(0, 30), max_size=6),
)
def test_special_tokens_property(
    text: str, ends: list[str], strips: list[str], points: list[int]
) -> None:
    expected, token = ref_filter(text, ends, strips)
    f = SpecialTokenFilter(ends, strips)
    assert run_str(f.feed, f.flush, split_at(text, points)) == expected
    assert f.end_token == token


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.text(alphabet="ab", min_size=1, max_size=3), max_size=2),
    st.lists(st.text(alphabet="ab", min_size=1, max_size=3), max_size=2),
    st.text(alphabet="ab", max_size=12),
)
def test_special_tokens_property_two_letters_every_split(
    ends: list[str], strips: list[str], text: str
) -> None:
    # A two-letter alphabet maximizes overlaps between END and STRIP tokens.
    expected, token = ref_filter(text, ends, strips)
    for chunks in chunkings(text, pairs_max=12):
        f = SpecialTokenFilter(ends, strips)
        assert run_str(f.feed, f.flush, chunks) == expected, chunks
        assert f.end_token == token


# ---------------------------------------------------------------------------
# StopMatcher
# ---------------------------------------------------------------------------

STOP_CASES: list[tuple[str, list[str]]] = [
    ("xabcde", ["abcd", "bc"]),  # shorter stop inside a longer partial/complete one
    ("xabcde", ["bc", "abcd"]),
    ("xabc", ["abcd", "bc"]),  # longer stop never completes: shorter one still cuts
    ("xabce", ["abcd", "c"]),
    ("stop at start", ["stop"]),
    ("whole", ["whole"]),
    ("no match here", ["zzz", "qq"]),
    ("Answer: 42\n\nUser: hi", ["\n\nUser:", "\n\n"]),
    ("a\n\nb", ["\n\n\n", "\n\nb"]),
    ("aaab", ["aab"]),  # self-overlapping stop
    ("abababc", ["ababc"]),
    ("héllo 😀 wörld 中文", ["😀 w", "文"]),
    ("中文字符中文", ["字符中", "符"]),
    ("mississippi", ["ssip", "issi", "sip", "ppi"]),
    ("text", []),
    ("text", [""]),
    ("", ["a"]),
    ("ab", ["abc"]),  # partial at end of stream is released by flush
    ("abcabd", ["abd", "abcx"]),
]


@pytest.mark.parametrize(("text", "stops"), STOP_CASES)
def test_stop_every_split(text: str, stops: list[str]) -> None:
    expected = ref_stop(text, stops)
    should_stop = any(s and s in text for s in stops)
    for chunks in chunkings(text):
        m = StopMatcher(stops)
        assert run_str(m.feed, m.flush, chunks) == expected, chunks
        assert m.stopped == should_stop


def test_stop_overlapping_earliest_position_wins() -> None:
    # "abcd" starts at 1, "bc" at 2: the cut is at 1, so "xabcde" -> "x" (not "xa").
    m = StopMatcher(["abcd", "bc"])
    assert m.feed("xab") == "x"
    assert m.feed("cde") == ""
    assert m.stopped and m.matched == "abcd"
    assert m.feed("more") == ""
    assert m.flush() == ""


def test_stop_matched_is_shortest_at_cut_regardless_of_chunking() -> None:
    for chunks in (["ab"], ["a", "b"], ["abc"], ["a", "bc"]):
        m = StopMatcher(["abc", "ab"])
        run_str(m.feed, m.flush, chunks)
        assert m.matched == "ab"


def test_stop_cuts_immediately_when_longer_stop_shares_the_position() -> None:
    m = StopMatcher(["\n", "\n\n"])
    assert m.feed("a\n") == "a"
    assert m.stopped and m.matched == "\n"


def test_stop_flush_resolves_held_complete_match() -> None:
    # "abc" is held as a possible start of "abcd"; it contains the complete stop "bc".
    m = StopMatcher(["abcd", "bc"])
    assert m.feed("xabc") == "x"
    assert m.pending == "abc"
    assert not m.stopped
    assert m.flush() == "a"
    assert m.stopped and m.matched == "bc"


def test_stop_long_stop_sequence() -> None:
    stop = "0123456789" * 40  # longer than the prefix cache limit
    text = "head " + stop[:-1] + "x " + stop + " tail"
    for step in (1, 7, 64):
        m = StopMatcher([stop, "zz"])
        chunks = [text[i : i + step] for i in range(0, len(text), step)]
        assert run_str(m.feed, m.flush, chunks) == ref_stop(text, [stop])


def test_stop_fast_path_returns_same_object() -> None:
    m = StopMatcher(["\n\nUser:", "###"])
    chunk = " the quick brown fox"
    assert m.feed(chunk) is chunk
    assert StopMatcher([]).feed(chunk) is chunk


STOP_ALPHABET = "abc\né😀中"


@settings(max_examples=800, deadline=None)
@given(
    st.text(alphabet=STOP_ALPHABET, max_size=30),
    st.lists(st.text(alphabet=STOP_ALPHABET, min_size=1, max_size=6), min_size=1, max_size=4),
    st.lists(st.integers(0, 35), max_size=8),
)
def test_stop_property(text: str, stops: list[str], points: list[int]) -> None:
    m = StopMatcher(stops)
    assert run_str(m.feed, m.flush, split_at(text, points)) == ref_stop(text, stops)
    assert m.stopped == any(s in text for s in stops)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.text(alphabet="ab", min_size=1, max_size=4), min_size=1, max_size=4),
    st.text(alphabet="ab", max_size=16),
)
def test_stop_property_two_letters_every_split(stops: list[str], text: str) -> None:
    # A two-letter alphabet maximizes overlaps between stops; try every chunking.
    expected = ref_stop(text, stops)
    for chunks in chunkings(text, pairs_max=16):
        m = StopMatcher(stops)
        assert run_str(m.feed, m.flush, chunks) == expected, chunks


# ---------------------------------------------------------------------------
# TextPipeline
# ---------------------------------------------------------------------------


def ref_pipeline(
    out: bytes,
    *,
    echo_prompt: bytes | None = None,
    special_tokens: Sequence[str] = (),
    strip_tokens: Sequence[str] = (),
    stops: Sequence[str] = (),
) -> tuple[str, bool]:
    if echo_prompt:
        out = ref_echo(out, echo_prompt)
    text, end = ref_filter(out.decode("utf-8", "replace"), special_tokens, strip_tokens)
    cut = ref_stop(text, stops)
    return cut, end is not None or any(s and s in text for s in stops)


PIPE_CASES: list[tuple[bytes, dict[str, object]]] = [
    (MIXED_B, {}),
    (MIXED_B, {"stops": ["wö", "ok"]}),
    (
        "Q: hi\nA: héllo<|eot_id|>junk".encode(),
        {"echo_prompt": b"Q: hi\nA:", "special_tokens": ["<|eot_id|>"]},
    ),
    (
        "Q: hi\nA: héllo<|eot_id|>junk".encode(),
        {"echo_prompt": b"Q: ho", "special_tokens": ["<|eot_id|>"]},
    ),
    (b"abc<|im_end|>", {"special_tokens": ["<|im_end|>"], "stops": ["abcd", "bc"]}),
    (b"xab<|im_end|>", {"special_tokens": ["<|im_end|>"], "stops": ["abc"]}),
    ("😀 stop 😀</s>".encode(), {"special_tokens": ["</s>"], "stops": ["stop"]}),
    (
        "<|im_start|>assistant\n中文<|im_end|>".encode(),
        {"special_tokens": ["<|im_end|>"], "strip_tokens": ["<|im_start|>assistant\n"]},
    ),
    (b"bad \xff \xc3 bytes \xf0\x9f", {"stops": ["\ufffd b"]}),
    ("PROMPTé".encode(), {"echo_prompt": "PROMPTé".encode(), "stops": ["x"]}),
    (b"PROMP", {"echo_prompt": b"PROMPT"}),
    (b"ends inside a char \xf0\x9f\x98", {}),
    (b"ends inside a char \xe4\xb8", {"special_tokens": ["</s>"], "stops": ["zz"]}),
]


@pytest.mark.parametrize(("out", "opts"), PIPE_CASES)
@pytest.mark.parametrize("cumulative", [False, True])
def test_pipeline_every_split(out: bytes, opts: dict[str, object], cumulative: bool) -> None:
    expected, finished = ref_pipeline(out, **opts)  # type: ignore[arg-type]
    for chunks in chunkings(out, pairs_max=30):
        p = TextPipeline(cumulative=cumulative, **opts)  # type: ignore[arg-type]
        inputs = cumulative_inputs(chunks) if cumulative else chunks
        got = "".join(p.feed(x) for x in inputs) + p.flush()
        assert got == expected, chunks
        assert p.finished == finished
        assert p.rewrites == 0
        if finished:
            assert p.feed(b"after") == ""


def test_pipeline_finished_stops_everything() -> None:
    p = TextPipeline(special_tokens=["</s>"], stops=["STOP"])
    assert p.feed(b"hello </s") == "hello "
    assert not p.finished
    assert p.feed(b"> more") == ""
    assert p.finished and p.stop_reason == "</s>"
    assert p.feed(b"even more") == ""
    assert p.flush() == ""


def test_pipeline_end_token_releases_text_held_by_stop_matcher() -> None:
    p = TextPipeline(special_tokens=["<|eot_id|>"], stops=["abc"])
    assert p.feed(b"xab") == "x"
    assert p.feed(b"<|eot_id|>") == "ab"
    assert p.finished and p.stop_reason == "<|eot_id|>"


def test_pipeline_stop_reason() -> None:
    p = TextPipeline(stops=["\n\n"])
    assert p.feed(b"one\n") == "one"
    assert p.feed(b"\ntwo") == ""
    assert p.finished and p.stop_reason == "\n\n"
    assert TextPipeline().stop_reason is None


def test_pipeline_cumulative_divergence() -> None:
    p = TextPipeline(cumulative=True, stops=["!"])
    assert p.feed(b"Hello wor") == "Hello wor"
    assert p.feed(b"Hello, world") == ", world"
    assert p.rewrites == 1
    assert p.feed(b"Hello, world! ok") == ""
    assert p.finished


def test_pipeline_echo_not_matching_is_released() -> None:
    p = TextPipeline(echo_prompt=b"Tell me")
    assert p.feed(b"Tel") == ""
    assert p.feed(b"l you") == "Tell you"
    assert p.flush() == ""


def test_pipeline_plain_stream_identity_and_sanity() -> None:
    # Microbenchmark-free sanity: a long plain stream through the cheapest and the
    # fullest pipelines gives exactly the input back.
    tokens = [f" tok{i} é😀中".encode() for i in range(5000)]
    full = b"".join(tokens).decode()
    cheap = TextPipeline()
    assert "".join(cheap.feed(t) for t in tokens) + cheap.flush() == full
    heavy = TextPipeline(
        cumulative=True,
        echo_prompt=b"<prompt>",
        special_tokens=END_TOKENS,
        strip_tokens=["<|im_start|>"],
        stops=["\n\nUser:", "###", "zz", "中中"],
    )
    got = "".join(heavy.feed(c) for c in cumulative_inputs(tokens)) + heavy.flush()
    assert got == full and not heavy.finished


@settings(max_examples=400, deadline=None)
@given(
    st.lists(
        st.sampled_from(
            [b"a", b"b", b"<", b">", b"|", "é".encode(), "😀".encode(), "中".encode()]
            + [b"\xff", b"\xc3", b"\xf0\x9f"]
        ),
        max_size=24,
    ).map(b"".join),
    st.one_of(st.none(), st.sampled_from([b"a", b"ab<", "é😀".encode(), b"\xf0"])),
    st.lists(st.sampled_from(["<|>", "<a>", "a<", "😀"]), max_size=2),
    st.lists(st.text(alphabet="ab<|>é😀中", min_size=1, max_size=4), max_size=4),
    st.lists(st.integers(0, 80), max_size=8),
    st.booleans(),
)
def test_pipeline_property(
    out: bytes,
    echo: bytes | None,
    special: list[str],
    stops: list[str],
    points: list[int],
    cumulative: bool,
) -> None:
    expected, finished = ref_pipeline(out, echo_prompt=echo, special_tokens=special, stops=stops)
    p = TextPipeline(cumulative=cumulative, echo_prompt=echo, special_tokens=special, stops=stops)
    chunks = split_at(out, points)
    inputs = cumulative_inputs(chunks) if cumulative else chunks
    assert "".join(p.feed(x) for x in inputs) + p.flush() == expected
    assert p.finished == finished


def test_matchers_of_the_same_tokens_share_their_tables_and_nothing_else() -> None:
    # A model's special tokens come with every request: their tables are built once.
    a = SpecialTokenFilter(["<|im_end|>", "<|endoftext|>"])
    b = SpecialTokenFilter(["<|im_end|>", "<|endoftext|>"])
    assert a._tails is b._tails and a._pats is b._pats
    assert a.feed("hello <|im_") == "hello "  # a holds a possible token back
    assert b.feed("bye") == "bye" and not b.ended
    assert a.feed("end|> more") == "" and a.ended and a.end_token == "<|im_end|>"
    assert b.feed(" <|endoftext|>") == " " and b.end_token == "<|endoftext|>"
    # A client's stop sequences are its own: never kept for another request.
    s1, s2 = StopMatcher(["END"]), StopMatcher(["END"])
    assert s1._tails is not s2._tails
    assert s1.feed("abEN") == "ab" and s2.feed("xyz") == "xyz"

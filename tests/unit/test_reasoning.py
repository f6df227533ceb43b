"""Reasoning parsers and their chaining with tool parsers, under every chunking."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from airouter.output.events import OutputParser, Reasoning, Text, chain
from airouter.output.parsers import REASONING_PARSERS, TOOL_PARSERS, reasoning_parser, tool_parser
from tests.support.parsing import check_all_splits, run, split_at

R1 = [
    ("answer_after_end_tag", "Let me think.</think>The answer.", "Let me think.", "The answer."),
    ("leading_open_tag", "<think>\nhmm</think>\n\nok", "\nhmm", "\n\nok"),
    ("whitespace_then_open_tag", "  \n<think>x</think>y", "x", "y"),
    ("no_end_tag_is_all_reasoning", "still thinking < / think", "still thinking < / think", ""),
    ("empty_reasoning", "</think>only answer", "", "only answer"),
    ("near_tags", "a </thin> b <think c</think>d", "a </thin> b <think c", "d"),
    ("second_open_tag_is_text", "<think>a<think>b</think>c</think>d", "a<think>b", "c</think>d"),
    ("partial_end_tag_at_end", "abc</thi", "abc</thi", ""),
    ("partial_open_tag_only", "<thi", "<thi", ""),
    ("whitespace_only", " \n ", " \n ", ""),
    ("empty", "", "", ""),
    ("unicode", "<think>é😀中</think>ß😀", "é😀中", "ß😀"),
]

QWEN3 = [
    ("think_then_answer", "<think>\nr\n</think>\n\nt", "\nr\n", "\n\nt"),
    ("no_think_is_all_text", "plain answer </think> x", "", "plain answer </think> x"),
    ("leading_whitespace_dropped_before_think", "\n\n<think>r</think>t", "r", "t"),
    ("leading_whitespace_kept_without_think", "\n\nanswer", "", "\n\nanswer"),
    ("unterminated_think_stays_reasoning", "<think>cut off", "cut off", ""),
    ("think_later_is_text", "text <think>x</think>", "", "text <think>x</think>"),
    ("near_open_tag", "<thinking>x</thinking>", "", "<thinking>x</thinking>"),
    ("partial_open_tag_only", "<thi", "", "<thi"),
    ("empty_think", "<think></think>", "", ""),
    ("empty", "", "", ""),
]


@pytest.mark.parametrize(
    ("text", "want_reasoning", "want_text"), [c[1:] for c in R1], ids=[c[0] for c in R1]
)
def test_deepseek_r1(text: str, want_reasoning: str, want_text: str) -> None:
    got = check_all_splits(lambda: reasoning_parser("deepseek_r1"), text)
    assert (got.reasoning, got.text, got.calls) == (want_reasoning, want_text, [])


@pytest.mark.parametrize(
    ("text", "want_reasoning", "want_text"), [c[1:] for c in QWEN3], ids=[c[0] for c in QWEN3]
)
def test_qwen3(text: str, want_reasoning: str, want_text: str) -> None:
    got = check_all_splits(lambda: reasoning_parser("qwen3"), text)
    assert (got.reasoning, got.text, got.calls) == (want_reasoning, want_text, [])


def test_reasoning_streams_early() -> None:
    p = reasoning_parser("qwen3")
    assert p.feed(" ") == []
    assert p.feed("<thi") == []
    assert p.feed("nk>abc</") == [Reasoning("abc")]
    assert p.feed("think>x") == [Text("x")]
    assert p.feed("y") == [Text("y")]
    assert p.finish() == []
    assert not p.called


CHAINED: list[tuple[str, str, str, str, str, list[tuple[str, Any]]]] = [
    (
        "qwen3_think_then_call",
        "qwen3",
        "hermes",
        '<think>I should call f.</think>\n\n<tool_call>\n{"name": "f", "arguments": {"a": 1}}\n'
        "</tool_call>",
        "I should call f.",
        "",  # whitespace-only text before a call is dropped
        [("f", {"a": 1})],
    ),
    (
        "qwen3_no_think_call",
        "qwen3",
        "hermes",
        'Sure. <tool_call>{"name": "f", "arguments": {}}</tool_call>',
        "",
        "Sure. ",
        [("f", {})],
    ),
    (
        "r1_then_llama3_json",
        "deepseek_r1",
        "llama3_json",
        'Need weather.</think>\n\n{"name": "f", "parameters": {"city": "Paris"}}',
        "Need weather.",
        "",
        [("f", {"city": "Paris"})],
    ),
    (
        "r1_unfinished_thinking_has_no_calls",
        "deepseek_r1",
        "llama3_json",
        '{"name": "f", "parameters": {}}',
        '{"name": "f", "parameters": {}}',
        "",
        [],
    ),
    (
        "qwen3_then_pythonic",
        "qwen3",
        "pythonic",
        "<think>x</think> [f(a=[1, 'b'])]",
        "x",
        "",
        [("f", {"a": [1, "b"]})],
    ),
    (
        "qwen3_then_mistral_text_after",
        "qwen3",
        "mistral",
        "<think></think>A[TOOL_CALLS]f[ARGS]{}B",
        "",
        "AB",
        [("f", {})],
    ),
    (
        "r1_tag_in_reasoning_is_not_a_call",
        "deepseek_r1",
        "hermes",
        '<tool_call>{"name": "f"}</tool_call></think>done',
        '<tool_call>{"name": "f"}</tool_call>',
        "done",
        [],
    ),
]


@pytest.mark.parametrize(
    ("first", "second", "text", "want_reasoning", "want_text", "want_calls"),
    [c[1:] for c in CHAINED],
    ids=[c[0] for c in CHAINED],
)
def test_chain(
    first: str,
    second: str,
    text: str,
    want_reasoning: str,
    want_text: str,
    want_calls: list[tuple[str, Any]],
) -> None:
    got = check_all_splits(lambda: chain(reasoning_parser(first), tool_parser(second)), text)
    assert (got.reasoning, got.text, got.calls) == (want_reasoning, want_text, want_calls)


thoughts = st.text(alphabet=st.characters(blacklist_characters="<"), max_size=30)


@settings(max_examples=200, deadline=None)
@given(
    reasoning=thoughts,
    answer=st.text(max_size=30),
    lead=st.sampled_from(["", "\n", "  "]),
    cuts=st.lists(st.integers(min_value=0, max_value=120), max_size=6),
)
def test_think_roundtrip(reasoning: str, answer: str, lead: str, cuts: list[int]) -> None:
    text = f"{lead}<think>{reasoning}</think>{answer}"
    for name in ("deepseek_r1", "qwen3"):
        got = run(lambda name=name: reasoning_parser(name), split_at(text, cuts))  # type: ignore[misc]
        assert (got.reasoning, got.text) == (reasoning, answer)


def test_feed_is_incremental() -> None:
    text = "<think>" + "a</thin" * 2000 + "</think>" + "b" * 5000
    p = reasoning_parser("deepseek_r1")
    for ch in text:
        p.feed(ch)
    p.finish()
    assert p.scanned <= 10 * len(text)  # type: ignore[attr-defined]


SOUP = [
    "<think>",
    "</think>",
    "</thi",
    "<th",
    "<",
    "/",
    ">",
    " ",
    "\n",
    "a",
    "é😀",
    '<tool_call>{"name": "f", "arguments": {"a": 1}}</tool_call>',
    "[f(a=1)]",
    '{"name": "f", "parameters": {}}',
    "[TOOL_CALLS]f[ARGS]{}",
]


@settings(max_examples=300, deadline=None)
@given(
    first=st.sampled_from(sorted(REASONING_PARSERS)),
    second=st.sampled_from(["none", *sorted(TOOL_PARSERS)]),
    parts=st.lists(st.sampled_from(SOUP), max_size=20),
    cuts=st.lists(st.integers(min_value=0, max_value=300), max_size=6),
)
def test_soup_is_chunking_independent(
    first: str, second: str, parts: list[str], cuts: list[int]
) -> None:
    def make() -> OutputParser:
        if second == "none":
            return reasoning_parser(first)
        return chain(reasoning_parser(first), tool_parser(second))

    text = "".join(parts)
    whole = run(make, [text])
    for pieces in (split_at(text, cuts), list(text)):
        got = run(make, pieces)
        assert (got.reasoning, got.text, got.calls) == (whole.reasoning, whole.text, whole.calls)
    if second == "none":
        # Only the markup goes: a leading <think> with its whitespace, and the first </think>.
        assert whole.reasoning + whole.text == _strip_tags(text, first)


def _strip_tags(text: str, name: str) -> str:
    lead = text.lstrip()
    if lead.startswith("<think>"):
        text = lead[len("<think>") :]
    elif name == "qwen3":
        return text
    return text.replace("</think>", "", 1)

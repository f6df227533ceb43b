"""Tool-call parsers: every fixture is parsed under every chunking and must give the same
text and calls; hypothesis round-trips generated calls through each format."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from airouter.streaming.jsonscan import JsonScan
from airouter.streaming.parsed import (
    TOOL_PARSERS,
    CallArgs,
    CallStart,
    Text,
    tool_parser,
)
from tests.support.parsing import check_all_splits, run, split_at

TOOLS = ("get_weather", "search", "f", "g")

# Arguments with braces, brackets, quotes, escapes and non-ASCII inside strings.
NESTED = {
    "q": 'a } { " ] [ \\ / é 中文 😀 <tool_call> </tool_call> [TOOL_CALLS]',
    "n": {"deep": [1, {"x": "}"}, [], {}], "e": ""},
    "t": True,
    "f": False,
    "z": None,
    "num": -0.5e-3,
    "big": 12345678901234567890,
}
NESTED_JSON = json.dumps(NESTED)
NESTED_ASCII = json.dumps(NESTED, ensure_ascii=True)

Case = tuple[str, str, str, list[tuple[str, Any]], Sequence[str] | None]


def _h(name: str, args: str, key: str = "arguments") -> str:
    return f'<tool_call>\n{{"name": "{name}", "{key}": {args}}}\n</tool_call>'


HERMES: list[Case] = [
    (
        "no_call",
        "Hello, a < b and <tool> or <tool_call is text.",
        "Hello, a < b and <tool> or <tool_call is text.",
        [],
        None,
    ),
    ("empty", "", "", [], None),
    (
        "one_call_after_text",
        "Let me check.\n" + _h("get_weather", '{"city": "Paris"}'),
        "Let me check.\n",
        [("get_weather", {"city": "Paris"})],
        TOOLS,
    ),
    (
        "two_calls_nested",
        _h("f", NESTED_JSON) + "\n" + _h("g", NESTED_ASCII, "parameters"),
        "",
        [("f", NESTED), ("g", NESTED)],
        TOOLS,
    ),
    (
        "text_between_and_after",
        "A" + _h("f", "{}") + " B " + _h("g", '{"x": [1]}') + " C\n",
        "A B  C\n",
        [("f", {}), ("g", {"x": [1]})],
        None,
    ),
    (
        "args_before_name",
        '<tool_call>{"arguments": {"a": "}"}, "name": "f"}</tool_call>',
        "",
        [("f", {"a": "}"})],
        None,
    ),
    (
        "args_as_string",
        '<tool_call>{"name": "f", "arguments": "{\\"a\\": 1}"}</tool_call>',
        "",
        [("f", {"a": 1})],
        None,
    ),
    ("no_arguments", '<tool_call>{"name": "f"}</tool_call>', "", [("f", {})], None),
    (
        "extra_keys",
        '<tool_call>{"id": 7, "type": "function", "name": "f", "arguments": '
        '{"a": [true, null]}, "x": {"y": "z"}}</tool_call>',
        "",
        [("f", {"a": [True, None]})],
        None,
    ),
    (
        "raw_newline_in_string",
        '<tool_call>{"name": "f", "arguments": {"code": "a\nb\tc"}}</tool_call>',
        "",
        [("f", {"code": "a\nb\tc"})],
        None,
    ),
    ("trailing_whitespace_dropped", _h("f", "{}") + "\n\n", "", [("f", {})], None),
    (
        "missing_close_tag",
        '<tool_call>{"name": "f", "arguments": {}}  then text',
        "then text",
        [("f", {})],
        None,
    ),
    # Malformed before the name is known: the raw text stays text.
    (
        "bad_json",
        '<tool_call>{"name": f}</tool_call> ok',
        '<tool_call>{"name": f}</tool_call> ok',
        [],
        None,
    ),
    (
        "unknown_tool",
        _h("rm_rf", "{}") + " " + _h("f", "{}"),
        _h("rm_rf", "{}") + " ",
        [("f", {})],
        TOOLS,
    ),
    (
        "not_json_at_all",
        "<tool_call>print('hi')</tool_call>",
        "<tool_call>print('hi')</tool_call>",
        [],
        None,
    ),
    (
        "no_name",
        '<tool_call>{"arguments": {"a": 1}}</tool_call>',
        '<tool_call>{"arguments": {"a": 1}}</tool_call>',
        [],
        None,
    ),
    ("unterminated_before_name", 'x <tool_call>{"na', 'x <tool_call>{"na', [], None),
    ("only_open_tag", "x <tool_call>", "x <tool_call>", [], None),
    ("partial_tag_at_end", "x <tool_ca", "x <tool_ca", [], None),
    (
        "name_not_string",
        '<tool_call>{"name": 5}</tool_call>',
        '<tool_call>{"name": 5}</tool_call>',
        [],
        None,
    ),
    # Malformed after the start: closed with the valid part, rest up to </tool_call> dropped.
    (
        "broken_after_start",
        '<tool_call>{"name": "f", "arguments": {"a": 1, ]}</tool_call>after',
        "after",
        [("f", {"a": 1})],
        None,
    ),
    (
        "broken_escape",
        '<tool_call>{"name": "f", "arguments": {"a": "x\\q"}}</tool_call>',
        "",
        [("f", {"a": "x"})],
        None,
    ),
    (
        "unterminated_in_string",
        '<tool_call>{"name": "f", "arguments": {"a": "tru',
        "",
        [("f", {"a": "tru"})],
        None,
    ),
    (
        "unterminated_in_escape",
        '<tool_call>{"name": "f", "arguments": {"a": ["x\\u00',
        "",
        [("f", {"a": ["x"]})],
        None,
    ),
    (
        "unterminated_in_number",
        '<tool_call>{"name": "f", "arguments": {"a": {"b": 12',
        "",
        [("f", {"a": {}})],
        None,
    ),
    (
        "unterminated_after_comma",
        '<tool_call>{"name": "f", "arguments": {"a": 1, "b',
        "",
        [("f", {"a": 1})],
        None,
    ),
    ("unterminated_before_args", '<tool_call>{"name": "f", "argu', "", [("f", {})], None),
    (
        "broken_after_args",
        '<tool_call>{"name": "f", "arguments": {"a": 1} oops</tool_call>Z',
        "Z",
        [("f", {"a": 1})],
        None,
    ),
]


@pytest.mark.parametrize(
    ("text", "want_text", "want_calls", "tools"),
    [c[1:] for c in HERMES],
    ids=[c[0] for c in HERMES],
)
def test_hermes(
    text: str, want_text: str, want_calls: list[tuple[str, Any]], tools: Sequence[str] | None
) -> None:
    got = check_all_splits(lambda: tool_parser("hermes", tools), text)
    assert got.text == want_text
    assert got.calls == want_calls


def test_hermes_streams_arguments_before_the_end() -> None:
    p = tool_parser("hermes")
    assert p.feed("Hi <tool_") == [Text("Hi ")]
    assert p.feed('call>{"name": "f"') == [CallStart(0, "f")]
    assert p.called
    assert p.feed(', "arguments": {"a": "lo') == [CallArgs(0, '{"a": "lo')]
    assert p.feed("ng") == [CallArgs(0, "ng")]
    assert p.feed('", "b": 1') == [CallArgs(0, '"')]  # the number may go on
    assert p.feed("2}") == [CallArgs(0, ', "b": 12}')]
    assert p.feed("}</tool_call>") == []
    assert p.finish() == []


def test_registry() -> None:
    assert {"hermes"} <= TOOL_PARSERS
    for name in ("hermes",):
        assert not tool_parser(name).called
    with pytest.raises(ValueError, match="unknown tool parser"):
        tool_parser("nope")


# ---------------------------------------------------------------------------
# properties
# ---------------------------------------------------------------------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)
arg_dicts = st.dictionaries(st.text(max_size=8), json_values, max_size=4)
names = st.sampled_from(TOOLS)
# Plain text that cannot open markup of any format.
plain = st.text(alphabet=st.characters(blacklist_characters="<[{"), max_size=20)


@settings(max_examples=200, deadline=None)
@given(
    before=plain,
    calls=st.lists(st.tuples(names, arg_dicts, st.booleans()), min_size=1, max_size=3),
    cuts=st.lists(st.integers(min_value=0, max_value=2000), max_size=8),
)
def test_hermes_roundtrip(
    before: str, calls: list[tuple[str, dict[str, Any], bool]], cuts: list[int]
) -> None:
    text = before + "".join(
        _h(name, json.dumps(args, ensure_ascii=ascii)) for name, args, ascii in calls
    )
    got = run(lambda: tool_parser("hermes", TOOLS), split_at(text, cuts))
    assert got.text == before
    assert got.calls == [(name, args) for name, args, _ in calls]


@settings(max_examples=300, deadline=None)
@given(value=json_values, cuts=st.lists(st.integers(min_value=0, max_value=500), max_size=6))
def test_json_scan_finds_the_end_and_every_release_completes(value: Any, cuts: list[int]) -> None:
    text = json.dumps({"v": value})
    scan = JsonScan(capture=True)
    taken = ""
    rest = ""
    for piece in split_at(text + " tail", cuts):
        if scan.done:
            rest += piece
            continue
        end = scan.feed(piece)
        assert not scan.error
        taken += scan.take()
        if scan.done:
            rest = piece[end:]
        elif taken:
            json.loads(taken + scan.completion())
    assert taken == text
    assert rest == " tail"
    assert json.loads(taken) == {"v": value}


# ---------------------------------------------------------------------------
# work is proportional to the new text
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["hermes"])
def test_feed_is_incremental(name: str) -> None:
    long = 'x\\"é' * 2500
    text = {
        "hermes": '<tool_call>{"name": "f", "arguments": {"s": "' + long + '"}}</tool_call>',
    }[name]
    p = tool_parser(name)
    n_args = 0
    for ch in text:
        n_args += sum(len(e.fragment) for e in p.feed(ch) if isinstance(e, CallArgs))
    p.finish()
    assert n_args == len(text) - len('<tool_call>{"name": "f", "arguments": ') - len(
        "}</tool_call>"
    )
    # Held-back characters are looked at again with the next piece; that must stay bounded.
    assert p.scanned <= 3 * len(text)  # type: ignore[attr-defined]

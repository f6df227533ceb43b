"""Tool-call parsers: every fixture is parsed under every chunking and must give the same
text and calls; hypothesis round-trips generated calls through each format."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from airouter.output.events import CallArgs, CallStart, Text
from airouter.output.jsonscan import JsonScan
from airouter.output.parsers import TOOL_PARSERS, tool_parser
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
    ("whitespace_only", " \n ", " \n ", [], None),
    ("whitespace_before_call_dropped", "\n\n " + _h("f", "{}"), "", [("f", {})], None),
    ("whitespace_before_non_call_kept", " \n<tool_call>x", " \n<tool_call>x", [], None),
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


def _l(name: str, args: str, key: str = "parameters") -> str:
    return f'{{"name": "{name}", "{key}": {args}}}'


LLAMA3: list[Case] = [
    ("no_call", "The answer is 42.", "The answer is 42.", [], None),
    ("empty", "", "", [], None),
    ("text_first_is_plain", "Sure: " + _l("f", "{}"), "Sure: " + _l("f", "{}"), [], None),
    (
        "one_call",
        _l("get_weather", '{"city": "Paris"}'),
        "",
        [("get_weather", {"city": "Paris"})],
        TOOLS,
    ),
    (
        "tag_two_calls_nested",
        "<|python_tag|>" + _l("f", NESTED_JSON) + "; " + _l("g", NESTED_ASCII, "arguments"),
        "",
        [("f", NESTED), ("g", NESTED)],
        TOOLS,
    ),
    ("leading_whitespace", "\n\n " + _l("f", "{}"), "", [("f", {})], None),
    ("text_after_calls", _l("f", "{}") + ";\nDone.", ";\nDone.", [("f", {})], None),
    ("trailing_separators_dropped", _l("f", "{}") + ";\n", "", [("f", {})], None),
    ("json_answer_not_a_call", '{"result": 5, "ok": true}', '{"result": 5, "ok": true}', [], None),
    ("unknown_tool", _l("rm", "{}"), _l("rm", "{}"), [], TOOLS),
    (
        "second_call_unknown",
        _l("f", "{}") + "; " + _l("rm", "{}"),
        "; " + _l("rm", "{}"),
        [("f", {})],
        TOOLS,
    ),
    ("broken_after_start", _l("f", '{"a": [1, }]}'), "}]}}", [("f", {"a": [1]})], None),
    ("unterminated_after_start", _l("f", '{"q": "abc')[:-1], "", [("f", {"q": "abc"})], None),
    ("unterminated_before_name", '{"nam', '{"nam', [], None),
    ("partial_tag_only", "<|python_ta", "<|python_ta", [], None),
    (
        "tag_then_code",
        '<|python_tag|>brave_search.call(query="x")',
        '<|python_tag|>brave_search.call(query="x")',
        [],
        None,
    ),
    ("raw_newline_in_string", _l("f", '{"s": "a\nb"}'), "", [("f", {"s": "a\nb"})], None),
]


def _m(*calls: tuple[str, str]) -> str:
    return "[TOOL_CALLS]" + json.dumps(
        [{"name": n, "arguments": json.loads(a)} for n, a in calls], ensure_ascii=False
    )


MISTRAL: list[Case] = [
    ("whitespace_only", " \n ", " \n ", [], None),
    ("whitespace_before_call_dropped", "\n [TOOL_CALLS]f[ARGS]{}", "", [("f", {})], None),
    ("whitespace_before_non_call_kept", " [TOOL_CALLS]x[", " [TOOL_CALLS]x[", [], None),
    ("no_call", "Plain [TOOL] text [TOOL_CALL", "Plain [TOOL] text [TOOL_CALL", [], None),
    ("empty", "", "", [], None),
    (
        "array_after_text",
        'Sure. [TOOL_CALLS] [{"name": "get_weather", "arguments": {"city": "Paris"}}]',
        "Sure. ",
        [("get_weather", {"city": "Paris"})],
        TOOLS,
    ),
    (
        "array_two_nested",
        _m(("f", NESTED_JSON), ("g", NESTED_ASCII)),
        "",
        [("f", NESTED), ("g", NESTED)],
        TOOLS,
    ),
    (
        "args_form_two_calls",
        "[TOOL_CALLS]f[ARGS]" + NESTED_JSON + '[TOOL_CALLS]g[ARGS]{"a": 1}',
        "",
        [("f", NESTED), ("g", {"a": 1})],
        TOOLS,
    ),
    (
        "call_id_form",
        '[TOOL_CALLS]get_weather[CALL_ID]a1B2c3D4e[ARGS]{"city": "Paris"}',
        "",
        [("get_weather", {"city": "Paris"})],
        TOOLS,
    ),
    ("single_object", '[TOOL_CALLS]{"name": "f", "arguments": {}}', "", [("f", {})], None),
    ("text_after", _m(("f", "{}")) + "\nDone", "\nDone", [("f", {})], None),
    (
        "two_groups",
        _m(("f", "{}")) + " and " + _m(("g", "{}")),
        " and ",
        [("f", {}), ("g", {})],
        None,
    ),
    ("unknown_tool_array", _m(("rm", "{}")), _m(("rm", "{}")), [], TOOLS),
    ("unknown_tool_args_form", "[TOOL_CALLS]rm[ARGS]{}", "[TOOL_CALLS]rm[ARGS]{}", [], TOOLS),
    ("bad_json", '[TOOL_CALLS] [{"name": f}]', '[TOOL_CALLS] [{"name": f}]', [], None),
    ("empty_array", "[TOOL_CALLS][]", "[TOOL_CALLS][]", [], None),
    ("unterminated_before_name", "x [TOOL_CALLS]get_wea", "x [TOOL_CALLS]get_wea", [], None),
    (
        "unterminated_array",
        '[TOOL_CALLS][{"name": "f", "arguments": {"a": "x',
        "",
        [("f", {"a": "x"})],
        None,
    ),
    ("broken_after_start", '[TOOL_CALLS]f[ARGS]{"a": tru}', "}", [("f", {})], None),
    ("unterminated_args", '[TOOL_CALLS]f[ARGS]{"a": "x', "", [("f", {"a": "x"})], None),
    ("no_args_object", "[TOOL_CALLS]f[ARGS] hi", "hi", [("f", {})], None),
    ("args_tag_at_end", "[TOOL_CALLS]f[ARGS]", "", [("f", {})], None),
    ("partial_args_tag", "[TOOL_CALLS]f[AR", "[TOOL_CALLS]f[AR", [], None),
]

PY_Q = 'a } { " ] [ \\ é 😀 ), ('
PYTHONIC: list[Case] = [
    ("no_call", "Hello [world]", "Hello [world]", [], None),
    ("empty", "", "", [], None),
    ("text_first_is_plain", "I will call [f(a=1)]", "I will call [f(a=1)]", [], None),
    ("one_call", '[get_weather(city="Paris")]', "", [("get_weather", {"city": "Paris"})], TOOLS),
    (
        "two_calls_nested",
        f"[f(q={PY_Q!r}, n={{'deep': [1, {{'x': ')'}}], 'e': ''}}, t=True, "
        "f=False, z=None, num=-0.5e-3, tup=(1, 'a,b')), g()]",
        "",
        [
            (
                "f",
                {
                    "q": PY_Q,
                    "n": {"deep": [1, {"x": ")"}], "e": ""},
                    "t": True,
                    "f": False,
                    "z": None,
                    "num": -0.5e-3,
                    "tup": [1, "a,b"],
                },
            ),
            ("g", {}),
        ],
        TOOLS,
    ),
    (
        "llama4_tags_multiline",
        '<|python_start|>[f(a=1,\n  b="""multi\nline it\'s"""), '
        "g(x=[1, 2,], y='',)]<|python_end|>",
        "",
        [("f", {"a": 1, "b": "multi\nline it's"}), ("g", {"x": [1, 2], "y": ""})],
        None,
    ),
    ("text_after_list", "[f()] Done", " Done", [("f", {})], None),
    ("unknown_tool", "[rm(a=1)]", "[rm(a=1)]", [], TOOLS),
    ("second_call_unknown", "[f(), rm()]", ", rm()]", [("f", {})], TOOLS),
    ("positional_argument", "[f(1)]", "1)]", [("f", {})], None),
    ("not_a_literal", "[f(a=1, b=x)]", ")]", [("f", {"a": 1})], None),
    ("no_json_form", "[f(a=1j)]", ")]", [("f", {})], None),
    ("unterminated_after_start", '[f(a=1, b="ab', "", [("f", {"a": 1})], None),
    ("unterminated_before_start", "[get_wea", "[get_wea", [], None),
    ("markdown_link", "[link](http://x)", "[link](http://x)", [], None),
    ("empty_list", "[]", "[]", [], None),
    (
        "escaped_quotes",
        r"""[f(a='it\'s', b="say \"hi\"", c=r'\d')]""",
        "",
        [("f", {"a": "it's", "b": 'say "hi"', "c": "\\d"})],
        None,
    ),
]

FORMATS = {"hermes": HERMES, "llama3_json": LLAMA3, "mistral": MISTRAL, "pythonic": PYTHONIC}
ALL_CASES = [(fmt, *case[1:]) for fmt, cases in FORMATS.items() for case in cases]
ALL_IDS = [f"{fmt}-{case[0]}" for fmt, cases in FORMATS.items() for case in cases]


@pytest.mark.parametrize(
    ("fmt", "text", "want_text", "want_calls", "tools"), ALL_CASES, ids=ALL_IDS
)
def test_format(
    fmt: str,
    text: str,
    want_text: str,
    want_calls: list[tuple[str, Any]],
    tools: Sequence[str] | None,
) -> None:
    got = check_all_splits(lambda: tool_parser(fmt, tools), text)
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


def test_pythonic_sends_each_argument_when_complete() -> None:
    p = tool_parser("pythonic")
    assert p.feed("[f(a='x") == [CallStart(0, "f")]
    assert p.feed("y', b") == [CallArgs(0, '{"a": "xy"')]
    assert p.feed("=2)") == [CallArgs(0, ', "b": 2'), CallArgs(0, "}")]
    assert p.feed("]") == []
    assert p.finish() == []


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
kw_dicts = st.dictionaries(
    st.from_regex(r"[a-z_][a-z0-9_]{0,6}", fullmatch=True), json_values, max_size=4
)
names = st.sampled_from(TOOLS)
# Plain text that cannot open markup of any format.
plain = st.text(alphabet=st.characters(blacklist_characters="<[{"), max_size=20)
calls_st = st.lists(st.tuples(names, arg_dicts, st.booleans()), min_size=1, max_size=3)
cuts_st = st.lists(st.integers(min_value=0, max_value=2000), max_size=8)


def _render(fmt: str, calls: list[tuple[str, dict[str, Any], bool]], variant: bool) -> str:
    def dump(args: dict[str, Any], ascii: bool) -> str:
        return json.dumps(args, ensure_ascii=ascii)

    if fmt == "hermes":
        return "".join(_h(n, dump(a, x)) for n, a, x in calls)
    if fmt == "llama3_json":
        tag = "<|python_tag|>" if variant else ""
        return tag + "; ".join(_l(n, dump(a, x)) for n, a, x in calls)
    if variant:
        return "".join(f"[TOOL_CALLS]{n}[ARGS]{dump(a, x)}" for n, a, x in calls)
    return "[TOOL_CALLS]" + json.dumps([{"name": n, "arguments": a} for n, a, _ in calls])


@settings(max_examples=150, deadline=None)
@given(
    fmt=st.sampled_from(["hermes", "llama3_json", "mistral"]),
    before=plain,
    calls=calls_st,
    variant=st.booleans(),
    cuts=cuts_st,
)
def test_json_formats_roundtrip(
    fmt: str,
    before: str,
    calls: list[tuple[str, dict[str, Any], bool]],
    variant: bool,
    cuts: list[int],
) -> None:
    if fmt == "llama3_json":
        before = ""  # calls only count at the start of the output
    text = before + _render(fmt, calls, variant)
    got = run(lambda: tool_parser(fmt, TOOLS), split_at(text, cuts))
    assert got.text == (before if before.strip() else "")  # whitespace alone is dropped
    assert got.calls == [(name, args) for name, args, _ in calls]


@settings(max_examples=150, deadline=None)
@given(calls=st.lists(st.tuples(names, kw_dicts), min_size=1, max_size=3), cuts=cuts_st)
def test_pythonic_roundtrip(calls: list[tuple[str, dict[str, Any]]], cuts: list[int]) -> None:
    text = (
        "["
        + ", ".join(f"{n}(" + ", ".join(f"{k}={v!r}" for k, v in a.items()) + ")" for n, a in calls)
        + "]"
    )
    got = run(lambda: tool_parser("pythonic", TOOLS), split_at(text, cuts))
    assert got.text == ""
    assert got.calls == calls


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


@settings(max_examples=300, deadline=None)
@given(text=st.text(alphabet='{}[]":,\\ 01tfnrue.-xé', max_size=30))
def test_json_scan_never_raises_and_releases_only_completable_json(text: str) -> None:
    scan = JsonScan(capture=True)
    taken = ""
    for ch in text:
        scan.feed(ch)
        taken += scan.take()
        if scan.error or scan.done:
            break
    if taken and not scan.done:
        json.loads(taken + scan.completion())
    if scan.done:
        json.loads(taken)


# ---------------------------------------------------------------------------
# work is proportional to the new text
# ---------------------------------------------------------------------------

LONG = 'x\\"é<[' * 2000
LONG_TEXTS = {
    "hermes": '<tool_call>{"name": "f", "arguments": {"s": "' + LONG + '"}}</tool_call>',
    "llama3_json": '{"name": "f", "parameters": {"s": "' + LONG + '"}}',
    "mistral": '[TOOL_CALLS]f[ARGS]{"s": "' + LONG + '"}',
    "pythonic": "[f(s=" + repr(LONG.replace("\\", "")) + ")]",
}


@pytest.mark.parametrize("fmt", sorted(LONG_TEXTS))
def test_feed_is_incremental(fmt: str) -> None:
    text = LONG_TEXTS[fmt]
    p = tool_parser(fmt)
    sent = []
    for ch in text:
        sent += [e.fragment for e in p.feed(ch) if isinstance(e, CallArgs)]
    sent += [e.fragment for e in p.finish() if isinstance(e, CallArgs)]
    assert json.loads("".join(sent)) == {"s": LONG.replace("\\", "")}
    if fmt != "pythonic":  # pythonic sends each argument whole
        assert len(sent) > 1000
    # Held-back characters are looked at again with the next piece; that must stay bounded.
    assert p.scanned <= 3 * len(text)  # type: ignore[attr-defined]


# ---------------------------------------------------------------------------
# fuzz: text made of markup pieces never breaks a parser
# ---------------------------------------------------------------------------

PIECES = [
    "<tool_call>",
    "</tool_call>",
    "<tool_",
    "[TOOL_CALLS]",
    "[ARGS]",
    "[CALL_ID]",
    "[TOOL",
    "<|python_tag|>",
    "<|python_start|>",
    "<|python_end|>",
    '{"name": "f", ',
    '"arguments": ',
    '"parameters": ',
    '"name": "g"',
    '"name": "zz"',
    "{",
    "}",
    "[",
    "]",
    "(",
    ")",
    ":",
    ",",
    ";",
    "=",
    '"',
    "'",
    "\\",
    "\\u12",
    "a",
    "f",
    "g(",
    "f(a=",
    "1",
    "-2.5e",
    "true",
    "nul",
    " ",
    "\n",
    "é😀",
]


@settings(max_examples=400, deadline=None)
@given(
    fmt=st.sampled_from(sorted(TOOL_PARSERS)),
    parts=st.lists(st.sampled_from(PIECES), max_size=25),
    tools=st.sampled_from([None, TOOLS]),
    cuts=st.lists(st.integers(min_value=0, max_value=300), max_size=6),
)
def test_markup_soup_is_chunking_independent(
    fmt: str, parts: list[str], tools: Sequence[str] | None, cuts: list[int]
) -> None:
    text = "".join(parts)
    whole = run(lambda: tool_parser(fmt, tools), [text])  # fold() checks every invariant
    for pieces in (split_at(text, cuts), list(text)):
        got = run(lambda: tool_parser(fmt, tools), pieces)
        assert (got.text, got.calls, got.raw_args) == (whole.text, whole.calls, whole.raw_args)
    if not whole.calls:
        assert whole.text == text  # nothing is lost when nothing was a call


DEEP = "[" * 100_000 + "]" * 100_000
DEEP_TEXTS = {
    "hermes": '<tool_call>{"name": "f", "arguments": ' + json.dumps(DEEP) + "}</tool_call>",
    "llama3_json": '{"name": "f", "parameters": {"a": ' + DEEP + "}}",
    "mistral": '[TOOL_CALLS]f[ARGS]{"a": ' + DEEP[:150_000],
    "pythonic": "[f(a=" + DEEP + ")]",
}


@pytest.mark.parametrize("fmt", sorted(DEEP_TEXTS))
def test_deep_nesting_never_raises(fmt: str) -> None:
    p = tool_parser(fmt)
    events = p.feed(DEEP_TEXTS[fmt]) + p.finish()
    starts = [e for e in events if isinstance(e, CallStart)]
    # The scanners do not recurse; the started call keeps what was valid (a JSON string too
    # deep to decode counts as no arguments).
    assert [s.name for s in starts] == ["f"]
    args = "".join(e.fragment for e in events if isinstance(e, CallArgs))
    assert args.startswith("{") and args.endswith("}")

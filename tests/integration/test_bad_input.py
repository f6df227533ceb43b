"""Bad input gets the right status and an OpenAI error body, and the router keeps serving."""

from __future__ import annotations

import http.client
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import CLIENT_KEY
from tests.support.openapi import validate
from tests.support.router import RouterProc

AUTH = {"Authorization": f"Bearer {CLIENT_KEY}", "Content-Type": "application/json"}
CHAT = "/v1/chat/completions"
OK_BODY = {"model": "echo", "messages": [{"role": "user", "content": "hi"}]}


def request(
    router: RouterProc,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", router.port, timeout=15)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        conn.close()


def assert_error(
    status: int, body: bytes, want_status: int, *, param: str | None = None, code: str | None = None
) -> dict:
    assert status == want_status, body
    err = json.loads(body)
    validate("ErrorResponse", err)
    assert set(err["error"]) == {"message", "type", "param", "code"}
    assert err["error"]["message"]
    if param is not None:
        assert err["error"]["param"] == param
    if code is not None:
        assert err["error"]["code"] == code
    return err["error"]


def still_serving(router: RouterProc) -> None:
    status, _, body = request(router, "POST", CHAT, json.dumps(OK_BODY).encode(), AUTH)
    assert status == 200, body
    assert json.loads(body)["choices"][0]["message"]["content"] == "echo: hi"


@pytest.mark.parametrize(
    ("body", "status", "param", "code"),
    [
        (b"{not json", 400, None, "invalid_json"),
        (b"", 400, None, "invalid_json"),
        (b"[1, 2]", 400, None, "invalid_json"),
        (b'{"model": "echo"}', 400, "messages", None),
        (b'{"model": "echo", "messages": "hi"}', 400, "messages", None),
        (b'{"model": "echo", "messages": []}', 400, "messages", None),
        (b'{"model": "echo", "messages": [{"content": "x"}]}', 400, "messages[0].role", None),
        (
            b'{"model": "echo", "messages": [{"role": "wizard", "content": "x"}]}',
            400,
            "messages[0].role",
            None,
        ),
        (b'{"model": 7, "messages": [{"role": "user", "content": "x"}]}', 400, "model", None),
        (
            b'{"model": "echo", "stream": "yes", "messages": [{"role": "user", "content": "x"}]}',
            400,
            "stream",
            None,
        ),
        (
            b'{"model": "echo", "temperature": 9, "messages": [{"role": "user", "content": "x"}]}',
            400,
            "temperature",
            None,
        ),
        (
            b'{"model": "echo", "max_tokens": 0, "messages": [{"role": "user", "content": "x"}]}',
            400,
            "max_tokens",
            None,
        ),
        (
            b'{"model": "nope", "messages": [{"role": "user", "content": "x"}]}',
            404,
            "model",
            "model_not_found",
        ),
        (
            b'{"model": "echo", "stream_options": {"include_usage": true},'
            b' "messages": [{"role": "user", "content": "x"}]}',
            400,
            "stream_options",
            None,
        ),
        (
            b'{"model": "echo", "stream": false, "stream_options": {"include_usage": true},'
            b' "messages": [{"role": "user", "content": "x"}]}',
            400,
            "stream_options",
            None,
        ),
        (
            b'{"model": "echo", "top_logprobs": 2, "messages": [{"role": "user", "content": "x"}]}',
            400,
            "top_logprobs",
            None,
        ),
        (
            b'{"model": "echo", "logprobs": false, "top_logprobs": 2,'
            b' "messages": [{"role": "user", "content": "x"}]}',
            400,
            "top_logprobs",
            None,
        ),
    ],
)
def test_chat_bad_bodies(
    router: RouterProc, body: bytes, status: int, param: str | None, code: str | None
) -> None:
    s, _, b = request(router, "POST", CHAT, body, AUTH)
    assert_error(s, b, status, param=param, code=code)
    still_serving(router)


def test_deep_but_reasonable_nesting_is_accepted(router: RouterProc) -> None:
    body = json.dumps(OK_BODY).encode()[:-1] + b', "x": ' + _deep(100) + b"}"
    s, _, b = request(router, "POST", CHAT, body, AUTH)
    assert s == 200, b


def test_stream_options_with_stream_and_logprobs_pair_are_accepted(router: RouterProc) -> None:
    ok = {**OK_BODY, "stream": True, "stream_options": {"include_usage": True}}
    s, _, b = request(router, "POST", CHAT, json.dumps(ok).encode(), AUTH)
    assert s == 200 and b.rstrip().endswith(b"data: [DONE]"), b
    ok = {**OK_BODY, "logprobs": True, "top_logprobs": 2}
    s, _, b = request(router, "POST", CHAT, json.dumps(ok).encode(), AUTH)
    assert s == 200, b


def _deep(depth: int, inner: bytes = b"1") -> bytes:
    return b'{"a":' * depth + inner + b"}" * depth


MSG = b'{"model": "echo", "messages": [{"role": "user", "content": '
UNDECODABLE = [
    MSG + b'"caf\xe9 \xff\xfe"}]}',
    MSG + b'"caf\xe9"}]}',
    b'{"model": "\xc3\x28", "prompt": "x", "input": "x"}',
    b"\xff\xfe{}",
    b"[" * 5000 + b"]" * 5000,
    _deep(3000),
    MSG + b"[" * 5000 + b"]" * 5000 + b"}]}",
    # Under the decoder's own limit, still too deep to pass on safely.
    MSG + b'"hi"}], "x": ' + b"[" * 990 + b"]" * 990 + b"}",
    _deep(129),
]


@pytest.mark.parametrize("path", [CHAT, "/v1/completions", "/v1/embeddings"])
@pytest.mark.parametrize("body", UNDECODABLE, ids=range(len(UNDECODABLE)))
def test_undecodable_bodies_are_400_without_traceback(
    router: RouterProc, path: str, body: bytes
) -> None:
    before = len(router.log_text())
    s, _, b = request(router, "POST", path, body, AUTH)
    assert_error(s, b, 400, code="invalid_json")
    logged = router.log_text()[before:]
    assert "Traceback" not in logged and "Error" not in logged, logged[-2000:]
    still_serving(router)


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/v1/completions", b'{"model": "echo", "stream_options": {}, "prompt": "x"}',
         "stream_options"),
        ("/v1/completions", b'{"model": "echo"}', "prompt"),
        ("/v1/completions", b'{"model": "echo", "prompt": {"a": 1}}', "prompt"),
        ("/v1/embeddings", b'{"model": "embed"}', "input"),
        (
            "/v1/embeddings",
            b'{"model": "embed", "input": "x", "encoding_format": "hex"}',
            "encoding_format",
        ),
    ],
)
def test_other_endpoints_bad_bodies(router: RouterProc, path: str, body: bytes, param: str) -> None:
    s, _, b = request(router, "POST", path, body, AUTH)
    assert_error(s, b, 400, param=param)


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": "Basic abc"},
        {"Authorization": f"Bearer {CLIENT_KEY}x"},
        {"Authorization": "Bearer"},
    ],
)
def test_missing_or_wrong_key_is_401(router: RouterProc, headers: dict[str, str]) -> None:
    s, _, b = request(router, "POST", CHAT, json.dumps(OK_BODY).encode(), headers)
    err = assert_error(s, b, 401, code="invalid_api_key")
    assert CLIENT_KEY not in b.decode() and "wrong" not in err["message"]
    s, _, b = request(router, "GET", "/v1/models", None, headers)
    assert_error(s, b, 401, code="invalid_api_key")
    still_serving(router)


def test_body_over_limit_is_413(router: RouterProc) -> None:
    big = json.dumps({**OK_BODY, "pad": "x" * (1024 * 1024 + 10)}).encode()
    s, _, b = request(router, "POST", CHAT, big, AUTH)
    assert_error(s, b, 413, code="request_too_large")
    still_serving(router)


def test_wrong_method_is_405_and_unknown_path_404(router: RouterProc) -> None:
    s, h, b = request(router, "GET", CHAT, None, AUTH)
    assert_error(s, b, 405)
    assert "POST" in h["allow"]
    s, _, b = request(router, "DELETE", "/v1/models", None, AUTH)
    assert_error(s, b, 405)
    s, _, b = request(router, "POST", "/v1/nothing-here", b"{}", AUTH)
    assert_error(s, b, 404, code="unknown_url")
    s, _, b = request(router, "GET", "/", None, AUTH)
    assert_error(s, b, 404)
    still_serving(router)


ENDPOINTS = [
    CHAT,
    "/v1/completions",
    "/v1/embeddings",
    "/v1/models",
    "/v1/models/echo",
    "/v1/models/gpt-x",
    "/v1/models/nope",
    "/health",
    "/health/ready",
    "/health/live",
    "/metrics",
]

# Raw bytes a JSON library may choke on: invalid UTF-8, deep nesting, numbers past float and
# int64 range, duplicate keys; each placed inside an otherwise valid request.
FIELDS = ["model", "max_tokens", "temperature", "n", "seed", "top_p", "prompt", "input",
          "stream", "dimensions", "x"]
bad_values = st.one_of(
    st.sampled_from([b"1e400", b"-1e400", b"1" * 400, b"-" + b"9" * 30, b"1e-400", b"0.1e999999",
                     b"18446744073709551616", b"-9223372036854775809", b"NaN", b"Infinity"]),
    st.binary(min_size=1, max_size=12).map(lambda junk: b'"' + junk.replace(b'"', b"") + b'"'),
    st.integers(1, 3000).map(lambda d: b"[" * d + b"]" * d),
    st.integers(1, 3000).map(lambda d: b'{"a":' * d + b"0" + b"}" * d),
)
raw_bodies = st.builds(
    lambda field, value, dup: (
        b'{"model": "echo", "messages": [{"role": "user", "content": "hi"}], "prompt": "p", '
        b'"input": "i", "' + field.encode() + b'": ' + value
        + (b', "' + field.encode() + b'": 1' if dup else b"") + b"}"
    ),
    st.sampled_from(FIELDS),
    bad_values,
    st.booleans(),
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda kids: (
        st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=10), kids, max_size=4)
    ),
    max_leaves=20,
)
bodies = st.one_of(
    st.binary(max_size=200),
    raw_bodies,
    json_values.map(lambda v: json.dumps(v).encode()),
    st.fixed_dictionaries(
        {},
        optional={
            "model": st.sampled_from(["echo", "embed", "nope", "gpt-x", "echo-nostream"])
            | json_values,
            "messages": st.lists(
                st.fixed_dictionaries(
                    {"role": st.sampled_from(["user", "system", "x"])},
                    optional={"content": json_values},
                ),
                max_size=3,
            )
            | json_values,
            "prompt": st.text(max_size=10) | json_values,
            "input": st.text(max_size=10) | json_values,
            "stream": st.booleans() | json_values,
            "max_tokens": st.integers(-5, 5) | json_values,
            "n": st.integers(-1, 3),
            "stream_options": json_values,
        },
    ).map(lambda d: json.dumps(d).encode()),
)
# RFC 3986 path characters. Request targets outside them (`/<`, say) never reach the app:
# granian's HTTP layer answers a bare 400 (see test_invalid_request_target).
PCHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~!$&'()*+,;=:@/"
header_values = st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=40)


@settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    method=st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"]),
    path=st.sampled_from(ENDPOINTS) | st.text(alphabet=PCHARS, max_size=30).map(lambda p: "/" + p),
    body=bodies,
    auth=st.sampled_from([f"Bearer {CLIENT_KEY}", "Bearer nope", ""]) | header_values,
    ctype=st.sampled_from(["application/json", "text/plain", ""]) | header_values,
)
def test_fuzz_never_5xx(
    router: RouterProc, method: str, path: str, body: bytes, auth: str, ctype: str
) -> None:
    headers = {"Authorization": auth, "Content-Type": ctype}
    s, h, b = request(router, method, path, body if method != "GET" else None, headers)
    assert s < 500, (s, b)
    if s >= 400:
        assert h.get("content-type", "").startswith("application/json"), (s, b)
        assert_error(s, b, s)


@settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck))
@given(path=st.sampled_from([CHAT, "/v1/completions", "/v1/embeddings"]), body=raw_bodies,
       stream=st.booleans())
def test_fuzz_raw_json_bytes_never_5xx(
    router: RouterProc, path: str, body: bytes, stream: bool
) -> None:
    if stream:
        body = body[:-1] + b', "stream": true}'
    s, h, b = request(router, "POST", path, body, AUTH)
    assert s < 500, (s, b)
    if s >= 400:
        assert h.get("content-type", "").startswith("application/json"), (s, b)
        assert_error(s, b, s)


def test_invalid_request_target(router: RouterProc) -> None:
    import socket

    with socket.create_connection(("127.0.0.1", router.port), timeout=5) as sock:
        sock.sendall(b"GET /<> HTTP/1.1\r\nHost: x\r\n\r\n")
        head = sock.recv(4096)
    assert head.startswith(b"HTTP/1.1 400")
    still_serving(router)


def test_after_fuzz_still_serving(router: RouterProc) -> None:
    still_serving(router)


_door_items = st.fixed_dictionaries(
    {},
    optional={
        "type": st.sampled_from(["message", "function_call", "function_call_output",
                                 "reasoning", "web_search_call"]) | json_values,
        "role": st.sampled_from(["user", "assistant", "developer", "tool"]) | json_values,
        "content": st.text(max_size=8) | st.lists(st.fixed_dictionaries(
            {"type": st.sampled_from(["input_text", "output_text", "text", "tool_use",
                                      "tool_result", "image"])},
            optional={"text": json_values, "id": json_values, "input": json_values,
                      "tool_use_id": json_values, "content": json_values}), max_size=3)
        | json_values,
        "call_id": json_values, "name": json_values, "arguments": json_values,
        "output": json_values,
    },
)
door_bodies = st.one_of(
    st.binary(max_size=100),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.fixed_dictionaries(
        {},
        optional={
            "model": st.sampled_from(["echo", "nope", "echo-nostream"]) | json_values,
            "input": st.text(max_size=10) | st.lists(_door_items, max_size=3) | json_values,
            "messages": st.lists(_door_items, max_size=3) | json_values,
            "system": st.text(max_size=5) | json_values,
            "instructions": json_values,
            "max_tokens": st.integers(-2, 5) | json_values,
            "max_output_tokens": st.integers(-2, 5) | json_values,
            "stream": st.booleans() | json_values,
            "tools": st.lists(st.fixed_dictionaries(
                {"type": st.sampled_from(["function", "web_search", "custom"])},
                optional={"name": json_values, "parameters": json_values,
                          "input_schema": json_values}), max_size=2) | json_values,
            "tool_choice": json_values,
            "text": json_values,
            "stop_sequences": json_values,
            "temperature": json_values,
            "previous_response_id": json_values,
        },
    ).map(lambda d: json.dumps(d).encode()),
)


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    path=st.sampled_from(["/v1/responses", "/v1/messages", "/v1/messages/count_tokens"]),
    body=door_bodies,
    key=st.sampled_from([{"Authorization": f"Bearer {CLIENT_KEY}"}, {"x-api-key": CLIENT_KEY},
                         {"x-api-key": "nope"}, {}]),
)
def test_fuzz_front_doors_never_5xx(
    router: RouterProc, path: str, body: bytes, key: dict[str, str]
) -> None:
    s, h, b = request(router, "POST", path, body, {**key, "Content-Type": "application/json"})
    assert s < 500, (s, b)
    if s < 400:
        return
    assert h.get("content-type", "").startswith("application/json"), (s, b)
    err = json.loads(b)
    if path == "/v1/responses":
        assert_error(s, b, s)
    else:
        assert err["type"] == "error" and set(err["error"]) == {"type", "message"}, err
        assert err["error"]["message"]
    if s == 401:
        assert "x-api-key" not in key or key["x-api-key"] != CLIENT_KEY


def test_after_front_door_fuzz_still_serving(router: RouterProc) -> None:
    still_serving(router)

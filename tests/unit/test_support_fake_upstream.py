"""The test-support pieces do what the integration tests rely on: fake upstream, spec checks."""

from __future__ import annotations

import base64
import http.client
import json
import socket
import struct
import threading
import time
from collections.abc import Iterator
from typing import Any

import openai
import pytest

from tests.support import openapi
from tests.support.fake_upstream import EMBED_DIMS, FakeUpstream, fake_embedding
from tests.support.llama_server import gguf_path, run_llama_server

USER: Any = [{"role": "user", "content": "hello there world"}]


# --- helpers ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeUpstream]:
    with FakeUpstream() as up:
        yield up


@pytest.fixture
def up(upstream: FakeUpstream) -> FakeUpstream:
    upstream.clear()
    return upstream


@pytest.fixture
def client(up: FakeUpstream) -> openai.OpenAI:
    return openai.OpenAI(base_url=up.url, api_key="sk-test", max_retries=0, timeout=10)


def post(
    up: FakeUpstream, path: str, body: Any, *, raw: bytes | None = None
) -> tuple[int, dict[str, str], bytes]:
    """POST with http.client: (status, lower-cased headers, whole body)."""
    conn = http.client.HTTPConnection("127.0.0.1", up.port, timeout=10)
    try:
        payload = raw if raw is not None else json.dumps(body).encode()
        conn.request("POST", "/v1" + path, payload, {"Content-Type": "application/json"})
        resp = conn.getresponse()
        headers = {k.lower(): v for k, v in resp.getheaders()}
        return resp.status, headers, resp.read()
    finally:
        conn.close()


def sse_data(raw: bytes) -> list[str]:
    """The `data` payloads of an SSE body (comments skipped, any line ending)."""
    text = raw.decode().replace("\r\n", "\n")
    out = []
    for event in text.split("\n\n"):
        for line in event.split("\n"):
            if line.startswith("data:"):
                out.append(line[5:].removeprefix(" "))
    return out


def sse_json(raw: bytes) -> list[dict[str, Any]]:
    data = sse_data(raw)
    assert data[-1] == "[DONE]"
    return [json.loads(d) for d in data[:-1]]


def chat(model: str, **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": USER, **extra}


# --- openapi.validate ---------------------------------------------------------------------

USAGE = {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
GOOD_CHAT = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "created": 1,
    "model": "m",
    "choices": [
        {
            "index": 0,
            "finish_reason": "stop",
            "logprobs": None,
            "message": {"role": "assistant", "content": "hi", "refusal": None},
        }
    ],
    "usage": USAGE,
    "some_future_field": {"x": 1},
}
GOOD_CHUNK = {
    "id": "c",
    "object": "chat.completion.chunk",
    "created": 1,
    "model": "m",
    "usage": None,
    "choices": [{"index": 0, "delta": {"content": "h"}, "logprobs": None, "finish_reason": None}],
}
USAGE_CHUNK = {**GOOD_CHUNK, "choices": [], "usage": USAGE}
GOOD_COMPLETION = {
    "id": "cmpl-1",
    "object": "text_completion",
    "created": 1,
    "model": "m",
    "usage": USAGE,
    "choices": [{"index": 0, "text": "hi", "logprobs": None, "finish_reason": "length"}],
}
GOOD_EMBEDDINGS = {
    "object": "list",
    "model": "e",
    "usage": {"prompt_tokens": 1, "total_tokens": 1},
    "data": [{"object": "embedding", "index": 0, "embedding": [0.5, -1.0]}],
}
GOOD_MODEL = {"id": "m", "object": "model", "created": 1, "owned_by": "me"}
GOOD_ERROR = {
    "error": {"message": "no", "type": "invalid_request_error", "param": None, "code": None}
}


@pytest.mark.parametrize(
    ("schema", "obj"),
    [
        ("CreateChatCompletionResponse", GOOD_CHAT),
        ("CreateChatCompletionStreamResponse", GOOD_CHUNK),
        ("CreateChatCompletionStreamResponse", USAGE_CHUNK),
        ("CreateCompletionResponse", GOOD_COMPLETION),
        ("CreateEmbeddingResponse", GOOD_EMBEDDINGS),
        ("ListModelsResponse", {"object": "list", "data": [GOOD_MODEL]}),
        ("Model", GOOD_MODEL),
        ("ErrorResponse", GOOD_ERROR),
        ("ChatCompletionChunk", GOOD_CHUNK),  # friendly alias
    ],
)
def test_openapi_accepts(schema: str, obj: object) -> None:
    openapi.validate(schema, obj)


@pytest.mark.parametrize(
    ("schema", "obj", "needle"),
    [
        (
            "CreateChatCompletionResponse",
            {k: v for k, v in GOOD_CHAT.items() if k != "choices"},
            "'choices' is a required property",
        ),
        ("CreateChatCompletionResponse", {**GOOD_CHAT, "created": "now"}, "$.created"),
        (
            "CreateChatCompletionResponse",
            {**GOOD_CHAT, "object": "chat.completion.chunk"},
            "$.object",
        ),
        ("CreateChatCompletionStreamResponse", {**GOOD_CHUNK, "choices": {}}, "$.choices"),
        (
            "CreateChatCompletionStreamResponse",
            {
                **GOOD_CHUNK,
                "choices": [{"index": 0, "delta": {"content": 1}, "finish_reason": None}],
            },
            "$.choices[0].delta.content",
        ),
        (
            "CreateChatCompletionStreamResponse",
            {**GOOD_CHUNK, "usage": {"total_tokens": "5"}},
            "$.usage",
        ),
        (
            "CreateEmbeddingResponse",
            {**GOOD_EMBEDDINGS, "usage": {"prompt_tokens": 1}},
            "total_tokens",
        ),
        ("Model", {"id": "m", "object": "model", "created": 1}, "owned_by"),
        ("ErrorResponse", {"error": {"message": "no"}}, "$.error"),
    ],
)
def test_openapi_rejects(schema: str, obj: object, needle: str) -> None:
    with pytest.raises(AssertionError) as caught:
        openapi.validate(schema, obj)
    assert needle in str(caught.value)


def test_openapi_unknown_schema_name() -> None:
    with pytest.raises(KeyError):
        openapi.validate("NoSuchSchema", {})


# --- fake upstream: chat ------------------------------------------------------------------


def test_chat_echo(up: FakeUpstream, client: openai.OpenAI) -> None:
    r = client.chat.completions.create(
        model="fake-echo",
        messages=[{"role": "system", "content": "be brief"}, *USER],
        extra_body={"unknown_field": [1, 2]},
    )
    assert r.choices[0].message.content == "echo: hello there world"
    assert (r.id, r.model, r.created, r.system_fingerprint) == (
        "chatcmpl-fake",
        "fake-echo-0613",
        1_700_000_000,
        "fp_fake",
    )
    assert r.choices[0].finish_reason == "stop"
    usage = r.usage
    assert usage is not None
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (5, 4, 9)
    [req] = up.requests
    assert (req["method"], req["path"]) == ("POST", "/v1/chat/completions")
    assert req["headers"]["authorization"] == "Bearer sk-test"
    assert req["json"]["unknown_field"] == [1, 2]
    assert json.loads(req["body"]) == req["json"]


def test_chat_echo_body_matches_spec(up: FakeUpstream) -> None:
    status, _, body = post(up, "/chat/completions", chat("fake-echo"))
    assert status == 200
    openapi.validate("CreateChatCompletionResponse", json.loads(body))


def test_chat_text_parts_and_last_user_message(client: openai.OpenAI) -> None:
    messages: Any = [
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": "ok"},
        {
            "role": "user",
            "content": [{"type": "text", "text": "a b"}, {"type": "text", "text": "c"}],
        },
    ]
    r = client.chat.completions.create(model="fake-echo", messages=messages)
    assert r.choices[0].message.content == "echo: a b c"
    assert r.usage is not None and r.usage.prompt_tokens == 5


def test_chat_n_and_max_tokens(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(model="fake-echo", messages=USER, n=2, max_tokens=2)
    assert [c.index for c in r.choices] == [0, 1]
    assert {c.message.content for c in r.choices} == {"echo: hello"}
    assert {c.finish_reason for c in r.choices} == {"length"}
    assert r.usage is not None and r.usage.completion_tokens == 4
    r = client.chat.completions.create(model="fake-echo", messages=USER, max_completion_tokens=3)
    assert r.choices[0].message.content == "echo: hello there"


def test_chat_stream_exact(up: FakeUpstream) -> None:
    body = chat("fake-echo", stream=True, stream_options={"include_usage": True})
    status, headers, raw = post(up, "/chat/completions", body)
    assert status == 200 and headers["content-type"].startswith("text/event-stream")
    chunks = sse_json(raw)
    for chunk in chunks:
        openapi.validate("CreateChatCompletionStreamResponse", chunk)
        assert chunk["object"] == "chat.completion.chunk" and chunk["model"] == "fake-echo-0613"
    deltas = [c["choices"][0]["delta"] for c in chunks[:-1]]
    assert deltas[0] == {"role": "assistant", "content": ""}
    text = "echo: hello there world"
    assert [d["content"] for d in deltas[1:-1]] == [text[i : i + 4] for i in range(0, len(text), 4)]
    assert deltas[-1] == {} and chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert all(c["usage"] is None for c in chunks[:-1])
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"] == {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}


def test_chat_stream_without_usage_has_no_usage_key(up: FakeUpstream) -> None:
    _, _, raw = post(up, "/chat/completions", chat("fake-echo", stream=True))
    chunks = sse_json(raw)
    assert all("usage" not in c for c in chunks)
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


def test_chat_stream_with_openai_client(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model="fake-echo",
        messages=USER,
        stream=True,
        n=2,
        max_tokens=1,
        stream_options={"include_usage": True},
    )
    texts = ["", ""]
    usage = None
    for chunk in stream:
        for choice in chunk.choices:
            texts[choice.index] += choice.delta.content or ""
        usage = chunk.usage or usage
    assert texts == ["echo:", "echo:"]
    assert usage is not None and usage.completion_tokens == 2


# --- fake upstream: completions, embeddings, models ---------------------------------------


def test_completions(up: FakeUpstream, client: openai.OpenAI) -> None:
    r = client.completions.create(model="fake-echo", prompt=["say this", "ignored"])
    assert r.object == "text_completion" and r.model == "fake-echo-0613"
    assert r.choices[0].text == "echo: say this" and r.choices[0].finish_reason == "stop"
    _, _, body = post(up, "/completions", {"model": "fake-echo", "prompt": "x y z"})
    openapi.validate("CreateCompletionResponse", json.loads(body))


def test_completions_stream(up: FakeUpstream) -> None:
    body = {
        "model": "fake-echo",
        "prompt": "abc",
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    chunks = sse_json(post(up, "/completions", body)[2])
    assert "".join(c["choices"][0]["text"] for c in chunks[:-1]) == "echo: abc"
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["total_tokens"] == 3
    assert {c["object"] for c in chunks} == {"text_completion"}


def test_embeddings_float_and_base64(up: FakeUpstream, client: openai.OpenAI) -> None:
    r = client.embeddings.create(model="fake-embed", input=["a b", "c"], encoding_format="float")
    assert [d.embedding for d in r.data] == [fake_embedding("a b"), fake_embedding("c")]
    assert len(r.data[0].embedding) == EMBED_DIMS
    assert r.usage.prompt_tokens == 3 and r.usage.total_tokens == 3
    # the openai client asks for base64 by default and decodes it itself
    r = client.embeddings.create(model="fake-echo", input="a b")
    assert r.data[0].embedding == fake_embedding("a b")
    _, _, body = post(
        up, "/embeddings", {"model": "fake-embed", "input": [1, 2, 3], "encoding_format": "base64"}
    )
    [item] = json.loads(body)["data"]
    decoded = struct.unpack(f"<{EMBED_DIMS}f", base64.b64decode(item["embedding"]))
    assert list(decoded) == fake_embedding([1, 2, 3])


def test_embeddings_body_matches_spec(up: FakeUpstream) -> None:
    _, _, body = post(up, "/embeddings", {"model": "fake-embed", "input": [[1, 2], [3]]})
    parsed = json.loads(body)
    openapi.validate("CreateEmbeddingResponse", parsed)
    assert [d["index"] for d in parsed["data"]] == [0, 1]
    assert parsed["usage"]["prompt_tokens"] == 3


def test_models(up: FakeUpstream, client: openai.OpenAI) -> None:
    ids = [m.id for m in client.models.list()]
    assert {"fake-echo", "fake-embed", "fake-split"} <= set(ids)
    conn = http.client.HTTPConnection("127.0.0.1", up.port, timeout=5)
    conn.request("GET", "/v1/models")
    openapi.validate("ListModelsResponse", json.loads(conn.getresponse().read()))
    conn.close()
    assert client.models.retrieve("fake-echo").owned_by == "fake"


# --- fake upstream: hostile behaviours ----------------------------------------------------


def test_split_stream_arrives_in_tiny_pieces(up: FakeUpstream) -> None:
    body = json.dumps(chat("fake-split", stream=True)).encode()
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode()
    reads = []
    with socket.create_connection(("127.0.0.1", up.port), timeout=10) as sock:
        sock.sendall(head + body)
        while data := sock.recv(65536):
            reads.append(data)
    assert reads[0].startswith(b"HTTP/1.1 200")
    assert len(reads) > 50  # written 1-7 bytes at a time, 1 ms apart


def test_split_stream_content(up: FakeUpstream, client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(model="fake-split", messages=USER, stream=True)
    text = "".join(c.choices[0].delta.content or "" for c in stream)
    assert text == "echo: hello there world — café 😀"
    conn = http.client.HTTPConnection("127.0.0.1", up.port, timeout=10)
    conn.request("POST", "/v1/chat/completions", json.dumps(chat("fake-split", stream=True)))
    raw = conn.getresponse().read()  # de-chunked: the SSE bytes themselves
    conn.close()
    assert "😀".encode() in raw and raw.endswith(b"data: [DONE]\r\n\r\n")
    assert b": keep-alive\n\n" in raw and b": keep-alive\r\n\r\n" in raw and b"data:{" in raw
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in sse_json(raw)) == text


def test_slow_stream_is_paced(up: FakeUpstream, client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model="fake-slow", messages=[{"role": "user", "content": "hi"}], stream=True
    )
    times = [time.monotonic() for c in stream if c.choices and c.choices[0].delta.content]
    assert len(times) == 2  # "echo: hi" in pieces of 4
    assert times[1] - times[0] >= 0.25


@pytest.mark.parametrize("status", [400, 401, 404, 429, 500, 503])
def test_error_models(up: FakeUpstream, status: int) -> None:
    got, headers, body = post(up, "/chat/completions", chat(f"fake-error-{status}"))
    assert got == status
    error = json.loads(body)
    openapi.validate("ErrorResponse", error)
    assert error["error"]["message"] == f"fake upstream error {status}"
    assert error["error"]["code"] == f"fake_{status}"
    assert ("retry-after" in headers) == (status == 429)


def test_error_models_through_openai_client(client: openai.OpenAI) -> None:
    with pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(model="fake-error-429", messages=USER)
    assert caught.value.code == "fake_429"
    with pytest.raises(openai.NotFoundError) as missing:
        client.chat.completions.create(model="no-such-model", messages=USER)
    assert missing.value.code == "model_not_found"


def test_error_text_and_bad_json(up: FakeUpstream) -> None:
    status, headers, body = post(up, "/chat/completions", chat("fake-error-text"))
    assert status == 500 and headers["content-type"].startswith("text/plain")
    with pytest.raises(ValueError):
        json.loads(body)
    status, headers, body = post(up, "/completions", {"model": "fake-bad-json", "prompt": "x"})
    assert status == 200 and headers["content-type"].startswith("application/json")
    assert body == b'{"id": '


def test_invalid_requests(up: FakeUpstream) -> None:
    status, _, body = post(up, "/chat/completions", None, raw=b"{not json")
    assert status == 400 and json.loads(body)["error"]["code"] == "invalid_json"
    assert up.requests[-1]["json"] is None and up.requests[-1]["body"] == b"{not json"
    status, _, body = post(up, "/chat/completions", {"messages": USER})
    assert status == 400 and json.loads(body)["error"]["param"] == "model"
    status, _, body = post(up, "/chat/completions", chat("fake-embed"))
    assert status == 404 and json.loads(body)["error"]["code"] == "model_not_found"
    status, _, body = post(up, "/nowhere", {})
    assert status == 404
    openapi.validate("ErrorResponse", json.loads(body))


def test_large_bodies_are_accepted(up: FakeUpstream) -> None:
    status, _, _ = post(up, "/chat/completions", chat("fake-echo", pad="x" * 2_000_000))
    assert status == 200 and len(up.requests[-1]["body"]) > 2_000_000


def test_nostream_ignores_stream_flag(up: FakeUpstream) -> None:
    status, headers, body = post(up, "/chat/completions", chat("fake-nostream", stream=True))
    assert status == 200 and headers["content-type"].startswith("application/json")
    assert json.loads(body)["choices"][0]["message"]["content"] == "echo: hello there world"


def test_die_mid_stream(up: FakeUpstream, client: openai.OpenAI) -> None:
    seen = []
    with pytest.raises(openai.APIConnectionError):
        stream = client.chat.completions.create(model="fake-die", messages=USER, stream=True)
        for chunk in stream:
            seen.append(chunk.choices[0].delta.content)
    assert seen == ["", "echo", ": he"]
    assert up.wait_event("aborted", 1, model="fake-die")
    with pytest.raises(openai.APIConnectionError):
        client.chat.completions.create(model="fake-die", messages=USER)


def test_hang_until_client_gives_up(up: FakeUpstream) -> None:
    impatient = openai.OpenAI(base_url=up.url, api_key="k", max_retries=0, timeout=0.3)
    with pytest.raises(openai.APITimeoutError):
        impatient.chat.completions.create(model="fake-hang", messages=USER)
    gave_up = time.monotonic()
    assert up.wait_event("closed", 2, model="fake-hang") - gave_up < 0.5


def test_disconnect_is_noticed_promptly(up: FakeUpstream, client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(model="fake-disconnect", messages=USER, stream=True)
    chunks = iter(stream)
    assert next(chunks).choices[0].delta.role == "assistant"
    assert next(chunks).choices[0].delta.content == "tick "
    started = up.wait_event("started", 1, model="fake-disconnect")
    stream.close()
    closed_at = time.monotonic()
    closed = up.wait_event("closed", 2, model="fake-disconnect")
    assert started < closed and closed - closed_at < 0.3


def test_completed_stream_is_not_a_disconnect(up: FakeUpstream, client: openai.OpenAI) -> None:
    for model in ("fake-echo", "fake-split"):
        list(client.chat.completions.create(model=model, messages=USER, stream=True))
    time.sleep(0.1)
    assert [e[0] for e in up.events] == ["received", "received"]


# --- fake upstream: lifecycle -------------------------------------------------------------


def test_wait_event_times_out_and_clear_empties(up: FakeUpstream) -> None:
    with pytest.raises(TimeoutError):
        up.wait_event("never", timeout=0.05)
    post(up, "/chat/completions", chat("fake-echo"))
    assert up.requests and up.events
    up.clear()
    assert up.requests == [] and up.events == []


def test_stop_does_not_wait_for_hanging_requests() -> None:
    errors: list[BaseException] = []

    def hang(url: str) -> None:
        c = openai.OpenAI(base_url=url, api_key="k", max_retries=0, timeout=30)
        try:
            c.chat.completions.create(model="fake-hang", messages=USER)
        except openai.APIError as exc:
            errors.append(exc)

    before = set(threading.enumerate())
    with FakeUpstream() as fresh:
        worker = threading.Thread(target=hang, args=(fresh.url,))
        worker.start()
        fresh.wait_event("received", 5)
        port = fresh.port
        stopping = time.monotonic()
    assert time.monotonic() - stopping < 3
    worker.join(5)
    assert not worker.is_alive() and isinstance(errors[0], openai.APIConnectionError)
    assert set(threading.enumerate()) <= before  # the server thread was joined
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()


# --- the real upstream --------------------------------------------------------------------


def test_gguf_is_found() -> None:
    assert gguf_path().stat().st_size > 50_000_000


@pytest.mark.llm
def test_llama_server_chat(tmp_path: Any) -> None:
    with run_llama_server(log=tmp_path / "llama.log") as server:
        assert server.url == f"http://127.0.0.1:{server.port}/v1"
        c = openai.OpenAI(base_url=server.url, api_key="k", max_retries=0, timeout=60)
        r = c.chat.completions.create(
            model="smollm2", messages=[{"role": "user", "content": "Say hi"}], max_tokens=8
        )
        assert r.choices[0].message.content
        assert r.usage is not None and 0 < r.usage.completion_tokens <= 8
    assert server.proc.poll() is not None

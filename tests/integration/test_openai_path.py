"""The OpenAI-compatible HTTP path, end to end: official client -> router -> fake upstream."""

from __future__ import annotations

import json
import time

import aiohttp
import openai
import pytest

from tests.conftest import CLIENT_KEY, SCOPED_KEY, UPSTREAM_KEY
from tests.support.fake_upstream import FakeUpstream
from tests.support.openapi import validate
from tests.support.router import RouterProc

MSGS = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello there"}]


@pytest.fixture
def client(router: RouterProc) -> openai.OpenAI:
    return openai.OpenAI(base_url=router.base_url, api_key=CLIENT_KEY, max_retries=0, timeout=20)


@pytest.fixture
def aclient(router: RouterProc) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(
        base_url=router.base_url, api_key=CLIENT_KEY, max_retries=0, timeout=20
    )


def check_stream(chunks: list[dict], alias: str, *, usage: bool) -> str:
    """Assert the shape of a chat chunk stream; return the joined content."""
    assert chunks, "no chunks"
    for c in chunks:
        validate("CreateChatCompletionStreamResponse", c)
        assert c["model"] == alias
        assert c["object"] == "chat.completion.chunk"
    assert chunks[0]["choices"][0]["delta"].get("role") == "assistant"
    finishing = [c for c in chunks if c["choices"] and c["choices"][0].get("finish_reason")]
    assert len(finishing) == 1
    body = chunks[:-1] if usage else chunks
    assert finishing[0] is body[-1], "finish_reason must be on the last choice chunk"
    if usage:
        assert chunks[-1]["choices"] == []
        assert chunks[-1]["usage"]["total_tokens"] > 0
        assert all(c.get("usage") is None for c in chunks[:-1])
    else:
        assert all(c.get("usage") is None for c in chunks)
    return "".join(c["choices"][0]["delta"].get("content") or "" for c in body)


def test_chat_non_stream_rewrites_model_and_uses_backend_key(
    client: openai.OpenAI, upstream: FakeUpstream
) -> None:
    upstream.clear()
    r = client.chat.completions.create(
        model="echo",
        messages=MSGS,
        extra_body={
            "tools_custom": {"x": [1, 2.5, None]},
            "response_format": {"type": "text"},
            "logprobs": False,
        },
    )
    validate("CreateChatCompletionResponse", r.model_dump(exclude_unset=True))
    assert r.model == "echo"
    assert r.choices[0].message.content == "echo: hello there"
    assert r.choices[0].finish_reason == "stop"
    assert (
        r.usage is not None
        and r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    )
    sent = upstream.requests[-1]
    assert sent["json"]["model"] == "fake-echo"
    assert sent["headers"]["authorization"] == f"Bearer {UPSTREAM_KEY}"
    assert CLIENT_KEY not in json.dumps(sent["headers"])
    # Unknown fields pass through untouched.
    assert sent["json"]["tools_custom"] == {"x": [1, 2.5, None]}
    assert sent["json"]["response_format"] == {"type": "text"}
    assert sent["json"]["messages"] == MSGS


@pytest.mark.parametrize("usage", [True, False])
def test_chat_stream_chunks(client: openai.OpenAI, usage: bool) -> None:
    opts = {"include_usage": True} if usage else None
    stream = client.chat.completions.create(
        model="echo", messages=MSGS, stream=True, **({"stream_options": opts} if opts else {})
    )
    chunks = [c.model_dump(exclude_unset=True) for c in stream]
    assert check_stream(chunks, "echo", usage=usage) == "echo: hello there"


async def test_async_client_stream_and_whole(aclient: openai.AsyncOpenAI) -> None:
    whole = await aclient.chat.completions.create(model="echo", messages=MSGS)
    stream = await aclient.chat.completions.create(
        model="echo", messages=MSGS, stream=True, stream_options={"include_usage": True}
    )
    chunks = [c.model_dump(exclude_unset=True) async for c in stream]
    assert check_stream(chunks, "echo", usage=True) == whole.choices[0].message.content
    assert chunks[-1]["usage"] == whole.usage.model_dump(exclude_unset=True)  # type: ignore[union-attr]


async def test_raw_sse_framing(router: RouterProc) -> None:
    async with (
        aiohttp.ClientSession() as s,
        s.post(
            router.base_url + "/chat/completions",
            json={"model": "echo", "messages": MSGS, "stream": True},
            headers={"Authorization": f"Bearer {CLIENT_KEY}", "x-request-id": "req-42"},
        ) as r,
    ):
        assert r.status == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        assert r.headers["x-request-id"] == "req-42"
        raw = (await r.read()).decode()
    events = raw.split("\n\n")
    assert events[-1] == "" and events[-2] == "data: [DONE]"
    assert all(e.startswith("data: ") for e in events[:-1])
    assert raw.count("[DONE]") == 1


def test_split_sse_lines_and_utf8(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(model="split", messages=MSGS, stream=True)
    chunks = [c.model_dump(exclude_unset=True) for c in stream]
    assert check_stream(chunks, "split", usage=False) == "echo: hello there — café 😀"


def test_relay_of_awkward_streams(client: openai.OpenAI) -> None:
    """Events cut every 5 bytes, "[DONE]" inside content, a chunk naming another model."""
    stream = client.chat.completions.create(model="tricky", messages=MSGS, stream=True,
                                            stream_options={"include_usage": True})
    chunks = [c.model_dump(exclude_unset=True) for c in stream]
    assert check_stream(chunks, "tricky", usage=True) == " [DONE]  otherecho: hello there"


def test_glob_aliases_most_specific_wins(client: openai.OpenAI, upstream: FakeUpstream) -> None:
    upstream.clear()
    a = client.chat.completions.create(model="gpt-3.5-turbo", messages=MSGS)
    assert a.model == "gpt-3.5-turbo" and upstream.requests[-1]["json"]["model"] == "fake-echo"
    b = client.chat.completions.create(model="gpt-4o", messages=MSGS)
    assert b.model == "gpt-4o" and upstream.requests[-1]["json"]["model"] == "fake-split"
    # A pattern without backend_model forwards the client's name unchanged.
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="fake-error-400", messages=MSGS)
    assert upstream.requests[-1]["json"]["model"] == "fake-error-400"
    assert e.value.body["message"] == "fake upstream error 400"  # type: ignore[index]


async def test_default_model_when_none_named(router: RouterProc) -> None:
    async with (
        aiohttp.ClientSession() as s,
        s.post(
            router.base_url + "/chat/completions",
            json={"messages": MSGS},
            headers={"Authorization": f"Bearer {CLIENT_KEY}"},
        ) as r,
    ):
        body = await r.json()
    assert r.status == 200, body
    validate("CreateChatCompletionResponse", body)
    assert body["model"] == "echo"


def test_completions_whole_and_stream(client: openai.OpenAI) -> None:
    whole = client.completions.create(model="echo", prompt="say hi")
    validate("CreateCompletionResponse", whole.model_dump(exclude_unset=True))
    assert whole.model == "echo" and whole.choices[0].text == "echo: say hi"
    stream = client.completions.create(
        model="echo", prompt="say hi", stream=True, stream_options={"include_usage": True}
    )
    chunks = [c.model_dump(exclude_unset=True) for c in stream]
    for c in chunks:
        assert c["model"] == "echo"
    # The spec has no chunk schema for legacy completions; chunks reuse the response schema,
    # which only fits the finishing chunk (others carry finish_reason null, as OpenAI sends).
    final = [c for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    assert len(final) == 1
    validate("CreateCompletionResponse", {k: v for k, v in final[0].items() if v is not None})
    assert "".join(c["choices"][0]["text"] for c in chunks if c["choices"]) == "echo: say hi"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["total_tokens"] > 0


def test_embeddings_float_and_base64(client: openai.OpenAI, upstream: FakeUpstream) -> None:
    f = client.embeddings.create(model="embed", input=["a", "bb"], encoding_format="float")
    validate("CreateEmbeddingResponse", f.model_dump(exclude_unset=True))
    assert f.model == "embed" and len(f.data) == 2 and len(f.data[0].embedding) == 8
    # The official client asks for base64 by default and decodes it itself.
    b = client.embeddings.create(model="embed", input=["a", "bb"])
    assert upstream.requests[-1]["json"]["encoding_format"] == "base64"
    assert [round(x, 5) for x in b.data[1].embedding] == [round(x, 5) for x in f.data[1].embedding]


def test_stream_client_on_non_streaming_upstream(
    client: openai.OpenAI, upstream: FakeUpstream
) -> None:
    upstream.clear()
    stream = client.chat.completions.create(
        model="echo-nostream", messages=MSGS, stream=True, stream_options={"include_usage": True}
    )
    chunks = [c.model_dump(exclude_unset=True) for c in stream]
    assert upstream.requests[-1]["json"]["stream"] is False
    assert check_stream(chunks, "echo-nostream", usage=True) == "echo: hello there"
    roles = [c for c in chunks if c["choices"] and c["choices"][0]["delta"].get("role")]
    assert len(roles) == 1


def test_whole_client_on_always_streaming_upstream(
    client: openai.OpenAI, upstream: FakeUpstream
) -> None:
    upstream.clear()
    r = client.chat.completions.create(model="echo-always", messages=MSGS, max_tokens=1)
    sent = upstream.requests[-1]["json"]
    assert sent["stream"] is True and sent["stream_options"] == {"include_usage": True}
    validate("CreateChatCompletionResponse", r.model_dump(exclude_unset=True))
    assert r.model == "echo-always"
    assert r.choices[0].message.content == "echo:"
    assert r.choices[0].finish_reason == "length"
    assert r.usage is not None and r.usage.completion_tokens == 1


@pytest.mark.parametrize(
    ("model", "status", "exc"),
    [
        ("fake-error-400", 400, openai.BadRequestError),
        ("fake-error-404", 404, openai.NotFoundError),
        ("fake-error-429", 429, openai.RateLimitError),
        ("fake-error-500", 502, openai.InternalServerError),
        ("fake-error-503", 503, openai.InternalServerError),
        ("fake-error-401", 502, openai.InternalServerError),
        ("fake-error-text", 502, openai.InternalServerError),
        ("bad-json", 502, openai.InternalServerError),
        ("dead", 502, openai.InternalServerError),
        ("hang", 504, openai.InternalServerError),
        ("die", 502, openai.InternalServerError),
    ],
)
def test_upstream_failures_become_openai_errors(
    client: openai.OpenAI, router: RouterProc, model: str, status: int, exc: type[Exception]
) -> None:
    with pytest.raises(exc) as e:
        client.chat.completions.create(model=model, messages=MSGS)
    err: openai.APIStatusError = e.value  # type: ignore[assignment]
    assert err.status_code == status
    validate("ErrorResponse", err.response.json())
    if status == 429:
        assert err.response.headers.get("retry-after")
    if model == "fake-error-401":
        # The upstream's words about our key are not relayed (they may quote part of it).
        assert "fake upstream error" not in err.response.text
    assert UPSTREAM_KEY not in err.response.text
    # Still serving.
    assert client.chat.completions.create(model="echo", messages=MSGS).choices


def test_upstream_dying_mid_stream_gives_error_event_and_done(router: RouterProc) -> None:
    import urllib.request

    req = urllib.request.Request(
        router.base_url + "/chat/completions",
        data=json.dumps({"model": "die", "messages": MSGS, "stream": True}).encode(),
        headers={"Authorization": f"Bearer {CLIENT_KEY}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=10) as r:
        events = r.read().decode().split("\n\n")
    payloads = [e.removeprefix("data: ") for e in events if e]
    assert payloads[-1] == "[DONE]"
    err = json.loads(payloads[-2])
    validate("ErrorResponse", err)
    assert err["error"]["code"] == "bad_gateway"
    chunks = [json.loads(p) for p in payloads[:-2]]
    assert chunks and all(c["model"] == "die" for c in chunks)


def test_first_chunk_is_not_buffered(client: openai.OpenAI) -> None:
    t0 = time.monotonic()
    arrivals = []
    for c in client.chat.completions.create(model="slow", messages=MSGS, stream=True):
        if c.choices and c.choices[0].delta.content:
            arrivals.append(time.monotonic() - t0)
    # The fake sleeps 0.3 s before each content chunk: chunks must arrive spread out, as sent.
    assert len(arrivals) >= 4
    assert arrivals[-1] - arrivals[0] > 0.3 * (len(arrivals) - 2)


def test_models_list_respects_key_scope(router: RouterProc) -> None:
    full = openai.OpenAI(base_url=router.base_url, api_key=CLIENT_KEY, max_retries=0)
    scoped = openai.OpenAI(base_url=router.base_url, api_key=SCOPED_KEY, max_retries=0)
    ids = [m.id for m in full.models.list()]
    assert ids[:3] == ["echo", "echo-nostream", "echo-always"] and "dead" in ids
    assert not any("*" in i for i in ids)
    assert sorted(m.id for m in scoped.models.list()) == ["echo", "echo-always", "echo-nostream"]
    m = full.models.retrieve("echo")
    validate("Model", m.model_dump())
    with pytest.raises(openai.NotFoundError):
        scoped.models.retrieve("dead")
    with pytest.raises(openai.NotFoundError):
        scoped.chat.completions.create(model="split", messages=MSGS)
    assert scoped.chat.completions.create(model="echo", messages=MSGS).model == "echo"


def test_a_model_id_is_percent_decoded_once(router: RouterProc) -> None:
    """/v1/models/{id} takes the id as the server decoded it: %2F is a slash, %252F the three
    characters %2F (a wildcard alias answers any name it matches with that name)."""
    full = openai.OpenAI(base_url=router.base_url, api_key=CLIENT_KEY, max_retries=0)
    for path, want in (("gpt-a%2Fb", "gpt-a/b"), ("gpt-a%252Fb", "gpt-a%2Fb")):
        got = full.get(f"/models/{path}", cast_to=openai.types.Model)
        assert got.id == want, path

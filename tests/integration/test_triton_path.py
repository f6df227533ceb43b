"""The Triton gRPC path end to end: official client -> router -> real Triton with mock models."""

from __future__ import annotations

import asyncio
import base64
import json
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import openai
import pytest

from tests.support.openapi import validate
from tests.support.procs import free_port
from tests.support.router import RouterProc, run_router
from tests.support.triton import TritonServer, run_triton

pytestmark = pytest.mark.triton

REPO = Path(__file__).resolve().parents[1] / "triton_models"
FULL = "Hello, world! Café 😀 The end."
MSGS = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Say hello"}]
CHATML = (
    "<|im_start|>system\nYou are terse.<|im_end|>\n<|im_start|>user\nSay hello<|im_end|>\n"
    "<|im_start|>assistant\n"
)
MODELS = [
    "trtllm_ensemble",
    "trtllm_bls",
    "vllm_model",
    "trtllm_nonstream",
    "trtllm_echo",
    "embed_model",
    "error_model",
    "error_mid_stream",
    "slow_model",
    "cancel_model",
]


@pytest.fixture(scope="module")
def cancel_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cancel") / "cancel.jsonl"


@pytest.fixture(scope="module")
def triton(tmp_path_factory: pytest.TempPathFactory, cancel_log: Path) -> Iterator[TritonServer]:
    tmp = tmp_path_factory.mktemp("triton")
    with run_triton(
        REPO, log=tmp / "triton.log", models=MODELS, env={"AIROUTER_CANCEL_LOG": str(cancel_log)}
    ) as server:
        yield server


@pytest.fixture(scope="module")
def router(triton: TritonServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RouterProc]:
    models = {
        "ens": "trtllm_ensemble",
        "bls": "trtllm_bls",
        "vllm": "vllm_model",
        "nonstream": "trtllm_nonstream",
        "echo": "trtllm_echo",
        "err": "error_model",
        "err-mid": "error_mid_stream",
        "slow": "slow_model",
        "cancel": "cancel_model",
        "missing": "no_such_model",
    }
    cfg = f"""
[server]
api_keys = ["sk-t"]

[backends.triton]
type = "triton"
url = "{triton.grpc_url}"
idle_timeout = 5

[backends.triton-down]
type = "triton"
url = "127.0.0.1:{free_port()}"
connect_timeout = 1

[models.embed]
backend = "triton"
backend_model = "embed_model"

[models.down]
backend = "triton-down"
prompt_format = "chatml"
"""
    for alias, name in models.items():
        cfg += f'\n[models.{alias}]\nbackend = "triton"\nbackend_model = "{name}"\n'
        cfg += 'prompt_format = "chatml"\n'
    with run_router(cfg, tmp_path_factory.mktemp("router")) as r:
        yield r


@pytest.fixture
def client(router: RouterProc) -> openai.OpenAI:
    return openai.OpenAI(base_url=router.base_url, api_key="sk-t", max_retries=0, timeout=30)


def collect(stream: openai.Stream, alias: str, usage: bool) -> tuple[str, str, list[dict]]:
    chunks = [c.model_dump(exclude_unset=True) for c in stream]
    for c in chunks:
        validate("CreateChatCompletionStreamResponse", c)
        assert c["model"] == alias
        assert len({c["id"] for c in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    finishing = [c for c in chunks if c["choices"] and c["choices"][0].get("finish_reason")]
    assert len(finishing) == 1
    body = chunks[:-1] if usage else chunks
    assert body[-1] is finishing[0]
    if usage:
        assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["total_tokens"] > 0
        assert sum(1 for c in chunks if c.get("usage")) == 1
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in body)
    assert "\ufffd" not in text
    return text, finishing[0]["choices"][0]["finish_reason"], chunks


@pytest.mark.parametrize("alias", ["ens", "bls", "vllm", "nonstream", "echo"])
def test_stream_equals_whole(client: openai.OpenAI, alias: str) -> None:
    whole = client.chat.completions.create(model=alias, messages=MSGS)
    validate("CreateChatCompletionResponse", whole.model_dump(exclude_unset=True))
    assert whole.model == alias
    assert whole.choices[0].message.content == FULL
    assert whole.choices[0].finish_reason == "stop"
    text, finish, chunks = collect(
        client.chat.completions.create(
            model=alias, messages=MSGS, stream=True, stream_options={"include_usage": True}
        ),
        alias,
        True,
    )
    assert text == FULL and finish == "stop"
    assert whole.usage is not None
    assert chunks[-1]["usage"] == whole.usage.model_dump(exclude_unset=True)
    assert whole.usage.completion_tokens == 13
    assert whole.usage.prompt_tokens == len(CHATML.split())


@pytest.mark.parametrize("alias", ["ens", "bls", "vllm", "nonstream"])
def test_max_tokens_gives_length(client: openai.OpenAI, alias: str) -> None:
    whole = client.chat.completions.create(model=alias, messages=MSGS, max_completion_tokens=5)
    assert whole.choices[0].message.content == "Hello, world!"
    assert whole.choices[0].finish_reason == "length"
    text, finish, _ = collect(
        client.chat.completions.create(model=alias, messages=MSGS, max_tokens=5, stream=True),
        alias,
        False,
    )
    assert (text, finish) == ("Hello, world!", "length")


@pytest.mark.parametrize("alias", ["ens", "bls", "vllm", "nonstream", "echo"])
@pytest.mark.parametrize(
    ("stop", "want"),
    [
        (["wor"], "Hello, "),
        ([" Caf"], "Hello, world!"),
        (["é"], "Hello, world! Caf"),
        (["😀", "world"], "Hello, "),
        (["xyz", "end."], "Hello, world! Café 😀 The "),
        ("H", ""),
    ],
)
def test_stop_sequences_cut_exactly(
    client: openai.OpenAI, alias: str, stop: list[str] | str, want: str
) -> None:
    whole = client.chat.completions.create(model=alias, messages=MSGS, stop=stop)
    assert whole.choices[0].message.content == want
    assert whole.choices[0].finish_reason == "stop"
    text, finish, _ = collect(
        client.chat.completions.create(model=alias, messages=MSGS, stop=stop, stream=True),
        alias,
        False,
    )
    assert (text, finish) == (want, "stop")


def test_chat_prompt_is_rendered_whole(client: openai.OpenAI) -> None:
    msgs = [
        {"role": "system", "content": "S"},
        {"role": "user", "content": "[[echo]] U1"},
        {"role": "assistant", "content": "A1"},
        {"role": "user", "content": [{"type": "text", "text": "U2"}]},
    ]
    prompt = (
        "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\n[[echo]] U1<|im_end|>\n"
        "<|im_start|>assistant\nA1<|im_end|>\n<|im_start|>user\nU2<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    # The mock answers with the prompt itself; the router cuts at ChatML's end token.
    r = client.chat.completions.create(model="ens", messages=msgs, max_tokens=500)
    assert r.choices[0].message.content == prompt.split("<|im_end|>")[0]
    assert r.choices[0].finish_reason == "stop"


def test_completions_send_prompt_as_given(client: openai.OpenAI) -> None:
    prompt = "[[echo]] raw <b>prompt</b> — ok"
    r = client.completions.create(model="ens", prompt=prompt, max_tokens=100)
    validate("CreateCompletionResponse", r.model_dump(exclude_unset=True))
    assert r.choices[0].text == prompt and r.model == "ens"
    chunks = list(
        client.completions.create(model="ens", prompt=prompt, max_tokens=100, stream=True)
    )
    assert "".join(c.choices[0].text for c in chunks if c.choices) == prompt
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"


def test_embeddings(client: openai.OpenAI) -> None:
    texts = ["hello", "bb", "Café"]
    want = [[(sum(t.encode()) * (i + 1)) % 97 / 97.0 for i in range(8)] for t in texts]
    f = client.embeddings.create(model="embed", input=texts, encoding_format="float")
    validate("CreateEmbeddingResponse", f.model_dump(exclude_unset=True))
    assert f.model == "embed"
    assert [[round(x, 5) for x in d.embedding] for d in f.data] == [
        [round(x, 5) for x in w] for w in want
    ]
    b = client.embeddings.create(model="embed", input="Café")  # base64 on the wire
    assert [round(x, 5) for x in b.data[0].embedding] == [round(x, 5) for x in want[2]]


def test_errors(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="err", messages=MSGS)
    assert "mock failure: invalid input" in e.value.message
    validate("ErrorResponse", e.value.response.json())
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="ens", messages=MSGS, temperature=1.9)
    assert "temperature too high" in e.value.message
    with pytest.raises(openai.InternalServerError) as e2:
        client.chat.completions.create(model="missing", messages=MSGS)
    assert e2.value.status_code == 502 and "no_such_model" in e2.value.message
    with pytest.raises(openai.InternalServerError) as e2:
        client.chat.completions.create(model="down", messages=MSGS)
    assert e2.value.status_code == 502
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="ens", messages=MSGS, logit_bias={"1": 5})
    assert e.value.body["param"] == "logit_bias"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError):
        client.embeddings.create(model="ens", input="x")
    # Values the model's tensor types cannot hold: 400 naming the problem, not a 500.
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="ens", messages=MSGS, seed=-1)
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="ens", messages=MSGS, max_tokens=3_000_000_000)
    assert client.chat.completions.create(model="ens", messages=MSGS).choices[0].message.content


def test_error_mid_stream_is_an_event_then_done(router: RouterProc) -> None:
    import urllib.request

    req = urllib.request.Request(
        router.base_url + "/chat/completions",
        data=json.dumps({"model": "err-mid", "messages": MSGS, "stream": True}).encode(),
        headers={"Authorization": "Bearer sk-t", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=20) as r:
        events = [e for e in r.read().decode().split("\n\n") if e]
    assert events[-1] == "data: [DONE]"
    err = json.loads(events[-2].removeprefix("data: "))
    validate("ErrorResponse", err)
    # An engine's failure text stays in the router's log; the client gets the router's words.
    assert err["error"]["code"] == "backend_failed"
    assert "mock failure" not in err["error"]["message"]
    # Logged by the worker's log thread: give it a moment.
    deadline = time.monotonic() + 5
    while "mock failure mid-stream" not in router.log_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "mock failure mid-stream" in router.log_text()
    chunks = [json.loads(e.removeprefix("data: ")) for e in events[:-2]]
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == "Hello, wor"


async def test_client_disconnect_cancels_model(router: RouterProc, cancel_log: Path) -> None:
    marker = f"cancel-me-{time.time()}"
    async with aiohttp.ClientSession() as s:
        r = await s.post(
            router.base_url + "/chat/completions",
            headers={"Authorization": "Bearer sk-t"},
            json={
                "model": "cancel",
                "stream": True,
                "max_tokens": 2000,
                "messages": [{"role": "user", "content": marker}],
            },
        )
        seen = 0
        async for line in r.content:
            if b'"content":"' in line and b'"role"' not in line:
                seen += 1
                if seen == 3:
                    break
        closed_at = time.time()
        r.close()
    deadline = time.monotonic() + 5
    cancelled = None
    while time.monotonic() < deadline and cancelled is None:
        await asyncio.sleep(0.05)
        for line in cancel_log.read_text().splitlines():  # noqa: ASYNC240 - tiny local file
            rec = json.loads(line)
            if marker in rec.get("prompt", "") and "cancelled_at" in rec:
                cancelled = rec["cancelled_at"]
    assert cancelled is not None, "the model never saw the cancellation"
    assert cancelled - closed_at < 0.2


def test_slow_stream_arrives_progressively(client: openai.OpenAI) -> None:
    t0 = time.monotonic()
    times = []
    for c in client.chat.completions.create(model="slow", messages=MSGS, stream=True, max_tokens=6):
        if c.choices and c.choices[0].delta.content:
            times.append(time.monotonic() - t0)
    assert len(times) >= 4 and times[-1] - times[0] > 0.2 * (len(times) - 2)


def test_embedding_base64_roundtrip_raw(router: RouterProc) -> None:
    import urllib.request

    req = urllib.request.Request(
        router.base_url + "/embeddings",
        data=json.dumps({"model": "embed", "input": "hi", "encoding_format": "base64"}).encode(),
        headers={"Authorization": "Bearer sk-t", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=20) as r:
        body = json.loads(r.read())
    raw = base64.b64decode(body["data"][0]["embedding"])
    vals = struct.unpack("<8f", raw)
    assert round(vals[1], 5) == round((sum(b"hi") * 2) % 97 / 97.0, 5)


def test_metrics_count_triton_requests_and_tokens(client: openai.OpenAI, router: RouterProc,
                                                  triton: TritonServer) -> None:
    from tests.integration.test_observability import scrape, total

    before = scrape(router)
    client.chat.completions.create(model="vllm", messages=MSGS)
    list(client.chat.completions.create(model="vllm", messages=MSGS, stream=True))
    # Metrics are recorded just after the last byte is sent: let the router catch up.
    deadline = time.monotonic() + 3
    after = scrape(router)
    while total(after, "airouter_requests_total", model="vllm") - total(
            before, "airouter_requests_total", model="vllm") < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
        after = scrape(router)

    def delta(name: str, **labels: str) -> float:
        return total(after, name, **labels) - total(before, name, **labels)

    print({k: v for k, v in after.items() if k[0] == "airouter_requests_total"})
    assert delta("airouter_requests_total", model="vllm", status="200",
                 node=triton.grpc_url, backend="triton") == 2
    assert delta("airouter_completion_tokens_total", model="vllm") == 26
    assert delta("airouter_prompt_tokens_total", model="vllm") == 2 * len(CHATML.split())
    assert delta("airouter_time_to_first_token_seconds_count", model="vllm") == 1
    assert delta("airouter_inter_token_latency_seconds_count", model="vllm") >= 5

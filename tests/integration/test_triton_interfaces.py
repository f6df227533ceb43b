"""Triton model interfaces through the router: completions `echo`, embeddings (FP16 outputs,
refused tensor types, the vLLM backend's embedding_request interface), and model config
look-ups against dead and hanging nodes."""

from __future__ import annotations

import base64
import json
import socket
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import openai
import pytest

from tests.support.openapi import validate
from tests.support.procs import free_port
from tests.support.router import RouterProc, run_router
from tests.support.triton import TritonServer, run_triton

pytestmark = pytest.mark.triton

REPO = Path(__file__).resolve().parents[1] / "triton_models"
FULL = "Hello, world! Café 😀 The end."
MODELS = [
    "trtllm_ensemble",
    "vllm_model",
    "embed_model",
    "embed_fp16",
    "embed_fp16_input",
    "vllm_embed",
    "vllm_embed_plain",
]


def formula(text: bytes, dim: int = 8) -> list[float]:
    """The mocks' embedding, written out again so the test pins it."""
    return [(sum(text) * (i + 1)) % 97 / 97.0 for i in range(dim)]


def f32(values: list[float]) -> list[float]:
    return [float(np.float32(v)) for v in values]


def from_b64(s: str) -> list[float]:
    raw = base64.b64decode(s)
    return list(struct.unpack(f"<{len(raw) // 4}f", raw))


@pytest.fixture(scope="module")
def triton(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonServer]:
    tmp = tmp_path_factory.mktemp("triton")
    with run_triton(REPO, log=tmp / "triton.log", models=MODELS) as server:
        yield server


@pytest.fixture(scope="module")
def hanging_port() -> Iterator[int]:
    """A node that accepts TCP connections and never says a word (a hung server)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    try:
        yield sock.getsockname()[1]
    finally:
        sock.close()


@pytest.fixture(scope="module")
def later_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def router(
    triton: TritonServer,
    hanging_port: int,
    later_port: int,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[RouterProc]:
    cfg = f"""
[server]
api_keys = ["sk-t"]

[backends.triton]
type = "triton"
url = "{triton.grpc_url}"

[backends.hang]
type = "triton"
urls = [{{ url = "127.0.0.1:{hanging_port}", weight = 0.001 }}, "{triton.grpc_url}"]
health_interval = 0

[backends.hang-only]
type = "triton"
url = "127.0.0.1:{hanging_port}"
health_interval = 0
eject_after = 1000000

[backends.later]
type = "triton"
url = "127.0.0.1:{later_port}"
health_interval = 0
eject_after = 1000000

[models.ens]
backend = "triton"
backend_model = "trtllm_ensemble"

[models.vllm]
backend = "triton"
backend_model = "vllm_model"

[models.embed]
backend = "triton"
backend_model = "embed_model"

[models.fp16]
backend = "triton"
backend_model = "embed_fp16"

[models.fp16-input]
backend = "triton"
backend_model = "embed_fp16_input"
interface = "embedding"

[models.vembed]
backend = "triton"
backend_model = "vllm_embed"

[models.vembed-plain]
backend = "triton"
backend_model = "vllm_embed_plain"

# Glob aliases are not looked up at start-up: the first look-up meets a fresh channel to the
# hung node, still connecting (gRPC waits on it up to each call's deadline).
[models."mixed-*"]
backend = "hang"
backend_model = "vllm_model"

[models."hung-*"]
backend = "hang-only"
backend_model = "vllm_model"

[models.later]
backend = "later"
backend_model = "vllm_model"
"""
    with run_router(cfg, tmp_path_factory.mktemp("router")) as r:
        yield r


@pytest.fixture
def client(router: RouterProc) -> openai.OpenAI:
    return openai.OpenAI(base_url=router.base_url, api_key="sk-t", max_retries=0, timeout=30)


# ---- completions echo ----


@pytest.mark.parametrize("alias", ["ens", "vllm"])
def test_echo_puts_the_prompt_first(client: openai.OpenAI, alias: str) -> None:
    prompt = "Say hello"
    r = client.completions.create(model=alias, prompt=prompt, max_tokens=50, echo=True)
    validate("CreateCompletionResponse", r.model_dump(exclude_unset=True))
    assert r.choices[0].text == prompt + FULL
    assert r.choices[0].finish_reason == "stop"
    assert r.usage is not None and r.usage.completion_tokens == 13
    plain = client.completions.create(model=alias, prompt=prompt, max_tokens=50)
    assert plain.choices[0].text == FULL


@pytest.mark.parametrize("alias", ["ens", "vllm"])
def test_echo_streams_the_prompt_as_the_first_chunk(client: openai.OpenAI, alias: str) -> None:
    prompt = "Say hello"
    chunks = list(
        client.completions.create(
            model=alias, prompt=prompt, max_tokens=50, echo=True, stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert len({c.id for c in chunks}) == 1 and all(c.model == alias for c in chunks)
    texts = [c.choices[0].text for c in chunks if c.choices]
    assert texts[0] == prompt
    assert "".join(texts) == prompt + FULL
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 13


# ---- embeddings ----


def test_fp16_embeddings_are_decoded(client: openai.OpenAI) -> None:
    texts = ["hello world", "abc"]
    want = [[float(np.float16(v)) for v in formula(t.encode())] for t in texts]
    r = client.embeddings.create(model="fp16", input=texts, encoding_format="float")
    validate("CreateEmbeddingResponse", r.model_dump(exclude_unset=True))
    assert [d.embedding for d in r.data] == want
    r = client.embeddings.create(model="fp16", input=texts, encoding_format="base64")
    assert [from_b64(d.embedding) for d in r.data] == want  # type: ignore[arg-type]


def test_a_model_with_unusable_tensors_is_refused_by_name(
    client: openai.OpenAI, router: RouterProc
) -> None:
    assert "model embed_fp16_input cannot serve embeddings" in router.log_text()  # at start-up
    with pytest.raises(openai.APIStatusError) as e:
        client.embeddings.create(model="fp16-input", input="x")
    assert e.value.status_code == 502
    err = e.value.body
    assert isinstance(err, dict) and err["code"] == "unsupported_model"
    assert "embed_fp16_input" in err["message"] and "FP16" in err["message"]


def test_fp32_embeddings_and_dimensions(client: openai.OpenAI) -> None:
    r = client.embeddings.create(
        model="embed", input=["hello world"], dimensions=8, encoding_format="float"
    )
    assert r.data[0].embedding == f32(formula(b"hello world"))
    with pytest.raises(openai.BadRequestError) as e:
        client.embeddings.create(model="embed", input="x", dimensions=4)
    assert isinstance(e.value.body, dict) and e.value.body["param"] == "dimensions"


def test_vllm_embeddings_float_base64_usage(client: openai.OpenAI) -> None:
    texts = ["hello world", "one two three", "x"]
    # The SDK asks for base64 unless told otherwise: ask for floats to see them unrounded.
    r = client.embeddings.create(model="vembed", input=texts, encoding_format="float")
    validate("CreateEmbeddingResponse", r.model_dump(exclude_unset=True))
    assert r.model == "vembed" and [d.index for d in r.data] == [0, 1, 2]
    assert [d.embedding for d in r.data] == [formula(t.encode()) for t in texts]
    assert r.usage.prompt_tokens == 2 + 3 + 1 and r.usage.total_tokens == 6
    r = client.embeddings.create(model="vembed", input=texts, encoding_format="base64")
    assert [from_b64(d.embedding) for d in r.data] == [  # type: ignore[arg-type]
        f32(formula(t.encode())) for t in texts
    ]
    assert r.usage.prompt_tokens == 6


def test_vllm_embeddings_dimensions_and_token_ids(client: openai.OpenAI) -> None:
    r = client.embeddings.create(
        model="vembed", input="hello world", dimensions=3, encoding_format="float"
    )
    assert r.data[0].embedding == formula(b"hello world", 3)
    r = client.embeddings.create(
        model="vembed", input=[[104, 105], [1, 2, 3]], encoding_format="float"
    )
    assert [d.embedding for d in r.data] == [formula(bytes([104, 105])), formula(bytes([1, 2, 3]))]
    assert r.usage.prompt_tokens == 5


def test_vllm_embeddings_over_modelinfer(client: openai.OpenAI) -> None:
    texts = ["a b", "c"]
    r = client.embeddings.create(model="vembed-plain", input=texts, encoding_format="float")
    assert [d.embedding for d in r.data] == [formula(t.encode()) for t in texts]
    assert r.usage.prompt_tokens == 0  # the model does not take return_num_input_tokens


def test_many_vllm_embeddings_in_one_request(client: openai.OpenAI) -> None:
    texts = [f"text number {i}" for i in range(80)]
    r = client.embeddings.create(model="vembed", input=texts)  # base64, decoded by the SDK
    assert [d.embedding for d in r.data] == [f32(formula(t.encode())) for t in texts]
    assert r.usage.prompt_tokens == 3 * 80


# ---- model config look-ups ----


def test_lookups_against_a_hung_node_do_not_queue(router: RouterProc) -> None:
    """Every request waiting on one look-up; the failure is answered from memory."""
    results: list[tuple[int, float]] = []

    def one() -> None:
        c = openai.OpenAI(base_url=router.base_url, api_key="sk-t", max_retries=0, timeout=60)
        start = time.monotonic()
        try:
            c.completions.create(model="hung-1", prompt="hi", max_tokens=2)
            results.append((200, time.monotonic() - start))
        except openai.APIStatusError as e:
            results.append((e.status_code, time.monotonic() - start))

    start = time.monotonic()
    threads = [threading.Thread(target=one) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    elapsed = time.monotonic() - start
    assert [s for s, _ in results] == [502] * 8
    assert elapsed < 4.5, results  # one look-up (health_timeout 2 s), not 8 x connect_timeout
    start = time.monotonic()
    one()
    assert results[-1][0] == 502 and time.monotonic() - start < 1.5  # remembered


def test_a_hung_node_does_not_delay_lookups_on_a_live_one(client: openai.OpenAI) -> None:
    start = time.monotonic()
    r = client.completions.create(model="mixed-1", prompt="hi", max_tokens=5)
    assert r.choices[0].text == "Hello, world!"
    assert time.monotonic() - start < 3


def test_a_node_that_comes_back_is_used_promptly(
    client: openai.OpenAI, later_port: int, tmp_path: Path
) -> None:
    with pytest.raises(openai.APIStatusError) as e:
        client.completions.create(model="later", prompt="hi", max_tokens=5)
    assert e.value.status_code == 502
    with run_triton(REPO, log=tmp_path / "later.log", models=["vllm_model"],
                    grpc_port=later_port):
        deadline = time.monotonic() + 5
        while True:
            try:
                r = client.completions.create(model="later", prompt="hi", max_tokens=5)
                break
            except openai.APIStatusError:
                assert time.monotonic() < deadline, "the node was not used again within 5 s"
                time.sleep(0.2)
        assert r.choices[0].text == "Hello, world!"


def test_other_triton_models_still_serve(client: openai.OpenAI) -> None:
    r = client.completions.create(model="ens", prompt="hi", max_tokens=5)
    assert r.choices[0].text == "Hello, world!"
    assert json.loads(r.model_dump_json())["model"] == "ens"

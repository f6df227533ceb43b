"""Real models, nobody's mocks: SmolLM2 behind llama.cpp's OpenAI server and inside Triton."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import openai
import pytest

from tests.support.llama_server import LlamaServer, run_llama_server
from tests.support.openapi import validate
from tests.support.router import RouterProc, run_router
from tests.support.triton import TritonServer, run_triton

pytestmark = pytest.mark.llm

REPO = Path(__file__).resolve().parents[1] / "triton_models"
MSGS = [{"role": "user", "content": "What is the capital of France? Answer in one word."}]


@pytest.fixture(scope="module")
def llama(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LlamaServer]:
    with run_llama_server(log=tmp_path_factory.mktemp("llama") / "llama.log") as server:
        yield server


@pytest.fixture(scope="module")
def triton(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonServer]:
    tmp = tmp_path_factory.mktemp("triton-llm")
    with run_triton(REPO, log=tmp / "triton.log", models=["smollm2"]) as server:
        yield server


@pytest.fixture(scope="module")
def router(llama: LlamaServer, triton: TritonServer,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[RouterProc]:
    cfg = f"""
[server]
api_keys = ["sk-real"]

[backends.llama]
type = "openai"
base_url = "{llama.url}"

[backends.triton]
type = "triton"
url = "{triton.grpc_url}"

[models.smol-http]
backend = "llama"
backend_model = "smollm2"

[models.smol-triton]
backend = "triton"
backend_model = "smollm2"
prompt_format = "chatml"
max_tokens = 32
"""
    with run_router(cfg, tmp_path_factory.mktemp("router-llm")) as r:
        yield r


@pytest.fixture
def client(router: RouterProc) -> openai.OpenAI:
    return openai.OpenAI(base_url=router.base_url, api_key="sk-real", max_retries=0, timeout=60)


@pytest.mark.parametrize("alias", ["smol-http", "smol-triton"])
def test_real_model_stream_and_whole(client: openai.OpenAI, alias: str) -> None:
    whole = client.chat.completions.create(model=alias, messages=MSGS, max_tokens=16,
                                           temperature=0)
    validate("CreateChatCompletionResponse", whole.model_dump(exclude_unset=True))
    assert whole.model == alias
    text = whole.choices[0].message.content or ""
    assert text.strip()
    assert "<|im_end|>" not in text
    assert whole.usage is not None and whole.usage.prompt_tokens > 5
    assert 0 < whole.usage.completion_tokens <= 16
    chunks = [c.model_dump(exclude_unset=True) for c in client.chat.completions.create(
        model=alias, messages=MSGS, max_tokens=16, temperature=0, stream=True,
        stream_options={"include_usage": True})]
    for c in chunks:
        validate("CreateChatCompletionStreamResponse", c)
        assert c["model"] == alias
    finishing = [c for c in chunks if c["choices"] and c["choices"][0].get("finish_reason")]
    assert len(finishing) == 1
    streamed = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks
                       if c["choices"])
    assert streamed.strip()
    if alias == "smol-triton":
        # Greedy decoding through the same server: streamed equals whole.
        assert streamed == text
        assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] > 0


async def test_async_client_on_llama(router: RouterProc) -> None:
    c = openai.AsyncOpenAI(base_url=router.base_url, api_key="sk-real", max_retries=0, timeout=60)
    r = await c.completions.create(model="smol-http", prompt="The sky is", max_tokens=8)
    validate("CreateCompletionResponse", r.model_dump(exclude_unset=True))
    assert r.model == "smol-http" and r.choices[0].text
    await c.close()


async def test_disconnect_frees_the_real_upstream(router: RouterProc) -> None:
    """llama.cpp's server runs one generation at a time: if the router did not close the
    upstream request when the client left, the next request would wait for 400 tokens."""
    async with aiohttp.ClientSession() as s:
        r = await s.post(router.base_url + "/chat/completions",
                         headers={"Authorization": "Bearer sk-real"},
                         json={"model": "smol-http", "stream": True, "max_tokens": 400,
                               "messages": [{"role": "user", "content": "Write a long story."}]})
        n = 0
        async for line in r.content:
            if line.startswith(b"data: {"):
                n += 1
                if n == 3:
                    break
        r.close()
    await asyncio.sleep(0.1)
    c = openai.AsyncOpenAI(base_url=router.base_url, api_key="sk-real", max_retries=0, timeout=60)
    t0 = time.monotonic()
    r2 = await c.chat.completions.create(model="smol-http", messages=MSGS, max_tokens=4)
    took = time.monotonic() - t0
    await c.close()
    assert r2.choices[0].message.content is not None
    # 400 tokens at ~50 tokens/s would take ~8 s; 4 tokens take well under 3 s.
    assert took < 3.0, took

"""Tools, structured outputs, reasoning, logprobs and n on Triton models, end to end: the official
openai client and LangChain -> router -> real Triton with mock models that answer in each
parser's format (tests/triton_models/README.md, "Answers by marker")."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest

from tests.support.openapi import validate
from tests.support.router import RouterProc, run_router
from tests.support.triton import TritonServer, run_triton

pytestmark = pytest.mark.triton

ROOT = Path(__file__).resolve().parents[1]
REPO = ROOT / "triton_models"
QWEN = ROOT / "data" / "templates" / "tokenizer_config.json"  # hermes-style tool template
FULL = "Hello, world! Café 😀 The end."

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string"},
                "unit": {"type": "string", "enum": ["°C", "°F"]},
            },
            "required": ["city"],
        },
    },
}
TIME = {
    "type": "function",
    "function": {
        "name": "get_time",
        "description": "Current time in a time zone.",
        "parameters": {"type": "object", "properties": {"zone": {"type": "string"}}},
    },
}
TOOLS = [WEATHER, TIME]
PARIS = {"city": "Paris", "unit": "°C"}
ZONE = {"zone": "Europe/Paris"}
MARKUP = ("<tool_call>", "</tool_call>", "<think>", "</think>", '"name"')


@pytest.fixture(scope="module")
def logs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("logs")
    return {n: tmp / f"{n}.jsonl" for n in ("guide", "cancel", "request")}


@pytest.fixture(scope="module")
def triton(
    tmp_path_factory: pytest.TempPathFactory, logs: dict[str, Path]
) -> Iterator[TritonServer]:
    with run_triton(
        REPO,
        log=tmp_path_factory.mktemp("triton") / "triton.log",
        models=["trtllm_ensemble", "trtllm_bls", "vllm_model", "cancel_model", "slow_model"],
        env={f"AIROUTER_{n.upper()}_LOG": str(path) for n, path in logs.items()},
    ) as server:
        yield server


HERMES = f'tokenizer_config = "{QWEN}"\ntool_parser = "hermes"'
MODELS = {
    # alias: (Triton model, extra keys)
    "ens": ("trtllm_ensemble", HERMES),
    "think": ("trtllm_ensemble", HERMES + '\nreasoning_parser = "qwen3"'),
    "r1": ("trtllm_ensemble", HERMES + '\nreasoning_parser = "deepseek_r1"'),
    "bls": ("trtllm_bls", HERMES),
    "vllm": ("vllm_model", HERMES),
    "vllm-so": ("vllm_model", 'prompt_format = "chatml"\nguided_decoding = "structured_outputs"'),
    "chatml-tools": ("trtllm_ensemble", 'prompt_format = "chatml"\ntool_parser = "hermes"'),
    "plain": ("trtllm_ensemble", 'prompt_format = "chatml"'),
    "noguide": ("trtllm_bls", 'prompt_format = "chatml"'),
    "cancel": ("cancel_model", 'prompt_format = "chatml"'),
    "slow": ("slow_model", 'prompt_format = "chatml"'),
    "llama": ("trtllm_ensemble", 'prompt_format = "llama3.1"\ntool_parser = "llama3_json"'),
    "mistral": ("vllm_model", 'prompt_format = "mistral"\ntool_parser = "mistral"'),
    "pythonic": ("trtllm_bls", f'tokenizer_config = "{QWEN}"\ntool_parser = "pythonic"'),
}


@pytest.fixture(scope="module")
def router(triton: TritonServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RouterProc]:
    cfg = f"""
[server]
api_keys = ["sk-t"]

[backends.triton]
type = "triton"
url = "{triton.grpc_url}"
health_interval = 0
"""
    for alias, (model, extra) in MODELS.items():
        cfg += f'\n[models."{alias}"]\nbackend = "triton"\nbackend_model = "{model}"\n{extra}\n'
    with run_router(cfg, tmp_path_factory.mktemp("router")) as r:
        yield r


@pytest.fixture
def client(router: RouterProc) -> openai.OpenAI:
    return openai.OpenAI(base_url=router.base_url, api_key="sk-t", max_retries=0, timeout=30)


def ask(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


def body_of(r: Any) -> dict[str, Any]:
    body: dict[str, Any] = r.model_dump(exclude_unset=True)
    validate("CreateChatCompletionResponse", body)
    return body


def chunks_of(stream: Any) -> list[dict[str, Any]]:
    chunks = [c.model_dump(exclude_unset=True) for c in stream]
    for c in chunks:
        validate("CreateChatCompletionStreamResponse", c)
    assert len({c["id"] for c in chunks}) == 1
    return chunks


def calls_of(message: dict[str, Any]) -> list[tuple[str, Any]]:
    return [
        (c["function"]["name"], json.loads(c["function"]["arguments"]))
        for c in message.get("tool_calls") or []
    ]


def check_call_deltas(chunks: list[dict[str, Any]], index: int = 0) -> dict[int, dict[str, Any]]:
    """OpenAI's exact streamed tool-call shape for choice `index`; the calls, reassembled."""
    calls: dict[int, dict[str, Any]] = {}
    for c in chunks:
        for ch in c["choices"]:
            if ch["index"] != index:
                continue
            for tc in ch["delta"].get("tool_calls") or []:
                if tc["index"] not in calls:
                    assert tc["id"].startswith("call_") and tc["type"] == "function"
                    assert tc["function"]["arguments"] == "" and tc["function"]["name"]
                    calls[tc["index"]] = {"id": tc["id"], "name": tc["function"]["name"],
                                          "arguments": ""}
                else:
                    assert set(tc) == {"index", "function"}
                    assert set(tc["function"]) == {"arguments"}
                    calls[tc["index"]]["arguments"] += tc["function"]["arguments"]
    assert sorted(calls) == list(range(len(calls)))
    return calls


# ---- tools ----------------------------------------------------------------------------


def test_two_calls_after_text_whole(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(
        model="ens", messages=ask("Weather and time? [[hermes]]"), tools=TOOLS  # type: ignore[arg-type]
    )
    body = body_of(r)
    choice = body["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"].strip() == "Let me check."
    assert calls_of(choice["message"]) == [("get_weather", PARIS), ("get_time", ZONE)]
    ids = [c["id"] for c in choice["message"]["tool_calls"]]
    assert all(i.startswith("call_") for i in ids) and len(set(ids)) == 2
    assert body["usage"]["completion_tokens"] > 0


@pytest.mark.parametrize("alias", ["ens", "bls", "vllm"])
def test_two_calls_streamed_in_openai_delta_shape(client: openai.OpenAI, alias: str) -> None:
    chunks = chunks_of(
        client.chat.completions.create(
            model=alias,
            messages=ask("Weather and time? [[hermes]]"),
            tools=TOOLS,  # type: ignore[arg-type]
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    raw = json.dumps(chunks, ensure_ascii=False)
    assert not any(m in raw.replace('"name": "get_', "") for m in MARKUP[:4])
    calls = check_call_deltas(chunks)
    assert [(c["name"], json.loads(c["arguments"])) for c in calls.values()] == [
        ("get_weather", PARIS),
        ("get_time", ZONE),
    ]
    content = "".join(
        c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"]
    )
    assert content.strip() == "Let me check."
    # Text first, then the calls; one finish chunk, then usage.
    first_call = next(i for i, c in enumerate(chunks)
                      if c["choices"] and c["choices"][0]["delta"].get("tool_calls"))
    assert all(not c["choices"][0]["delta"].get("content") for c in chunks[first_call:-2])
    assert chunks[-2]["choices"][0]["finish_reason"] == "tool_calls"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] > 0


async def test_async_client_streams_and_answers_a_call(router: RouterProc) -> None:
    client = openai.AsyncOpenAI(base_url=router.base_url, api_key="sk-t", max_retries=0)
    r = await client.chat.completions.create(
        model="ens", messages=ask("Weather? [[hermes-one]]"), tools=[WEATHER]  # type: ignore[arg-type, list-item]
    )
    assert r.choices[0].message.content is None
    assert calls_of(body_of(r)["choices"][0]["message"]) == [("get_weather", PARIS)]
    stream = await client.chat.completions.create(
        model="ens", messages=ask("Weather? [[hermes-one]]"), tools=[WEATHER], stream=True  # type: ignore[arg-type, list-item]
    )
    chunks = [c.model_dump(exclude_unset=True) async for c in stream]
    for c in chunks:
        validate("CreateChatCompletionStreamResponse", c)
    assert [(c["name"], json.loads(c["arguments"])) for c in check_call_deltas(chunks).values()] \
        == [("get_weather", PARIS)]
    assert not any(c["choices"][0]["delta"].get("content") for c in chunks)
    await client.close()


@pytest.mark.parametrize(
    ("alias", "marker", "want"),
    [
        ("llama", "[[llama3_json]]", [("get_weather", PARIS)]),
        ("mistral", "[[mistral]]", [("get_weather", PARIS), ("get_time", ZONE)]),
        ("pythonic", "[[pythonic]]", [("get_weather", PARIS), ("get_time", ZONE)]),
    ],
)
def test_each_tool_format_whole_and_streamed(
    client: openai.OpenAI, logs: dict[str, Path], alias: str, marker: str, want: list[Any]
) -> None:
    since = mark(logs["request"])
    r = client.chat.completions.create(
        model=alias, messages=ask(f"Weather? {marker}"), tools=TOOLS  # type: ignore[arg-type]
    )
    choice = body_of(r)["choices"][0]
    assert calls_of(choice["message"]) == want and choice["finish_reason"] == "tool_calls"
    assert not choice["message"]["content"]
    chunks = chunks_of(
        client.chat.completions.create(
            model=alias, messages=ask(f"Weather? {marker}"), tools=TOOLS, stream=True  # type: ignore[arg-type]
        )
    )
    calls = check_call_deltas(chunks)
    assert [(c["name"], json.loads(c["arguments"])) for c in calls.values()] == want
    assert not any(c["choices"][0]["delta"].get("content") for c in chunks if c["choices"])
    # A follow-up turn with the call and its result, in the format's own syntax.
    messages = [
        *ask(f"Weather? {marker}"),
        {"role": "assistant", "content": None,
         "tool_calls": [{"id": "call_abcdefghi123", "type": "function",
                         "function": {"name": "get_weather", "arguments": json.dumps(PARIS)}}]},
        {"role": "tool", "tool_call_id": "call_abcdefghi123", "content": "21 [[plain]]"},
    ]
    r = client.chat.completions.create(model=alias, messages=messages, tools=TOOLS)  # type: ignore[arg-type]
    assert r.choices[0].message.content == FULL
    if alias != "mistral":  # the vLLM mock does not log its requests
        prompts = [g["prompt"] for g in guides(logs["request"], since)]
        assert "get_time" in prompts[0] and "21 [[plain]]" in prompts[-1]


def test_history_with_calls_and_results_is_rendered(
    client: openai.OpenAI, logs: dict[str, Path]
) -> None:
    since = mark(logs["request"])
    messages = [
        *ask("Weather? [[hermes-one]]"),
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"id": "call_1", "type": "function",
                            "function": {"name": "get_weather", "arguments": json.dumps(PARIS)}}],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "21 °C [[plain]]"},
    ]
    r = client.chat.completions.create(
        model="ens", messages=messages, tools=TOOLS  # type: ignore[arg-type]
    )
    assert r.choices[0].message.content == FULL and r.choices[0].finish_reason == "stop"
    (prompt,) = [g["prompt"] for g in guides(logs["request"], since)]
    assert '<tool_call>\n{"name":"get_weather","arguments":{"city":"Paris","unit":"°C"}}' in prompt
    assert "<tool_response>\n21 °C [[plain]]\n</tool_response>" in prompt
    assert '"name": "get_time"' in prompt  # the tools, in the system turn


def test_malformed_call_stays_text(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(
        model="ens", messages=ask("[[hermes-bad]]"), tools=TOOLS  # type: ignore[arg-type]
    )
    choice = body_of(r)["choices"][0]
    assert choice["finish_reason"] == "stop" and not choice["message"].get("tool_calls")
    assert choice["message"]["content"] == (
        'Trying. <tool_call>\n{"name": "launch", "arguments": {}}\n</tool_call>'
    )
    # Broken once its name was out (and streamed): the call ends with the JSON sent so far.
    r = client.chat.completions.create(
        model="ens", messages=ask("[[hermes-cut]]"), tools=TOOLS  # type: ignore[arg-type]
    )
    assert calls_of(body_of(r)["choices"][0]["message"]) == [("get_weather", {})]


def test_tool_choice_none_renders_no_tools(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(
        model="ens", messages=ask("[[echo]]"), tools=TOOLS, tool_choice="none", max_tokens=4000  # type: ignore[arg-type]
    )
    assert "get_weather" not in (r.choices[0].message.content or "")
    assert r.choices[0].finish_reason == "stop"


def test_parallel_tool_calls_false_keeps_the_first(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(
        model="ens", messages=ask("[[hermes]]"), tools=TOOLS, parallel_tool_calls=False  # type: ignore[arg-type]
    )
    assert calls_of(body_of(r)["choices"][0]["message"]) == [("get_weather", PARIS)]


def test_tools_on_models_that_cannot_call_are_400(client: openai.OpenAI) -> None:
    for alias in ("plain", "chatml-tools"):
        with pytest.raises(openai.BadRequestError) as e:
            client.chat.completions.create(model=alias, messages=ask("hi"), tools=TOOLS)  # type: ignore[arg-type]
        validate("ErrorResponse", e.value.response.json())
        assert e.value.body["param"] == "tools" and f"'{alias}'" in e.value.message  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(
            model="ens", messages=ask("hi"), tools=TOOLS,  # type: ignore[arg-type]
            tool_choice={"type": "function", "function": {"name": "nope"}},
        )
    assert e.value.body["param"] == "tool_choice"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="ens", messages=ask("hi"), tool_choice="required")
    assert e.value.body["param"] == "tool_choice"  # type: ignore[index]


# ---- guided decoding ---------------------------------------------------------------------


def guides(path: Path, since: int) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()[since:]]


def mark(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


def test_required_and_named_calls_use_the_guide(
    client: openai.OpenAI, logs: dict[str, Path]
) -> None:
    since = mark(logs["guide"])
    r = client.chat.completions.create(
        model="ens", messages=ask("Weather?"), tools=TOOLS, tool_choice="required"  # type: ignore[arg-type]
    )
    assert r.choices[0].finish_reason == "tool_calls"
    assert calls_of(body_of(r)["choices"][0]["message"]) == [
        ("get_weather", {"city": "mock", "unit": "°C"})
    ]
    stream = client.chat.completions.create(
        model="ens", messages=ask("Weather?"), tools=TOOLS, tool_choice="required",  # type: ignore[arg-type]
        stream=True,
    )
    calls = check_call_deltas(chunks_of(stream))
    assert [(c["name"], json.loads(c["arguments"])) for c in calls.values()] == [
        ("get_weather", {"city": "mock", "unit": "°C"})
    ]
    stream = client.chat.completions.create(
        model="ens", messages=ask("Time?"), tools=TOOLS, stream=True,  # type: ignore[arg-type]
        tool_choice={"type": "function", "function": {"name": "get_time"}},
    )
    calls = check_call_deltas(chunks_of(stream))
    assert [(c["name"], json.loads(c["arguments"])) for c in calls.values()] == [
        ("get_time", {"zone": "mock"})
    ]
    seen = guides(logs["guide"], since)
    assert [g["guide_type"] for g in seen] == ["json_schema"] * 3
    assert seen[0]["guide"] == seen[1]["guide"]
    del seen[1]
    array = json.loads(seen[0]["guide"])
    assert array["type"] == "array" and array["minItems"] == 1
    assert [v["properties"]["name"]["enum"] for v in array["items"]["anyOf"]] == [
        ["get_weather"], ["get_time"]
    ]
    assert json.loads(seen[1]["guide"]) == TIME["function"]["parameters"]


def test_forced_calls_on_a_format_without_tools_describe_them_in_the_system_turn(
    client: openai.OpenAI, logs: dict[str, Path]
) -> None:
    """chatml cannot show tools and "plain" has no tool_parser: `auto` is refused (above), but
    a call forced by guided decoding needs neither, so the tools go into the system turn."""
    since, seen = mark(logs["guide"]), mark(logs["request"])
    r = client.chat.completions.create(
        model="plain", messages=ask("Time?"), tools=TOOLS,  # type: ignore[arg-type]
        tool_choice={"type": "function", "function": {"name": "get_time"}},
    )
    validate("CreateChatCompletionResponse", body_of(r))
    assert r.choices[0].finish_reason == "tool_calls"
    assert calls_of(body_of(r)["choices"][0]["message"]) == [("get_time", {"zone": "mock"})]
    (guide,) = guides(logs["guide"], since)
    assert json.loads(guide["guide"]) == TIME["function"]["parameters"]
    (prompt,) = [g["prompt"] for g in guides(logs["request"], seen)]
    system = prompt.split("<|im_end|>")[0]
    assert system.startswith("<|im_start|>system\n") and '"name": "get_time"' in system
    assert "get_weather" not in prompt  # only the named function is shown
    r = client.chat.completions.create(
        model="plain", messages=ask("Weather?"), tools=TOOLS, tool_choice="required"  # type: ignore[arg-type]
    )
    assert calls_of(body_of(r)["choices"][0]["message"]) == [
        ("get_weather", {"city": "mock", "unit": "°C"})
    ]


def test_forced_calls_without_guided_decoding_use_prompt_and_parser(
    client: openai.OpenAI, logs: dict[str, Path]
) -> None:
    since = mark(logs["guide"])
    r = client.chat.completions.create(
        model="bls", messages=ask("[[hermes]]"), tools=TOOLS, tool_choice="required"  # type: ignore[arg-type]
    )
    assert calls_of(body_of(r)["choices"][0]["message"]) == [
        ("get_weather", PARIS), ("get_time", ZONE)
    ]
    # Named get_time, but the model calls get_weather: no call, its text, "stop".
    r = client.chat.completions.create(
        model="bls", messages=ask("[[hermes-one]]"), tools=TOOLS,  # type: ignore[arg-type]
        tool_choice={"type": "function", "function": {"name": "get_time"}},
    )
    assert r.choices[0].finish_reason == "stop" and not r.choices[0].message.tool_calls
    assert guides(logs["guide"], since) == []


def test_response_format_reaches_the_model_as_a_guide(
    client: openai.OpenAI, logs: dict[str, Path]
) -> None:
    schema = {"type": "object", "properties": {"city": {"type": "string"},
                                               "temp": {"type": "integer"}},
              "required": ["city", "temp"], "additionalProperties": False}
    since = mark(logs["guide"])
    rf: Any = {"type": "json_schema", "json_schema": {"name": "w", "schema": schema,
                                                      "strict": True}}
    r = client.chat.completions.create(model="ens", messages=ask("hi"), response_format=rf)
    assert json.loads(r.choices[0].message.content or "") == {"city": "mock", "temp": 7}
    r = client.chat.completions.create(
        model="ens", messages=ask("hi"), response_format={"type": "json_object"}
    )
    assert json.loads(r.choices[0].message.content or "") == {"mock": True}
    for alias in ("vllm", "vllm-so"):
        r = client.chat.completions.create(model=alias, messages=ask("hi"), response_format=rf)
        assert json.loads(r.choices[0].message.content or "") == {"city": "mock", "temp": 7}
    seen = guides(logs["guide"], since)
    assert [(g["model"], g["guide_type"]) for g in seen] == [
        ("trtllm_ensemble", "json_schema"),
        ("trtllm_ensemble", "json"),
        ("vllm_model:guided_decoding", "json_schema"),
        ("vllm_model:structured_outputs", "json_schema"),
    ]
    assert json.loads(seen[0]["guide"]) == schema and seen[1]["guide"] is None
    assert seen[2]["guide"] == schema and seen[3]["guide"] == schema


def test_response_format_without_guided_decoding(client: openai.OpenAI) -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(
            model="noguide", messages=ask("hi"),
            response_format={"type": "json_schema",
                             "json_schema": {"name": "s", "schema": schema, "strict": True}},
        )
    assert e.value.body["param"] == "response_format"  # type: ignore[index]
    assert e.value.body["code"] == "unsupported_parameter"  # type: ignore[index]
    # Not strict: asked for in the system prompt (the echo mock shows the prompt).
    r = client.chat.completions.create(
        model="noguide", messages=ask("[[echo]]"), max_tokens=4000,
        response_format={"type": "json_schema", "json_schema": {"name": "s", "schema": schema}},
    )
    prompt = r.choices[0].message.content or ""
    assert prompt.startswith("<|im_start|>system\nAnswer with one JSON object and nothing else")
    assert json.dumps(schema) in prompt


# ---- reasoning ---------------------------------------------------------------------------


def test_reasoning_split_whole_and_streamed(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(model="think", messages=ask("Hi [[think]]"))
    msg = body_of(r)["choices"][0]["message"]
    assert r.choices[0].message.reasoning_content == msg["reasoning_content"]  # type: ignore[attr-defined]
    assert msg["reasoning_content"].strip() == "The user greets me; answer briefly."
    assert msg["content"].strip() == "Hello there!"
    chunks = chunks_of(
        client.chat.completions.create(model="think", messages=ask("Hi [[think]]"), stream=True)
    )
    deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
    kinds = [k for d in deltas for k in ("reasoning_content", "content") if d.get(k)]
    assert kinds == sorted(kinds, key=lambda k: k == "content")  # all reasoning, then content
    assert "".join(d.get("reasoning_content") or "" for d in deltas) == msg["reasoning_content"]
    assert "".join(d.get("content") or "" for d in deltas) == msg["content"]
    assert "think>" not in json.dumps(chunks)


def test_guided_answers_have_no_thinking(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(model="r1", messages=ask("Hi [[think]]"))
    assert r.choices[0].message.content == "\n\nHello there!"
    # deepseek_r1 reads all text before </think> as thinking; a guided answer has none.
    r = client.chat.completions.create(
        model="r1", messages=ask("Hi"), response_format={"type": "json_object"}
    )
    msg = body_of(r)["choices"][0]["message"]
    assert json.loads(msg["content"]) == {"mock": True} and "reasoning_content" not in msg


def test_reasoning_then_a_call(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(
        model="think", messages=ask("[[think-hermes]]"), tools=TOOLS  # type: ignore[arg-type]
    )
    choice = body_of(r)["choices"][0]
    assert choice["message"]["reasoning_content"].strip() == "I need the weather."
    assert calls_of(choice["message"]) == [("get_weather", PARIS)]
    assert choice["finish_reason"] == "tool_calls"


# ---- logprobs ----------------------------------------------------------------------------


def expected_lp(i: int) -> float:
    return -0.25 * (i % 4 + 1)


def test_chat_logprobs_from_the_vllm_backend(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(
        model="vllm", messages=ask("hi"), logprobs=True, top_logprobs=2, max_tokens=50
    )
    body = body_of(r)
    content = body["choices"][0]["logprobs"]["content"]
    assert body["choices"][0]["message"]["content"] == FULL
    assert [e["logprob"] for e in content] == [expected_lp(i) for i in range(13)]
    assert content[0]["token"] == "Hello" and content[0]["bytes"] == list(b"Hello")
    # The sampled token, not the likeliest one, is the entry; top_logprobs go by rank.
    assert content[1]["token"] == "," and content[1]["logprob"] == -0.5
    assert content[1]["top_logprobs"][0] == {"token": " alt0", "logprob": -0.1,
                                            "bytes": list(b" alt0")}
    for e in content:
        tops = e["top_logprobs"]
        assert len(tops) == 2 and tops[0]["logprob"] >= tops[1]["logprob"]
    chunks = chunks_of(
        client.chat.completions.create(
            model="vllm", messages=ask("hi"), logprobs=True, stream=True, max_tokens=50
        )
    )
    streamed = [e for c in chunks if c["choices"] and c["choices"][0].get("logprobs")
                for e in c["choices"][0]["logprobs"]["content"]]
    assert [e["logprob"] for e in streamed] == [expected_lp(i) for i in range(13)]
    assert all(e["top_logprobs"] == [] for e in streamed)


def test_completion_logprobs_legacy_shape(client: openai.OpenAI) -> None:
    r = client.completions.create(model="vllm", prompt="hi", logprobs=1, max_tokens=5)
    body = r.model_dump(exclude_unset=True)
    validate("CreateCompletionResponse", body)
    lp = body["choices"][0]["logprobs"]
    assert lp["tokens"] == ["Hello", ",", " wor", "ld", "!"]
    assert lp["token_logprobs"] == [expected_lp(i) for i in range(5)]
    assert lp["text_offset"] == [0, 5, 6, 10, 12]
    assert all(len(t) == 1 for t in lp["top_logprobs"])


def test_tensorrt_llm_logprobs_of_sampled_tokens(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(model="ens", messages=ask("hi"), logprobs=True)
    content = body_of(r)["choices"][0]["logprobs"]["content"]
    assert [e["logprob"] for e in content] == [expected_lp(i) for i in range(13)]
    assert b"".join(bytes(e["bytes"]) for e in content).decode() == FULL
    assert content[6]["token"] == "\ufffd" and content[6]["bytes"] == [0xC3]
    assert all(e["top_logprobs"] == [] for e in content)
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="ens", messages=ask("hi"), logprobs=True,
                                       top_logprobs=2)
    assert e.value.body["param"] == "top_logprobs"  # type: ignore[index]


def test_logprobs_where_the_backend_returns_none_are_400(client: openai.OpenAI) -> None:
    # trtllm_bls declares no logprobs, and its cumulative text cannot be cut into tokens.
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="bls", messages=ask("hi"), logprobs=True)
    assert e.value.body["param"] == "logprobs"  # type: ignore[index]
    assert e.value.body["code"] == "unsupported_parameter"  # type: ignore[index]


# ---- n -----------------------------------------------------------------------------------


def test_n_choices_whole(client: openai.OpenAI, logs: dict[str, Path]) -> None:
    since = mark(logs["request"])
    r = client.chat.completions.create(model="ens", messages=ask("hi"), n=3, seed=5)
    body = body_of(r)
    assert sorted(g["seed"] for g in guides(logs["request"], since)) == [5, 6, 7]
    assert [c["index"] for c in body["choices"]] == [0, 1, 2]
    assert all(c["message"]["content"] == FULL for c in body["choices"])
    one = body_of(client.chat.completions.create(model="ens", messages=ask("hi")))
    assert body["usage"]["prompt_tokens"] == one["usage"]["prompt_tokens"]
    assert body["usage"]["completion_tokens"] == 3 * one["usage"]["completion_tokens"]


def test_n_choices_streamed_with_calls(client: openai.OpenAI) -> None:
    chunks = chunks_of(
        client.chat.completions.create(
            model="ens", messages=ask("[[hermes]]"), tools=TOOLS, n=3, stream=True,  # type: ignore[arg-type]
            stream_options={"include_usage": True},
        )
    )
    ids = set()
    for i in range(3):
        mine = [c["choices"][0] for c in chunks if c["choices"] and c["choices"][0]["index"] == i]
        assert mine[0]["delta"]["role"] == "assistant"
        assert [m["finish_reason"] for m in mine].count("tool_calls") == 1
        assert mine[-1]["finish_reason"] == "tool_calls"
        calls = check_call_deltas(chunks, i)
        assert [c["name"] for c in calls.values()] == ["get_weather", "get_time"]
        ids |= {c["id"] for c in calls.values()}
    assert len(ids) == 6
    assert chunks[-1]["choices"] == [] and sum(1 for c in chunks if c.get("usage")) == 1


def test_n_streams_are_interleaved_as_they_come(client: openai.OpenAI) -> None:
    # slow_model: a piece every 0.2 s per request, so the choices' pieces alternate.
    chunks = chunks_of(client.chat.completions.create(
        model="slow", messages=ask("hi"), n=2, max_tokens=3, stream=True
    ))
    texts = [(c["choices"][0]["index"], c["choices"][0]["delta"].get("content"))
             for c in chunks if c["choices"] and c["choices"][0]["delta"].get("content")]
    assert sorted(texts) == sorted((i, t) for i in (0, 1) for t in ("Hello", ",", " wor"))
    firsts = [texts.index((i, "Hello")) for i in (0, 1)]
    seconds = [texts.index((i, ",")) for i in (0, 1)]
    assert max(firsts) < min(seconds)
    finishes = [c["choices"][0] for c in chunks if c["choices"][0]["finish_reason"]]
    assert sorted((f["index"], f["finish_reason"]) for f in finishes) == [
        (0, "length"), (1, "length")
    ]


async def test_disconnect_cancels_all_n(router: RouterProc, logs: dict[str, Path]) -> None:
    marker = f"cancel-n-{time.time()}"
    async with aiohttp.ClientSession() as s:
        r = await s.post(
            router.base_url + "/chat/completions",
            headers={"Authorization": "Bearer sk-t"},
            json={"model": "cancel", "stream": True, "max_tokens": 2000, "n": 3,
                  "messages": ask(marker)},
        )
        seen: set[int] = set()
        async for line in r.content:
            if line.startswith(b"data: {"):
                seen.add(json.loads(line[6:])["choices"][0]["index"])
                if len(seen) == 3:
                    break
        r.close()
    deadline = time.monotonic() + 5
    cancelled: list[str] = []
    while time.monotonic() < deadline and len(cancelled) < 3:
        await asyncio.sleep(0.05)
        cancelled = [
            rec["request_id"]
            for rec in map(json.loads, logs["cancel"].read_text().splitlines())  # noqa: ASYNC240
            if marker in rec.get("prompt", "") and "cancelled_at" in rec
        ]
    assert len(set(cancelled)) == 3


# ---- LangChain ---------------------------------------------------------------------------


def test_langchain_bind_tools_invoke_and_stream(router: RouterProc) -> None:
    from langchain_openai import ChatOpenAI

    llm = ChatOpenAI(base_url=router.base_url, api_key="sk-t", model="ens", max_retries=0)  # type: ignore[arg-type]
    bound = llm.bind_tools(TOOLS)
    msg = bound.invoke("Weather and time? [[hermes]]")
    assert [(c["name"], c["args"]) for c in msg.tool_calls] == [  # type: ignore[attr-defined]
        ("get_weather", PARIS), ("get_time", ZONE)
    ]
    assert all(c["id"].startswith("call_") for c in msg.tool_calls)  # type: ignore[attr-defined]
    assert msg.response_metadata["finish_reason"] == "tool_calls"
    total = None
    for chunk in bound.stream("Weather and time? [[hermes]]"):
        total = chunk if total is None else total + chunk
    assert total is not None
    assert [(c["name"], c["args"]) for c in total.tool_calls] == [  # type: ignore[attr-defined]
        ("get_weather", PARIS), ("get_time", ZONE)
    ]
    assert str(total.content).strip() == "Let me check."


def test_langchain_with_structured_output(router: RouterProc) -> None:
    from langchain_openai import ChatOpenAI
    from pydantic import BaseModel

    class Weather(BaseModel):
        city: str
        temp: int

    llm = ChatOpenAI(base_url=router.base_url, api_key="sk-t", model="ens", max_retries=0)  # type: ignore[arg-type]
    out = llm.with_structured_output(Weather).invoke("Weather in Paris?")
    assert out == Weather(city="mock", temp=7)
    tool = llm.with_structured_output(Weather, method="function_calling").invoke("Paris?")
    assert tool == Weather(city="mock", temp=7)


def test_langchain_logprobs(router: RouterProc) -> None:
    from langchain_openai import ChatOpenAI

    llm = ChatOpenAI(base_url=router.base_url, api_key="sk-t", model="vllm", max_retries=0,  # type: ignore[arg-type]
                     logprobs=True, top_logprobs=1)
    content = llm.invoke("hi").response_metadata["logprobs"]["content"]
    assert [e["logprob"] for e in content] == [expected_lp(i) for i in range(13)]

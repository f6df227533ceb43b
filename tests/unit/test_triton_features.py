"""Request features on Triton models: what is accepted, what is 400, and the inputs they become;
logprob decoding; n calls fanned out and merged."""

from __future__ import annotations

import asyncio
import json
import struct
from collections.abc import AsyncIterator
from typing import Any

import pytest

from airouter.backends.base import Reply
from airouter.backends.triton.fanout import fan_out
from airouter.backends.triton.features import (
    build_requests,
    read_features,
    sampling_extra,
)
from airouter.backends.triton.logprobs import read_logprobs, vllm_logprobs
from airouter.backends.triton.models import GenParams, build_generate, parse_config
from airouter.config import ModelConfig
from airouter.errors import BadGateway, InvalidRequest
from airouter.templates import load_template

T = {"data_type": "TYPE_STRING", "dims": [1]}
B = {"data_type": "TYPE_BOOL", "dims": [1], "optional": True}
TRTLLM = parse_config({
    "name": "ens", "max_batch_size": 8,
    "model_transaction_policy": {"decoupled": True},
    "input": [
        {"name": "text_input", **T}, {"name": "max_tokens", "data_type": "TYPE_INT32", "dims": [1]},
        {"name": "seed", "data_type": "TYPE_UINT64", "dims": [1], "optional": True},
        {"name": "guided_decoding_guide_type", **T}, {"name": "guided_decoding_guide", **T},
        {"name": "return_log_probs", **B},
    ],
    "output": [{"name": "text_output", **T}, {"name": "output_log_probs",
                                              "data_type": "TYPE_FP32", "dims": [-1, -1]}],
})
VLLM = parse_config({
    "name": "v", "input": [{"name": "text_input", **T}, {"name": "sampling_parameters", **T},
                           {"name": "return_logprobs", **B}],
    "output": [{"name": "text_output", **T}, {"name": "logprobs", **T}],
})
PLAIN = parse_config({"name": "p", "input": [{"name": "text_input", **T},
                                             {"name": "max_tokens", "data_type": "TYPE_INT32",
                                              "dims": [1]}]})
TOOLS = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
MSGS = [{"role": "user", "content": "hi"}]
LLAMA = load_template(format="llama3.1")
HERMES = ModelConfig(backend="t", tool_parser="llama3_json")


def features(body: dict[str, Any], info: Any = TRTLLM, mc: ModelConfig = HERMES,
             chat: bool = True) -> Any:
    return read_features({"messages": MSGS, **body}, chat, "m", info, LLAMA, mc)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"tools": {"a": 1}}, "tools"),
        ({"tools": [{"type": "retrieval"}]}, "tools[0]"),
        ({"tools": [{"type": "function", "function": {"name": ""}}]}, "tools[0].function.name"),
        ({"tools": [{"type": "function", "function": {"name": "f", "parameters": 3}}]},
         "tools[0].function.parameters"),
        ({"tools": TOOLS, "tool_choice": "sometimes"}, "tool_choice"),
        ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "g"}}},
         "tool_choice"),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"response_format": {"type": "xml"}}, "response_format"),
        ({"response_format": {"type": "json_schema"}}, "response_format.json_schema"),
        ({"response_format": {"type": "json_schema", "json_schema": {"name": "s", "schema": 1}}},
         "response_format.json_schema.schema"),
        ({"top_logprobs": 2}, "top_logprobs"),
        ({"logprobs": "yes"}, "logprobs"),
        ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
        ({"logprobs": True, "top_logprobs": 1}, "top_logprobs"),  # TensorRT-LLM: sampled only
    ],
)
def test_client_mistakes_are_400_naming_the_field(body: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequest) as e:
        features(body)
    assert e.value.param == param and e.value.status == 400


def test_unsupported_by_the_model_is_400_unsupported_parameter() -> None:
    cases: list[tuple[dict[str, Any], Any, ModelConfig, bool, str]] = [
        ({"tools": TOOLS}, TRTLLM, ModelConfig(backend="t"), True, "tools"),
        ({"tools": TOOLS}, TRTLLM, HERMES, False, "tools"),
        ({"logprobs": True}, PLAIN, HERMES, True, "logprobs"),
        ({"logprobs": 2}, PLAIN, HERMES, False, "logprobs"),
        ({"response_format": {"type": "json_schema",
                              "json_schema": {"name": "s", "strict": True}}},
         PLAIN, HERMES, True, "response_format"),
        ({"response_format": {"type": "json_object"}}, PLAIN, HERMES, False, "response_format"),
        ({"response_format": {"type": "json_object"}}, TRTLLM,
         ModelConfig(backend="t", guided_decoding="off"), False, "response_format"),
    ]
    for body, info, mc, chat, param in cases:
        with pytest.raises(InvalidRequest) as e:
            features(body, info, mc, chat)
        assert (e.value.param, e.value.code) == (param, "unsupported_parameter"), body
        assert "'m'" in e.value.message or not chat or param != "tools"


def test_tool_choice_modes() -> None:
    assert features({"tools": TOOLS, "tool_choice": "none"}).tools is None
    auto = features({"tools": TOOLS})
    assert auto.parse_tools and auto.tools == TOOLS and auto.guide is None
    req = features({"tools": TOOLS, "tool_choice": "required", "parallel_tool_calls": False})
    assert req.required and req.guide[0] == "json_schema" and req.guide[1]["maxItems"] == 1
    named = features({"tools": TOOLS, "tool_choice": {"type": "function",
                                                      "function": {"name": "f"}}})
    assert named.named == "f" and named.guide == ("json_schema", {"type": "object"})
    unguided = features({"tools": TOOLS, "tool_choice": "required"}, PLAIN)
    assert unguided.parse_tools and not unguided.required and unguided.guide is None
    # A forced call's guide wins over response_format.
    both = features({"tools": TOOLS, "tool_choice": "required",
                     "response_format": {"type": "json_object"}})
    assert both.guide is not None and both.guide[1]["type"] == "array"


def test_guides_become_inputs_and_sampling_parameters() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    f = features({"response_format": {"type": "json_schema",
                                      "json_schema": {"name": "s", "schema": schema}},
                  "n": 2, "seed": 10})
    reqs = build_requests(TRTLLM, b"p", GenParams(max_tokens=5, seed=10), "id", HERMES, f)
    assert [r.id for r in reqs] == ["id-0", "id-1"]
    for i, r in enumerate(reqs):
        inputs = {t.name: t for t in r.inputs}
        assert inputs["guided_decoding_guide_type"].contents.bytes_contents == [b"json_schema"]
        assert json.loads(inputs["guided_decoding_guide"].contents.bytes_contents[0]) == schema
        assert inputs["seed"].contents.uint64_contents == [10 + i]
    obj = features({"response_format": {"type": "json_object"}, "logprobs": True}, VLLM)
    assert sampling_extra(VLLM, HERMES, obj) == {
        "guided_decoding": '{"json_object": true}', "logprobs": 0
    }
    so = ModelConfig(backend="t", guided_decoding="structured_outputs")
    assert sampling_extra(VLLM, so, obj)["structured_outputs"] == '{"json_object": true}'
    (req,) = build_requests(VLLM, b"p", GenParams(max_tokens=5), "id", HERMES, obj)
    inputs = {t.name: t for t in req.inputs}
    assert inputs["return_logprobs"].contents.bool_contents == [True]
    sp = json.loads(inputs["sampling_parameters"].contents.bytes_contents[0])
    assert sp["guided_decoding"] == '{"json_object": true}' and sp["logprobs"] == 0


def test_json_instruction_without_guided_decoding() -> None:
    f = features({"response_format": {"type": "json_schema",
                                      "json_schema": {"name": "s", "schema": {"type": "object"}}}},
                 PLAIN)
    assert f.guide is None and f.instruction is not None
    assert f.instruction.endswith('{"type": "object"}')


def test_vllm_logprobs_decoding() -> None:
    raw = json.dumps([
        {"7": {"logprob": -2.0, "rank": 3, "decoded_token": "a"},
         "8": {"logprob": -0.1, "rank": 1, "decoded_token": "b"},
         "9": {"logprob": float("-inf"), "rank": 2, "decoded_token": None}},
        {},
    ]).encode()
    (e,) = vllm_logprobs(raw, 2)
    assert (e["token"], e["logprob"], e["bytes"]) == ("a", -2.0, [97])
    assert [(t["token"], t["logprob"]) for t in e["top_logprobs"]] == [("b", -0.1), ("", -9999.0)]
    assert vllm_logprobs(b"null", 1) == [] and vllm_logprobs(b"{not json", 1) == []


def test_tensorrt_llm_logprobs_decoding() -> None:
    raw = struct.pack("<2f", -0.5, -1.5)
    assert read_logprobs("output_log_probs", raw, b"\xc3", 0) == [
        {"token": "", "logprob": -0.5, "bytes": [], "top_logprobs": []},
        {"token": "\ufffd", "logprob": -1.5, "bytes": [0xC3], "top_logprobs": []},
    ]


class _Closing:
    def __init__(self, batches: list[list[bytes]], fail: Exception | None = None) -> None:
        self.batches, self.fail, self.closed = batches, fail, False

    async def chunks(self) -> AsyncIterator[list[bytes]]:
        for b in self.batches:
            await asyncio.sleep(0)
            yield b
        if self.fail is not None:
            raise self.fail

    async def aclose(self) -> None:
        self.closed = True

    async def open(self, error: Exception | None = None) -> Reply:
        if error is not None:
            raise error
        return Reply(chunks=self.chunks(), aclose=self.aclose)


async def test_fan_out_merges_then_adds_the_tail() -> None:
    a, b = _Closing([[b"a1"], [b"a2"]]), _Closing([[b"b1"]])
    reply = await fan_out([a.open(), b.open()], lambda: [b"usage"])
    assert reply.chunks is not None
    got = [batch async for batch in reply.chunks]
    await reply.aclose()
    assert sorted(got[:-1]) == [[b"a1"], [b"a2"], [b"b1"]] and got[-1] == [b"usage"]
    assert got.index([b"a1"]) < got.index([b"a2"])
    assert a.closed and b.closed


async def test_fan_out_fails_whole_and_closes_the_opened() -> None:
    a, b = _Closing([[b"a1"]]), _Closing([])
    with pytest.raises(BadGateway):
        await fan_out([a.open(), b.open(BadGateway("down"))], lambda: [])
    assert a.closed


async def test_an_error_mid_stream_ends_the_merged_stream() -> None:
    a, b = _Closing([[b"a1"]] * 50), _Closing([[b"b1"]], fail=BadGateway("mid"))
    reply = await fan_out([a.open(), b.open()], lambda: [])
    assert reply.chunks is not None
    with pytest.raises(BadGateway):
        async for _ in reply.chunks:
            pass
    await reply.aclose()
    assert a.closed and b.closed


def _perf_model(perf_type: str = "TYPE_BOOL", output: str = "kv_cache_reused_blocks") -> Any:
    i32 = {"data_type": "TYPE_INT32", "dims": [1]}
    return parse_config({
        "name": "perf", "max_batch_size": 8,
        "input": [{"name": "text_input", **T}, {"name": "max_tokens", **i32},
                  {"name": "return_perf_metrics", "data_type": perf_type, "dims": [1],
                   "optional": True}],
        "output": [{"name": "text_output", **T}, {"name": output, **i32}],
    })


def test_tensorrt_llm_kv_reuse_output_is_asked_for_only_when_declared() -> None:
    perf = _perf_model()
    assert perf.reuse_output == "kv_cache_reused_blocks"
    assert _perf_model(output="kv_cache_reused_block").reuse_output == "kv_cache_reused_block"
    # Neither without the BOOL switch nor without the output.
    assert _perf_model(perf_type="TYPE_INT32").reuse_output == ""
    assert _perf_model(output="kv_cache_hit_rate").reuse_output == ""
    assert TRTLLM.reuse_output == "" and PLAIN.reuse_output == ""
    req = build_generate(perf, b"hi", GenParams(max_tokens=4), "r", stream=True)
    sent = {t.name: t for t in req.inputs}
    assert list(sent["return_perf_metrics"].contents.bool_contents) == [True]
    assert list(sent["return_perf_metrics"].shape) == [1, 1]
    plain = build_generate(PLAIN, b"hi", GenParams(max_tokens=4), "r", stream=True)
    assert "return_perf_metrics" not in {t.name for t in plain.inputs}

"""Embedding tensors without numpy: float decoding, base64, and which interface a model speaks."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from airouter.backends.triton.embed import decode_floats, embed_problem, float32_bytes
from airouter.backends.triton.models import parse_config
from airouter.config import ModelConfig

VALUES = [0.0, 1.0, -2.5, 0.333251953125, 65504.0, -1e-3, 3.140625]


@pytest.mark.parametrize("dtype", ["FP32", "FP16", "FP64"])
def test_decode_matches_numpy(dtype: str) -> None:
    np_type = {"FP32": np.float32, "FP16": np.float16, "FP64": np.float64}[dtype]
    arr = np.array(VALUES, dtype=np_type)
    assert decode_floats(arr.astype(arr.dtype.newbyteorder("<")).tobytes(), dtype) == [
        float(v) for v in arr
    ]


def test_bf16_is_the_upper_half_of_float32() -> None:
    f32 = np.array(VALUES, dtype="<f4")
    upper = (f32.view("<u4") >> 16).astype("<u2")  # truncation: exactly what BF16 stores
    want = [float(v) for v in (upper.astype("<u4") << 16).view("<f4")]
    assert decode_floats(upper.tobytes(), "BF16") == want
    assert decode_floats(struct.pack("<H", 0x3F80), "BF16") == [1.0]


def test_base64_payload_is_little_endian_float32() -> None:
    assert float32_bytes([1.0, -2.5]) == struct.pack("<2f", 1.0, -2.5)


def _cfg(inputs: list[tuple[str, str]], outputs: list[tuple[str, str]], **extra: object) -> dict:
    return {
        "name": "m",
        "input": [{"name": n, "data_type": f"TYPE_{t}", "dims": [1]} for n, t in inputs],
        "output": [{"name": n, "data_type": f"TYPE_{t}", "dims": [8]} for n, t in outputs],
        **extra,
    }


def test_vllm_backend_models_offer_the_embedding_request_interface() -> None:
    full = _cfg(
        [("text_input", "STRING"), ("sampling_parameters", "STRING"),
         ("embedding_request", "STRING"), ("return_num_input_tokens", "BOOL")],
        [("text_output", "STRING"), ("num_input_tokens", "UINT32")],
        model_transaction_policy={"decoupled": True},
    )
    info = parse_config(full)
    assert info.kind == "vllm" and info.embed_interface == "vllm" and info.decoupled
    alone = parse_config(
        _cfg([("text_input", "STRING"), ("embedding_request", "STRING")],
             [("text_output", "STRING")])
    )
    assert alone.kind == "embedding" and alone.embed_interface == "vllm"
    assert embed_problem(alone, ModelConfig(backend="b")) is None
    generate = parse_config(_cfg([("text_input", "STRING"), ("max_tokens", "INT32")],
                                 [("text_output", "STRING")]))
    assert generate.kind == "trtllm" and generate.embed_interface == ""


@pytest.mark.parametrize(
    ("inputs", "outputs", "problem"),
    [
        ([("text", "STRING")], [("embedding", "FP32")], None),
        ([("text", "STRING")], [("embedding", "FP16")], None),
        ([("text", "STRING")], [("embedding", "BF16")], None),
        ([("text", "FP16")], [("embedding", "FP32")], "'text' is FP16"),
        ([("text", "BF16")], [("embedding", "FP32")], "'text' is BF16"),
        ([("text", "STRING")], [("embedding", "INT8")], "'embedding' is INT8"),
        ([("text", "STRING")], [("vector", "FP32")], "no output 'embedding'"),
    ],
)
def test_tensor_embedding_models_are_checked(
    inputs: list[tuple[str, str]], outputs: list[tuple[str, str]], problem: str | None
) -> None:
    info = parse_config(_cfg(inputs, outputs), "embedding")
    assert info.embed_interface == "tensor"
    found = embed_problem(info, ModelConfig(backend="b"))
    assert found is None if problem is None else (found is not None and problem in found)

"""Triton model interfaces (TensorRT-LLM ensemble/BLS, vLLM backend, embeddings): detection from
the model config, OpenAI parameters mapped onto declared inputs, and output decoding."""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from typing import Any, Literal

from tritonclient.grpc import service_pb2

from airouter.errors import InvalidRequest

Kind = Literal["trtllm", "vllm", "embedding"]

# Triton config enums (model_config.proto DataType) to the wire names the gRPC API uses.
_DTYPES = {
    1: "BOOL",
    2: "UINT8",
    3: "UINT16",
    4: "UINT32",
    5: "UINT64",
    6: "INT8",
    7: "INT16",
    8: "INT32",
    9: "INT64",
    10: "FP16",
    11: "FP32",
    12: "FP64",
    13: "BYTES",
    14: "BF16",
}
_CONTENTS = {
    "BOOL": "bool_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}
_U32 = struct.Struct("<I")
# TensorRT-LLM's optional input that adds its perf metrics to the outputs, and the names of
# the reused-blocks output (the C++ backend's and BLS's, then the LLM API backend's).
PERF_INPUT = "return_perf_metrics"
REUSE_OUTPUTS = ("kv_cache_reused_blocks", "kv_cache_reused_block")
_SCALAR_DECODE = {
    "INT32": struct.Struct("<i"),
    "UINT32": struct.Struct("<I"),
    "INT64": struct.Struct("<q"),
    "UINT64": struct.Struct("<Q"),
}


@dataclass(slots=True, frozen=True)
class Tensor:
    name: str
    datatype: str
    dims: tuple[int, ...]
    optional: bool = False


@dataclass(slots=True)
class ModelInfo:
    """What a Triton model declares, read once from its config."""

    name: str
    kind: Kind
    inputs: dict[str, Tensor]
    outputs: dict[str, Tensor]
    max_batch_size: int
    decoupled: bool
    # TensorRT-LLM's BLS with accumulate_tokens streams cumulative text, not deltas.
    cumulative: bool = False
    # How it serves embeddings: "tensor" (text in, float tensor out), "vllm" (the vLLM
    # backend's embedding_request input), or "" (it does not).
    embed_interface: str = ""
    # TensorRT-LLM's per-request KV reuse count (`kv_cache_reused_blocks`, or the LLM API
    # backend's `kv_cache_reused_block`) when the model declares it and the BOOL input
    # `return_perf_metrics` that turns it on; "" when not (or the backend does not ask).
    reuse_output: str = ""

    def has(self, name: str) -> bool:
        return name in self.inputs


def parse_config(
    cfg: dict[str, Any], override: str = "auto", embed_input: str = "text"
) -> ModelInfo:
    """`cfg` is the model config as JSON (gRPC ModelConfig or HTTP /config)."""

    def tensors(key: str) -> dict[str, Tensor]:
        out = {}
        for t in cfg.get(key, []):
            dt = t.get("data_type", "")
            dt = _DTYPES.get(dt, dt) if isinstance(dt, int) else str(dt).removeprefix("TYPE_")
            dt = "BYTES" if dt == "STRING" else dt
            dims = tuple(int(d) for d in t.get("dims", []))
            out[t["name"]] = Tensor(t["name"], dt, dims, bool(t.get("optional", False)))
        return out

    inputs, outputs = tensors("input"), tensors("output")
    decoupled = bool(cfg.get("model_transaction_policy", {}).get("decoupled", False))
    if override != "auto":
        kind: Kind = override  # type: ignore[assignment]
    elif "sampling_parameters" in inputs:
        kind = "vllm"
    elif "embedding_request" in inputs:
        kind = "embedding"
    elif "text_input" in inputs:
        kind = "trtllm"
    elif embed_input in inputs:
        kind = "embedding"
    else:
        raise ValueError(
            f"cannot tell the interface of model {cfg.get('name')!r} from its inputs "
            f"{sorted(inputs)}; set `interface` for it in backends.toml"
        )
    acc = cfg.get("parameters", {}).get("accumulate_tokens", {}).get("string_value", "")
    # The vLLM backend declares embedding_request on every model it serves; whether the
    # engine can embed is its own answer to the request.
    if "embedding_request" in inputs and kind in ("vllm", "embedding"):
        embed_interface = "vllm"
    else:
        embed_interface = "tensor" if kind == "embedding" else ""
    reuse = next((n for n in REUSE_OUTPUTS if n in outputs), "")
    perf = inputs.get(PERF_INPUT)
    if perf is None or perf.datatype != "BOOL":
        reuse = ""
    return ModelInfo(
        cfg.get("name", ""),
        kind,
        inputs,
        outputs,
        int(cfg.get("max_batch_size", 0)),
        decoupled,
        cumulative=str(acc).lower() in ("true", "1", "yes"),
        embed_interface=embed_interface,
        reuse_output=reuse,
    )


@dataclass(slots=True)
class GenParams:
    """OpenAI sampling parameters, already validated by the request view."""

    max_tokens: int
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    seed: int | None = None
    stop: list[str] = field(default_factory=list)


# Fields an LLM on Triton cannot honour: answering without them would silently be wrong.
# (tools, response_format, logprobs and n are read by features.py.)
_REJECTED = ("functions", "logit_bias", "suffix", "best_of")


def gen_params(body: dict[str, Any], default_max: int) -> GenParams:
    for name in _REJECTED:
        v = body.get(name)
        if v not in (None, False, [], {}):
            raise InvalidRequest(
                f"'{name}' is not supported by this model's backend.",
                param=name,
                code="unsupported_parameter",
            )
    stop = body.get("stop")
    stops = [stop] if isinstance(stop, str) else [s for s in (stop or []) if s]
    max_tokens = body.get("max_completion_tokens") or body.get("max_tokens") or default_max
    top_k = body.get("top_k")
    return GenParams(
        max_tokens=int(max_tokens),
        temperature=body.get("temperature"),
        top_p=body.get("top_p"),
        top_k=top_k if isinstance(top_k, int) and not isinstance(top_k, bool) else None,
        presence_penalty=body.get("presence_penalty"),
        frequency_penalty=body.get("frequency_penalty"),
        seed=body.get("seed"),
        stop=[s for s in stops if isinstance(s, str)],
    )


def _add(req: service_pb2.ModelInferRequest, info: ModelInfo, name: str, values: list[Any]) -> None:
    spec = info.inputs[name]
    inp = req.inputs.add()
    inp.name = name
    inp.datatype = spec.datatype
    n = len(values)
    dims = [n if d == -1 else d for d in spec.dims] or [n]
    inp.shape.extend([1, *dims] if info.max_batch_size > 0 else dims)
    getattr(inp.contents, _CONTENTS[spec.datatype]).extend(values)


def _coerce(spec: Tensor, v: Any) -> Any:
    if spec.datatype.startswith(("INT", "UINT")):
        return int(v)
    if spec.datatype.startswith("FP"):
        return float(v)
    return v


def build_generate(
    info: ModelInfo,
    prompt: bytes,
    p: GenParams,
    request_id: str,
    *,
    stream: bool,
    extra: dict[str, Any] | None = None,
) -> service_pb2.ModelInferRequest:
    """`extra`: more vLLM sampling_parameters fields (guided decoding, logprobs)."""
    req = service_pb2.ModelInferRequest()
    req.model_name = info.name
    req.id = request_id
    # TensorRT-LLM ends streams with an empty response flagged final; ask to see it.
    req.parameters["triton_enable_empty_final_response"].bool_param = True
    has = info.inputs
    _add(req, info, "text_input", [prompt])
    if "stream" in has:
        _add(req, info, "stream", [stream])
    if "exclude_input_in_output" in has:
        _add(req, info, "exclude_input_in_output", [True])
    for flag in ("return_num_input_tokens", "return_num_output_tokens", "return_finish_reason"):
        if flag in has:
            _add(req, info, flag, [True])
    if info.reuse_output:
        _add(req, info, PERF_INPUT, [True])
    if info.kind == "vllm":
        sp: dict[str, Any] = {"max_tokens": p.max_tokens}
        for k in ("temperature", "top_p", "top_k", "presence_penalty", "frequency_penalty", "seed"):
            v = getattr(p, k)
            if v is not None:
                sp[k] = v
        if p.stop:
            sp["stop"] = p.stop
        if extra:
            sp.update(extra)
        _add(req, info, "sampling_parameters", [json.dumps(sp).encode()])
        return req
    _add(req, info, "max_tokens", [_coerce(has["max_tokens"], p.max_tokens)])
    for k in ("temperature", "top_p", "top_k", "presence_penalty", "frequency_penalty"):
        v = getattr(p, k)
        if v is not None and k in has:
            _add(req, info, k, [_coerce(has[k], v)])
    if p.seed is not None:
        for k in ("seed", "random_seed"):
            if k in has:
                _add(req, info, k, [_coerce(has[k], p.seed)])
                break
    if p.stop and "stop_words" in has and has["stop_words"].datatype == "BYTES":
        _add(req, info, "stop_words", [s.encode() for s in p.stop])
    return req


def build_embed(
    info: ModelInfo, texts: list[bytes], input_name: str
) -> service_pb2.ModelInferRequest:
    req = service_pb2.ModelInferRequest()
    req.model_name = info.name
    spec = info.inputs[input_name]
    inp = req.inputs.add()
    inp.name = input_name
    inp.datatype = spec.datatype
    if info.max_batch_size > 0:
        inp.shape.extend([len(texts), 1])
    else:
        inp.shape.extend([len(texts)])
    inp.contents.bytes_contents.extend(texts)
    return req


def first_bytes(raw: bytes) -> bytes:
    """The first element of a raw BYTES tensor (4-byte little-endian length, then the bytes)."""
    if len(raw) < 4:
        return b""
    n = _U32.unpack_from(raw)[0]
    return raw[4 : 4 + n]


def scalar(raw: bytes, datatype: str) -> int:
    s = _SCALAR_DECODE.get(datatype)
    if s is None or len(raw) < s.size:
        return 0
    return int(s.unpack_from(raw)[0])

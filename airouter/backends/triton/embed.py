"""Embeddings on Triton, two interfaces:

- tensor: a BYTES text input and a float output tensor (FP32, FP16, BF16 or FP64), batched
  up to the model's max_batch_size;
- vLLM backend: the model declares `embedding_request`; one request per input, with
  `text_input` = [""] and `embedding_request` = [{"input": ..., "pooling_params": {...}}] as
  JSON, answered with `text_output` = [JSON array of floats] (and `num_input_tokens` when the
  model declares `return_num_input_tokens`). Decoupled models are called over
  ModelStreamInfer, others over ModelInfer.
"""

from __future__ import annotations

import asyncio
import base64
import struct
import sys
from array import array
from collections.abc import Sequence
from typing import Any, NamedTuple, cast

import grpc
import msgspec
from tritonclient.grpc import service_pb2, service_pb2_grpc

from airouter.backends.base import Call, Reply
from airouter.backends.triton.errors import map_error, map_rpc_error
from airouter.backends.triton.models import ModelInfo, build_embed, first_bytes, scalar
from airouter.config import ModelConfig
from airouter.errors import BadGateway, InvalidRequest, RouterError

_encode = msgspec.json.Encoder().encode
_decode_vector = msgspec.json.Decoder(list[float]).decode
_encode_pooling = msgspec.json.Encoder().encode

# Bytes per element of the float outputs we can read.
ITEMSIZE = {"FP32": 4, "FP16": 2, "BF16": 2, "FP64": 8}
# Per-input requests of one client request in flight at once (vLLM batches them itself).
VLLM_PARALLEL = 32
_LITTLE = sys.byteorder == "little"

Item = str | list[int]


class Limit(NamedTuple):
    """An embedding request's deadline: the whole answer is its start, so the sooner of
    first_token_timeout and request_timeout, and the words a timeout names it by."""

    seconds: float
    words: str

    @classmethod
    def of(cls, first_token_timeout: float, request_timeout: float) -> Limit:
        if first_token_timeout <= request_timeout:
            return cls(first_token_timeout, f"{first_token_timeout:g}s (first_token_timeout)")
        return cls(request_timeout, f"{request_timeout:g}s (request_timeout)")


def embed_problem(info: ModelInfo, mc: ModelConfig) -> str | None:
    """Why this model cannot serve embeddings through the router, or None."""
    if info.embed_interface == "vllm":
        for name in ("text_input", "embedding_request"):
            t = info.inputs.get(name)
            if t is None or t.datatype != "BYTES":
                return f"its input '{name}' is not a STRING tensor"
        out = info.outputs.get("text_output")
        if out is None or out.datatype != "BYTES":
            return "it declares no STRING output 'text_output'"
        return None
    inp = info.inputs.get(mc.embedding_input)
    if inp is None:
        return f"it declares no input '{mc.embedding_input}' (see embedding_input)"
    if inp.datatype != "BYTES":
        return f"its input '{mc.embedding_input}' is {inp.datatype}, not STRING (text)"
    out = info.outputs.get(mc.embedding_output)
    if out is None:
        return f"it declares no output '{mc.embedding_output}' (see embedding_output)"
    if out.datatype not in ITEMSIZE:
        return (
            f"its output '{mc.embedding_output}' is {out.datatype}; "
            f"supported: {', '.join(sorted(ITEMSIZE))}"
        )
    return None


def decode_floats(data: bytes, datatype: str) -> list[float]:
    """A little-endian float tensor's elements as Python floats (no numpy)."""
    if datatype == "FP32" and _LITTLE:
        return cast(list[float], memoryview(data).cast("f").tolist())
    if datatype == "BF16":
        # bfloat16 is the upper half of an IEEE float32.
        halves = struct.unpack(f"<{len(data) // 2}H", data)
        wide = struct.pack(f"<{len(halves)}I", *(h << 16 for h in halves))
        return list(struct.unpack(f"<{len(halves)}f", wide))
    code = {"FP32": "f", "FP16": "e", "FP64": "d"}[datatype]
    return list(struct.unpack(f"<{len(data) // ITEMSIZE[datatype]}{code}", data))


def float32_bytes(values: list[float]) -> bytes:
    """OpenAI's base64 encoding_format: little-endian float32."""
    a = array("f", values)
    if not _LITTLE:
        a.byteswap()
    return a.tobytes()


def inputs_of(body: dict[str, Any], vllm: bool) -> list[Item]:
    """The client's `input` as a list of items: strings, or (vLLM only) token-id lists."""
    raw = body["input"]
    if isinstance(raw, str):
        items: list[Any] = [raw]
    elif vllm and raw and all(isinstance(x, int) and not isinstance(x, bool) for x in raw):
        items = [raw]
    else:
        items = list(raw) if isinstance(raw, list) else []
    ok = bool(items) and all(
        isinstance(t, str)
        or (vllm and isinstance(t, list) and t and all(isinstance(x, int) for x in t))
        for t in items
    )
    if not ok:
        what = "a string, a list of strings, or token ids" if vllm else "a string or strings"
        raise InvalidRequest(
            f"This model's backend takes input as {what}.",
            param="input",
            code="unsupported_parameter",
        )
    return items


def _dimensions(body: dict[str, Any]) -> int | None:
    d = body.get("dimensions")
    return d if isinstance(d, int) and not isinstance(d, bool) else None


def _embedding(v: bytes | list[float], datatype: str, b64: bool) -> Any:
    if isinstance(v, bytes):
        if b64 and datatype == "FP32" and _LITTLE:
            return base64.b64encode(v).decode()
        v = decode_floats(v, datatype)
    return base64.b64encode(float32_bytes(v)).decode() if b64 else v


def reply(
    call: Call, vectors: Sequence[bytes | list[float]], datatype: str, tokens: int
) -> Reply:
    b64 = call.body.get("encoding_format") == "base64"
    items = [
        {"object": "embedding", "index": j, "embedding": _embedding(v, datatype, b64)}
        for j, v in enumerate(vectors)
    ]
    body = {
        "object": "list",
        "data": items,
        "model": call.target.alias,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }
    return Reply(body=_encode(body))


async def tensor_embed(
    stub: service_pb2_grpc.GRPCInferenceServiceStub,
    url: str,
    call: Call,
    info: ModelInfo,
    mc: ModelConfig,
    texts: list[str],
    limit: Limit,
) -> Reply:

    out = info.outputs[mc.embedding_output]
    size = ITEMSIZE[out.datatype]
    declared = out.dims[-1] if out.dims else -1
    dims = _dimensions(call.body)
    if dims is not None and dims != declared:
        raise InvalidRequest(
            f"The model '{call.target.alias}' returns {declared}-dimension embeddings and "
            "cannot change that.",
            param="dimensions",
            code="unsupported_parameter",
        )
    batch = info.max_batch_size or 1
    vectors: list[bytes] = []
    metadata = tuple(call.headers.items()) if call.headers else None
    for i in range(0, len(texts), batch):
        part = [t.encode() for t in texts[i : i + batch]]
        req = build_embed(info, part, mc.embedding_input)
        try:
            resp = await stub.ModelInfer(req, timeout=limit.seconds, metadata=metadata)
        except grpc.aio.AioRpcError as e:
            raise map_rpc_error(e, url, info.name, limit.words) from None
        names = [o.name for o in resp.outputs]
        if mc.embedding_output not in names:
            raise BadGateway(f"The model '{info.name}' returned no '{mc.embedding_output}' output.")
        data = resp.raw_output_contents[names.index(mc.embedding_output)]
        width = len(data) // len(part)
        if not width or width % size or width * len(part) != len(data):
            raise BadGateway(
                f"The model '{info.name}' returned {len(data)} bytes of {out.datatype} for "
                f"{len(part)} inputs."
            )
        vectors.extend(data[j * width : (j + 1) * width] for j in range(len(part)))
    return reply(call, vectors, out.datatype, 0)


def build_vllm_embed(
    info: ModelInfo, item: Item, dims: int | None
) -> service_pb2.ModelInferRequest:
    req = service_pb2.ModelInferRequest()
    req.model_name = info.name
    pooling: dict[str, Any] = {"dimensions": [dims]} if dims is not None else {}
    for name, value in (
        ("text_input", b""),
        ("embedding_request", _encode_pooling({"input": item, "pooling_params": pooling})),
    ):
        inp = req.inputs.add()
        inp.name = name
        inp.datatype = "BYTES"
        inp.shape.append(1)
        inp.contents.bytes_contents.append(value)
    if "return_num_input_tokens" in info.inputs:
        inp = req.inputs.add()
        inp.name = "return_num_input_tokens"
        inp.datatype = "BOOL"
        inp.shape.append(1)
        inp.contents.bool_contents.append(True)
    return req


def _vllm_result(resp: service_pb2.ModelInferResponse, name: str) -> tuple[list[float], int]:
    vector: list[float] | None = None
    tokens = 0
    for i, out in enumerate(resp.outputs):
        if out.name == "text_output":
            try:
                vector = _decode_vector(first_bytes(resp.raw_output_contents[i]))
            except msgspec.DecodeError:
                raise BadGateway(f"The model '{name}' returned an embedding that is not "
                                 "a JSON array of numbers.") from None
        elif out.name == "num_input_tokens":
            tokens = scalar(resp.raw_output_contents[i], out.datatype)
    if vector is None:
        raise BadGateway(f"The model '{name}' returned no 'text_output'.")
    return vector, tokens


async def _vllm_one(
    stub: service_pb2_grpc.GRPCInferenceServiceStub,
    url: str,
    info: ModelInfo,
    req: service_pb2.ModelInferRequest,
    limit: Limit,
    metadata: tuple[tuple[str, str], ...] | None,
) -> tuple[list[float], int]:

    if not info.decoupled:
        try:
            resp = await stub.ModelInfer(req, timeout=limit.seconds, metadata=metadata)
        except grpc.aio.AioRpcError as e:
            raise map_rpc_error(e, url, info.name, limit.words) from None
        return _vllm_result(resp, info.name)
    call = stub.ModelStreamInfer(iter((req,)), timeout=limit.seconds, metadata=metadata)
    result: tuple[list[float], int] | None = None
    try:
        while True:
            msg = await call.read()
            if msg is grpc.aio.EOF:
                break
            if msg.error_message:
                raise map_error(msg.error_message, info.name)
            ir = msg.infer_response
            if ir.outputs and result is None:
                result = _vllm_result(ir, info.name)
            if ir.parameters["triton_final_response"].bool_param:
                break
    except grpc.aio.AioRpcError as e:
        raise map_rpc_error(e, url, info.name, limit.words) from None
    finally:
        if not call.done():
            # The final response is in: the call ends by itself; cancel only if it lingers.
            try:
                async with asyncio.timeout(0.5):
                    while await call.read() is not grpc.aio.EOF:
                        pass
            except (TimeoutError, grpc.aio.AioRpcError):
                call.cancel()
    if result is None:
        raise BadGateway(f"The model '{info.name}' ended the call without an embedding.")
    return result


async def vllm_embed(
    stub: service_pb2_grpc.GRPCInferenceServiceStub,
    url: str,
    call: Call,
    info: ModelInfo,
    items: list[Item],
    limit: Limit,
) -> Reply:
    dims = _dimensions(call.body)
    metadata = tuple(call.headers.items()) if call.headers else None
    gate = asyncio.Semaphore(VLLM_PARALLEL)

    async def one(item: Item) -> tuple[list[float], int]:
        async with gate:
            req = build_vllm_embed(info, item, dims)
            return await _vllm_one(stub, url, info, req, limit, metadata)

    tasks = [asyncio.ensure_future(one(item)) for item in items]
    try:
        results = await asyncio.gather(*tasks)
    except (RouterError, asyncio.CancelledError):
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
    vectors = [v for v, _ in results]
    if dims is not None and any(len(v) != dims for v in vectors):
        raise BadGateway(
            f"The model '{info.name}' ignored dimensions={dims} "
            f"(returned {len(vectors[0])} dimensions)."
        )
    return reply(call, vectors, "FP32", sum(n for _, n in results))

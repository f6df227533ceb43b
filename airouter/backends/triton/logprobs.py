"""Token logprobs from Triton models, in OpenAI's chat shape ({token, logprob, bytes,
top_logprobs}): Triton's vLLM backend returns them with token texts and alternatives;
TensorRT-LLM returns only the sampled tokens' logprobs, one streamed response per token."""

from __future__ import annotations

import json
import math
from typing import Any

from airouter.backends.triton.models import ModelInfo, first_bytes
from airouter.config import ModelConfig

LOGPROB_OUTPUTS = frozenset({"logprobs", "output_log_probs"})


def logprob_source(info: ModelInfo, mc: ModelConfig) -> str | None:
    """"vllm", "trtllm", or None when the model returns no logprobs the router can place."""
    if info.kind == "vllm":
        ok = info.has("return_logprobs") and "logprobs" in info.outputs
        return "vllm" if ok else None
    cumulative = info.cumulative if mc.cumulative is None else mc.cumulative
    # Tokens are known only as one streamed delta per response.
    if (
        info.has("return_log_probs")
        and "output_log_probs" in info.outputs
        and info.decoupled
        and not cumulative
    ):
        return "trtllm"
    return None


def read_logprobs(name: str, raw: bytes, text: bytes, top: int) -> list[dict[str, Any]]:
    """The entries of one response's logprobs output `name` (its raw tensor contents);
    `text` is the response's own text output."""
    if name == "logprobs":
        return vllm_logprobs(first_bytes(raw), top)
    values = memoryview(raw).cast("f").tolist() if len(raw) % 4 == 0 else []
    # Several tokens in one response: the text goes with the last of them. `bytes` are the
    # token's own (a character split across tokens shows as U+FFFD in `token`).
    out = []
    for i, v in enumerate(values):
        last = i == len(values) - 1
        e = _entry(text.decode("utf-8", "replace") if last else "", v)
        e["bytes"], e["top_logprobs"] = list(text) if last else [], []
        out.append(e)
    return out


def vllm_logprobs(raw: bytes, top: int) -> list[dict[str, Any]]:
    """Triton's vLLM backend `logprobs` output (per token: {token_id: {logprob, rank,
    decoded_token}}, the sampled token first) in OpenAI's chat shape."""
    try:
        data = json.loads(raw)
    except ValueError:
        return []
    out: list[dict[str, Any]] = []
    if not isinstance(data, list):
        return out
    for position in data:
        if not isinstance(position, dict) or not position:
            continue
        entries = [e for e in position.values() if isinstance(e, dict)]
        if not entries:
            continue
        best = sorted(entries, key=lambda e: e.get("rank") or math.inf)[:top]
        chosen = _vllm_entry(entries[0])
        chosen["top_logprobs"] = [_vllm_entry(e) for e in best]
        out.append(chosen)
    return out


def _vllm_entry(e: dict[str, Any]) -> dict[str, Any]:
    token = e.get("decoded_token")
    return _entry(token if isinstance(token, str) else "", e.get("logprob"))


def _entry(token: str, lp: Any) -> dict[str, Any]:
    # OpenAI's stand-in for "very unlikely"; JSON has no -Infinity.
    value = float(lp) if isinstance(lp, (int, float)) and math.isfinite(lp) else -9999.0
    return {"token": token, "logprob": value, "bytes": list(token.encode())}

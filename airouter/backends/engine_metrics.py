"""An engine's own load, read from its Prometheus text (Triton TensorRT-LLM, Triton core, vLLM,
SGLang): queue, running requests, KV cache use and capacity. Parsing here, sans-IO; the
scraping loop is in engine_scrape.py."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(slots=True)
class EngineLoad:
    """One scrape. `known` is False when no family the router understands was in it."""

    waiting: float = 0.0
    running: float = 0.0
    kv_usage: float | None = None  # 0..1
    kv_tokens: int = 0  # the KV cache's capacity in tokens, when the engine says
    tokens_per_block: int = 0  # TRT-LLM's KV block size, when the engine says
    started: float = 0.0  # process_start_time_seconds, when given
    iterations: float = -1.0  # TRT-LLM's iteration counter, when given
    known: bool = False
    at: float = 0.0  # time.monotonic() of the scrape

    def restarted(self, before: EngineLoad) -> bool:
        """The engine restarted since `before` (its cache is cold)."""
        if self.started and before.started and self.started != before.started:
            return True
        return 0 <= self.iterations < before.iterations

    def as_dict(self) -> dict[str, object]:
        out: dict[str, object] = {"waiting": self.waiting, "running": self.running}
        if self.kv_usage is not None:
            out["kv_usage"] = round(self.kv_usage, 4)
        if self.kv_tokens:
            out["kv_tokens"] = self.kv_tokens
        return out


# family -> (field, label that must match or "") ; several names fill one field: first wins.
_WAITING = ("nv_trt_llm_request_metrics|request_type=waiting", "vllm:num_requests_waiting",
            "sglang:num_queue_reqs", "nv_inference_pending_request_count")
_RUNNING = ("nv_trt_llm_request_metrics|request_type=active", "vllm:num_requests_running",
            "sglang:num_running_reqs")
_KV = ("nv_trt_llm_kv_cache_block_metrics|kv_cache_block_type=fraction", "vllm:kv_cache_usage_perc",
       "vllm:gpu_cache_usage_perc", "sglang:token_usage")
_WANTED = frozenset(s.partition("|")[0] for s in (*_WAITING, *_RUNNING, *_KV)) | {
    "nv_trt_llm_kv_cache_block_metrics", "nv_trt_llm_general_metrics", "vllm:cache_config_info",
    "sglang:max_total_num_tokens", "process_start_time_seconds",
}
_SELECTORS = {"request_type", "kv_cache_block_type", "general_type"}


def _labels(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for part in text.split(","):
        k, eq, v = part.partition("=")
        if eq:
            out[k.strip()] = v.strip().strip('"')
    return out


def parse_metrics(text: str, now: float = 0.0) -> EngineLoad:
    """Sum each family over its series (one per model on a Triton server). Unknown families,
    comments and lines that do not parse are skipped: a page of garbage reads as unknown."""
    sums: dict[str, float] = {}
    config: dict[str, str] = {}
    for line in text.splitlines():
        if not line or line[0] == "#":
            continue
        brace = line.find("{")
        if brace >= 0:
            name = line[:brace]
            close = line.find("}", brace)
            if close < 0:
                continue
            labels_text, rest = line[brace + 1 : close], line[close + 1 :]
        else:
            name, _, rest = line.partition(" ")
            labels_text = ""
        if name not in _WANTED:
            continue
        fields = rest.split()
        if not fields:
            continue
        try:
            value = float(fields[0])
        except ValueError:
            continue
        if math.isnan(value) or math.isinf(value):
            continue
        key = name
        if labels_text:
            labels = _labels(labels_text)
            if name == "vllm:cache_config_info":
                config = labels
                continue
            for sel in _SELECTORS:
                if sel in labels:
                    key = f"{name}|{sel}={labels[sel]}"
                    break
        sums[key] = sums.get(key, 0.0) + value
    load = EngineLoad(at=now)
    waiting = _first(sums, _WAITING)
    running = _first(sums, _RUNNING)
    kv = _first(sums, _KV)
    trt = "nv_trt_llm_kv_cache_block_metrics|kv_cache_block_type="
    if kv is None and sums.get(trt + "max"):
        kv = sums.get(trt + "used", 0.0) / sums[trt + "max"]
    load.known = waiting is not None or running is not None or kv is not None
    load.waiting = max(0.0, waiting or 0.0)
    load.running = max(0.0, running or 0.0)
    if kv is not None:
        load.kv_usage = min(1.0, max(0.0, kv))
    load.kv_tokens = _capacity(sums, config)
    load.tokens_per_block = max(0, int(sums.get(trt + "tokens_per", 0.0)))
    load.started = sums.get("process_start_time_seconds", 0.0)
    load.iterations = sums.get("nv_trt_llm_general_metrics|general_type=iteration_counter", -1.0)
    return load


def _first(sums: dict[str, float], names: tuple[str, ...]) -> float | None:
    for n in names:
        v = sums.get(n)
        if v is not None:
            return v
    return None


def _capacity(sums: dict[str, float], config: dict[str, str]) -> int:
    """The KV cache's size in tokens: TRT-LLM's max blocks x tokens per block, vLLM's
    cache_config_info (num_gpu_blocks x block_size), SGLang's max_total_num_tokens."""
    trt = "nv_trt_llm_kv_cache_block_metrics|kv_cache_block_type="
    blocks, per = sums.get(trt + "max", 0.0), sums.get(trt + "tokens_per", 0.0)
    if blocks > 0 and per > 0:
        return int(blocks * per)
    try:
        n = int(config.get("num_gpu_blocks") or 0) * int(config.get("block_size") or 0)
    except ValueError:
        n = 0
    if n > 0:
        return n
    return max(0, int(sums.get("sglang:max_total_num_tokens", 0.0)))

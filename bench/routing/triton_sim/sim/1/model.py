"""A simulated TensorRT-LLM engine as a Triton decoupled Python-backend model: the time-based
engine of bench/routing/sim_core.py behind the `ensemble` interface, and TensorRT-LLM's metric
families (nv_trt_llm_request_metrics, nv_trt_llm_kv_cache_block_metrics,
nv_trt_llm_general_metrics) as custom metrics on Triton's metrics port, with the sim's ground
truth (sim_prompt_tokens, sim_cached_tokens, ...). A prompt starting with <|sim_reset|>
empties the cache and the counters. Settings from the environment: AIROUTER_SIM_CACHE_TOKENS,
AIROUTER_SIM_PREFILL_MS_PER_TOKEN."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time
from pathlib import Path
from typing import Any

# Triton would take a __pycache__ in the repository for a model folder.
sys.dont_write_bytecode = True
sys.path.insert(0, str(Path(__file__).resolve().parents[5]))  # the project root
import numpy as np  # noqa: E402
import triton_python_backend_utils as pb_utils  # noqa: E402

from bench.routing.sim_core import BLOCK_TOKENS, NodeParams, SimEngine  # noqa: E402

FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL
RESET = b"<|sim_reset|>"


def _scalar(request: Any, name: str, default: Any = None) -> Any:
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    if tensor is None:
        return default
    arr = tensor.as_numpy()
    return arr.reshape(-1)[0] if arr.size else default


_FAMILIES: list[Any] = []  # a family must outlive its metrics


def _gauges(name: str, label: str, values: list[str], doc: str) -> dict[str, Any]:
    fam = pb_utils.MetricFamily(name=name, description=doc, kind=pb_utils.MetricFamily.GAUGE)
    _FAMILIES.append(fam)
    return {v: fam.Metric(labels={"model": "sim", "version": "1", label: v}) for v in values}


class TritonPythonModel:
    def initialize(self, args: dict[str, Any]) -> None:
        params = NodeParams(
            cache_tokens=int(os.environ.get("AIROUTER_SIM_CACHE_TOKENS",
                                            NodeParams.cache_tokens)),
            prefill_s_per_token=float(os.environ.get("AIROUTER_SIM_PREFILL_MS_PER_TOKEN",
                                                     "0.1")) / 1000)
        self.engine = SimEngine(params)
        self.started = time.time()
        self.iterations = 0
        self.requests = _gauges("nv_trt_llm_request_metrics", "request_type",
                                ["waiting", "active", "scheduled", "max"], "Request counts")
        self.kv = _gauges("nv_trt_llm_kv_cache_block_metrics", "kv_cache_block_type",
                          ["max", "used", "free", "tokens_per", "fraction"], "KV cache blocks")
        self.general = _gauges("nv_trt_llm_general_metrics", "general_type",
                               ["iteration_counter"], "General")
        self.truth = _gauges("sim_stats", "stat", ["requests", "prompt_tokens", "cached_tokens",
                                                  "busy_prefill_s", "in_flight_area",
                                                  "started_unix"], "The sim's ground truth")
        self.requests["max"].set(params.decode_slots)
        self.kv["max"].set(self.engine.capacity)
        self.kv["tokens_per"].set(BLOCK_TOKENS)
        self.engine.on_change = self.publish
        self.publish()

    def publish(self) -> None:
        e = self.engine
        self.requests["waiting"].set(e.waiting)
        self.requests["active"].set(e.running)
        self.requests["scheduled"].set(e.running)
        used = len(e.cache)
        self.kv["used"].set(used)
        self.kv["free"].set(e.capacity - used)
        self.kv["fraction"].set(used / e.capacity)
        self.general["iteration_counter"].set(self.iterations)
        s = e.stats
        for k, v in (("requests", s.requests), ("prompt_tokens", s.prompt_tokens),
                     ("cached_tokens", s.cached_tokens), ("busy_prefill_s", s.busy_prefill_s),
                     ("in_flight_area", s.in_flight_area), ("started_unix", self.started)):
            self.truth[k].set(v)

    async def execute(self, requests: list[Any]) -> None:
        await asyncio.gather(*(self._serve(r) for r in requests))

    def _response(self, text: bytes, n_in: int, n_out: int) -> Any:
        return pb_utils.InferenceResponse(output_tensors=[
            pb_utils.Tensor("text_output", np.array([[text]], dtype=np.object_)),
            pb_utils.Tensor("num_input_tokens", np.array([[n_in]], dtype=np.int32)),
            pb_utils.Tensor("num_output_tokens", np.array([[n_out]], dtype=np.int32))])

    async def _serve(self, request: Any) -> None:
        sender = request.get_response_sender()
        try:
            prompt = _scalar(request, "text_input", b"")
            prompt = prompt if isinstance(prompt, bytes) else str(prompt).encode()
            if prompt.startswith(RESET):
                self.engine.reset()
                self.started = time.time()
                self.iterations = 0
                self.publish()
                sender.send(self._response(b"reset", 0, 0), flags=FINAL)
                return
            max_tokens = max(1, int(_scalar(request, "max_tokens", 16)))
            stream = bool(_scalar(request, "stream", False))
            exclude = bool(_scalar(request, "exclude_input_in_output", False))
            engine = self.engine
            tokens, _ = await engine.prefill(prompt)
            async with engine.decoding():
                for i in range(max_tokens):
                    if i:
                        await asyncio.sleep(engine.step())
                    if sender.is_cancelled():
                        sender.send(flags=FINAL)
                        return
                    self.iterations += 1
                    if stream:
                        sender.send(self._response(b" tok", tokens, 1))
                if not stream:
                    text = (b"" if exclude else prompt) + b" tok" * max_tokens
                    sender.send(self._response(text, tokens, max_tokens))
            sender.send(flags=FINAL)
        except Exception as e:  # noqa: BLE001 - an async execute must never raise
            with contextlib.suppress(Exception):
                sender.send(pb_utils.InferenceResponse(error=pb_utils.TritonError(repr(e))),
                            flags=FINAL)

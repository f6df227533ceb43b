"""Mock of a TensorRT-LLM `ensemble` with `return_perf_metrics`: a KV cache of 64-byte prompt
blocks, each named by the whole prompt up to its end; a request reuses the leading blocks an
earlier request computed. A file at $AIROUTER_KV_FLUSH empties the cache (and is removed)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils

# A __pycache__ in the repository root would look like a model folder to Triton.
sys.dont_write_bytecode = True
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root
import _mock_common as mock  # noqa: E402

BLOCK = 64


def _count(name: str, n: int) -> Any:
    return pb_utils.Tensor(name, np.array([[n]], dtype=np.int32))


class TritonPythonModel:
    def initialize(self, args: dict[str, Any]) -> None:
        self.cache: set[bytes] = set()

    def _reuse(self, p: mock.EnsembleParams) -> None:
        flush = os.environ.get("AIROUTER_KV_FLUSH")
        if flush and os.path.exists(flush):
            self.cache.clear()
            os.remove(flush)
        if "return_perf_metrics" not in p.inputs:
            return
        blocks = [p.prompt[: (i + 1) * BLOCK] for i in range(len(p.prompt) // BLOCK)]
        reused = 0
        while reused < len(blocks) and blocks[reused] in self.cache:
            reused += 1
        self.cache.update(blocks)
        total = -(-len(p.prompt) // BLOCK)
        p.extra = [_count("kv_cache_alloc_new_blocks", total - reused),
                   _count("kv_cache_reused_blocks", reused),
                   _count("kv_cache_alloc_total_blocks", total)]

    async def execute(self, requests: list[Any]) -> None:
        await mock.serve_all(requests, lambda r: mock.serve_ensemble(r, on_parse=self._reuse))

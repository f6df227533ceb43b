"""Ensemble-interface mock whose failures look like a real engine's, chosen by the prompt."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

# A __pycache__ in the repository root would look like a model folder to Triton.
sys.dont_write_bytecode = True
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root
import _mock_common as mock  # noqa: E402

OOM = (
    "[TensorRT-LLM][ERROR] CUDA runtime error in cudaMallocAsync(ptr, n, mCudaStream->get()): "
    "out of memory (/app/tensorrt_llm/cpp/tensorrt_llm/runtime/tllmBuffers.h:125)"
)
TOO_LONG = "Prompt length (9000) exceeds maximum input length (4096)."


class TritonPythonModel:
    def initialize(self, args: dict[str, Any]) -> None:
        self.seen: set[bytes] = set()

    async def execute(self, requests: list[Any]) -> None:
        await mock.serve_all(requests, self._serve)

    async def _serve(self, request: Any) -> None:
        prompt = mock.as_bytes(mock.scalar(request, "text_input", b""))
        first = prompt not in self.seen
        self.seen.add(prompt)
        sender = request.get_response_sender()
        if b"[[oom]]" in prompt or (b"[[once]]" in prompt and first):
            mock.send_error(sender, OOM)
        elif b"[[too-long]]" in prompt and first:
            mock.send_error(sender, TOO_LONG)
        else:
            await mock.serve_ensemble(request)

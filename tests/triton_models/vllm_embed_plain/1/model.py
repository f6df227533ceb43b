"""The vLLM embedding interface over plain ModelInfer: one response per request."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

# A __pycache__ in the repository root would look like a model folder to Triton.
sys.dont_write_bytecode = True
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root
import _mock_common as mock  # noqa: E402


class TritonPythonModel:
    def execute(self, requests: list[Any]) -> list[Any]:
        out = []
        for request in requests:
            try:
                out.append(mock.vllm_embed_response(request))
            except Exception as e:  # noqa: BLE001
                out.append(mock.error_response(str(e)))
        return out

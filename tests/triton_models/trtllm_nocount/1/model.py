"""Mock of a TensorRT-LLM `ensemble` that reports no token counts (no return_num_* inputs)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

# A __pycache__ in the repository root would look like a model folder to Triton.
sys.dont_write_bytecode = True
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root
import _mock_common as mock  # noqa: E402


class TritonPythonModel:
    async def execute(self, requests: list[Any]) -> None:
        await mock.serve_all(requests, mock.serve_ensemble)

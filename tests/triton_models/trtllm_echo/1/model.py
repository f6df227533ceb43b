"""Like trtllm_nonstream, but the model cannot be told `exclude_input_in_output`: it always
echoes the prompt before its answer, and the router must strip it."""

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
        return mock.whole_text_responses(requests)

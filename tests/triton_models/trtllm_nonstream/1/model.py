"""Ensemble-interface mock that is NOT decoupled: one whole-text response per request."""

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

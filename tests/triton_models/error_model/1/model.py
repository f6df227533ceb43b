"""Ensemble-interface mock that answers every request with an in-band error."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

# A __pycache__ in the repository root would look like a model folder to Triton.
sys.dont_write_bytecode = True
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root
import _mock_common as mock  # noqa: E402


class TritonPythonModel:
    def execute(self, requests: list[Any]) -> None:
        for request in requests:
            mock.send_error(request.get_response_sender(), "mock failure: invalid input")

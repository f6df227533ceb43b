"""Mock of Triton's vLLM backend serving an embedding model (decoupled: one response, FINAL)."""

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
            sender = request.get_response_sender()
            try:
                sender.send(mock.vllm_embed_response(request), flags=mock.FINAL)
            except Exception as e:  # noqa: BLE001
                mock.send_error(sender, str(e))

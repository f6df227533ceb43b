"""Ensemble mock that streams a piece every 50 ms and logs when it starts and is cancelled.

Log lines (JSON) go to the file named by AIROUTER_CANCEL_LOG, so tests can prove that a
client disconnect reached the model.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

# A __pycache__ in the repository root would look like a model folder to Triton.
sys.dont_write_bytecode = True
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root
import _mock_common as mock  # noqa: E402


def _log(p: mock.EnsembleParams, key: str) -> None:
    path = os.environ.get("AIROUTER_CANCEL_LOG")
    if not path:
        return
    line = json.dumps({"request_id": p.request_id, "prompt": p.prompt_text, key: time.time()})
    with open(path, "a", encoding="utf-8") as f:
        f.write(line + "\n")


async def _serve(request: Any) -> None:
    await mock.serve_ensemble(
        request,
        pieces=lambda p: mock.cycled(p.max_tokens),
        delay=0.05,
        poll=0.01,
        on_first=lambda p: _log(p, "started_at"),
        on_cancel=lambda p: _log(p, "cancelled_at"),
    )


class TritonPythonModel:
    async def execute(self, requests: list[Any]) -> None:
        await mock.serve_all(requests, _serve)

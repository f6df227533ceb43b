"""Ensemble mock that starts its answer only after 3 s (a slow prefill)."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

# A __pycache__ in the repository root would look like a model folder to Triton.
sys.dont_write_bytecode = True
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root
import _mock_common as mock  # noqa: E402

DELAY = 3.0


async def _serve(request: Any) -> None:
    await asyncio.sleep(DELAY)
    await mock.serve_ensemble(request)


class TritonPythonModel:
    async def execute(self, requests: list[Any]) -> None:
        await mock.serve_all(requests, _serve)

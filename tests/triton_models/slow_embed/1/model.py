"""The embed_model formula, answered after 3 s."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

# A __pycache__ in the repository root would look like a model folder to Triton.
sys.dont_write_bytecode = True
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root
import _mock_common as mock  # noqa: E402

DIM = 8
DELAY = 3.0


class TritonPythonModel:
    def execute(self, requests: list[Any]) -> list[Any]:
        time.sleep(DELAY)
        responses = []
        for request in requests:
            texts = mock.pb_utils.get_input_tensor_by_name(request, "text").as_numpy().reshape(-1)
            vectors = np.array(
                [mock.embedding_values(mock.as_bytes(t), DIM) for t in texts], dtype=np.float32
            )
            tensor = mock.pb_utils.Tensor("embedding", vectors.reshape(len(texts), DIM))
            responses.append(mock.pb_utils.InferenceResponse(output_tensors=[tensor]))
        return responses

"""Never asked anything by the router: it refuses the model by its config."""

from __future__ import annotations

from typing import Any


class TritonPythonModel:
    def execute(self, requests: list[Any]) -> list[Any]:
        raise NotImplementedError

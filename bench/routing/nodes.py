"""The routing bench's two kinds of simulated nodes, behind one face: started, reset between
runs, read for their ground truth, and named in a router config.

- "openai": bench/routing/sim_node.py, several vLLM-like OpenAI HTTP nodes in one process.
- "triton": one `tritonserver` per node serving the decoupled Python-backend model
  bench/routing/triton_sim/sim (TensorRT-LLM's ensemble interface and nv_trt_llm_* metrics).
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tests.support.procs import free_port, spawn, wait_http
from tests.support.triton import (
    TritonServer,
    bytes_input,
    run_triton,
    scalar_input,
    send_stream,
    triton_backend_dir,
)

TRITON_REPO = Path(__file__).resolve().parent / "triton_sim"


def _router_backend(urls: list[str], kind: str, balance: str, prefix: str, metrics: float,
                    extra: str = "") -> str:
    return f"""
[backends.sim]
type = "{kind}"
urls = [{", ".join(urls)}]
balance = "{balance}"
retries = 3
health_interval = 1
metrics_interval = {metrics}
prefix = {{ {prefix} }}
{extra}
[models.m]
backend = "sim"
backend_model = "sim"
""" + ('prompt_format = "chatml"\n' if kind == "triton" else "")


@dataclass
class HttpNodes:
    ports: list[int]
    kind: str = "openai"

    def config(self, balance: str, prefix: str, metrics: float, resume: bool = False) -> str:
        urls = [f'"http://127.0.0.1:{p}/v1"' for p in self.ports]
        return _router_backend(urls, "openai", balance, prefix, metrics,
                               'resume = "continue_final_message"' if resume else "")

    def reset(self) -> None:
        for p in self.ports:
            req = urllib.request.Request(f"http://127.0.0.1:{p}/sim/reset", method="POST")
            urllib.request.urlopen(req, timeout=5).close()

    def stats(self) -> list[dict[str, Any]]:
        out = []
        for p in self.ports:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{p}/sim/stats", timeout=5) as r:
                    out.append(dict(json.loads(r.read())))
            except OSError:  # killed
                pass
        return out


@contextlib.contextmanager
def http_nodes(n: int, tmp: Path, prefill_ms_per_token: float = 0.1) -> Iterator[HttpNodes]:
    ports = [free_port() for _ in range(n)]
    cmd = [sys.executable, "-m", "bench.routing.sim_node", "--ports", ",".join(map(str, ports)),
           "--prefill-ms-per-token", str(prefill_ms_per_token)]
    with spawn(cmd, log=tmp / "sim.log") as proc:
        for p in ports:
            wait_http(f"http://127.0.0.1:{p}/v1/models", timeout=30, proc=proc)
        yield HttpNodes(ports)


@dataclass
class TritonNode:
    server: TritonServer
    metrics_port: int

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"


@dataclass
class TritonNodes:
    nodes: list[TritonNode]
    kind: str = "triton"

    def config(self, balance: str, prefix: str, metrics: float, resume: bool = False) -> str:
        # Triton backends do not resume streams.
        urls = [f'{{ url = "{n.server.grpc_url}", metrics_url = "{n.metrics_url}" }}'
                for n in self.nodes]
        return _router_backend(urls, "triton", balance, prefix, metrics)

    def reset(self) -> None:
        for n in self.nodes:
            send_stream(n.server.grpc_url, "sim", {
                "text_input": bytes_input("<|sim_reset|>"),
                "max_tokens": scalar_input(1, np.int32)}, timeout=10)

    def stats(self) -> list[dict[str, Any]]:
        out = []
        for n in self.nodes:
            try:
                with urllib.request.urlopen(n.metrics_url, timeout=5) as r:
                    text = r.read().decode()
            except OSError:
                continue
            s: dict[str, Any] = {}
            for line in text.splitlines():
                if line.startswith("sim_stats{"):
                    stat = line.split('stat="', 1)[1].split('"', 1)[0]
                    s[stat] = float(line.rsplit(" ", 1)[1])
            s["elapsed"] = time.time() - s.pop("started_unix", time.time())
            out.append(s)
        return out


@contextlib.contextmanager
def triton_nodes(n: int, tmp: Path, prefill_ms_per_token: float = 0.1,
                 cache_tokens: int | None = None) -> Iterator[TritonNodes]:
    """`n` tritonservers on 127.0.0.1, one sim model each, metrics on a port of their own."""
    env = {"AIROUTER_SIM_PREFILL_MS_PER_TOKEN": str(prefill_ms_per_token)}
    if cache_tokens is not None:
        env["AIROUTER_SIM_CACHE_TOKENS"] = str(cache_tokens)
    backends = triton_backend_dir(tmp / "triton-backends")
    with contextlib.ExitStack() as stack:
        nodes = []
        for i in range(n):
            port = free_port()
            server = stack.enter_context(run_triton(
                TRITON_REPO, log=tmp / f"triton-{i}.log", models=["sim"], env=env,
                backend_dir=backends,
                extra_args=["--allow-metrics=true", f"--metrics-port={port}",
                            "--metrics-address=127.0.0.1", "--allow-gpu-metrics=false",
                            "--allow-cpu-metrics=false"]))
            nodes.append(TritonNode(server, port))
        yield TritonNodes(nodes)

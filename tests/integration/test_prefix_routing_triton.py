"""balance = "prefix_load" on a Triton backend: the rendered prompt's prefix picks the node.
One Triton server under two names makes two nodes (the access log says which served); three
Triton servers, each with the simulated TensorRT-LLM engine of the routing bench
(bench/routing/triton_sim), are nodes with caches of their own and nv_trt_llm_* metrics."""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.routing.nodes import triton_nodes
from tests.support.router import RouterProc, run_router
from tests.support.triton import TritonServer, run_triton

pytestmark = pytest.mark.triton

REPO = Path(__file__).resolve().parents[1] / "triton_models"


@pytest.fixture(scope="module")
def router(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RouterProc]:
    tmp = tmp_path_factory.mktemp("triton-prefix")
    with run_triton(REPO, log=tmp / "triton.log", models=["trtllm_echo"]) as t:
        yield from _router(t, tmp)


def _router(t: TritonServer, tmp: Path) -> Iterator[RouterProc]:
    cfg = f"""
[server]
api_keys = ["sk-t"]

[backends.pair]
type = "triton"
urls = ["{t.grpc_url}", "localhost:{t.grpc_port}"]
balance = "prefix_load"
health_interval = 0

[models.m]
backend = "pair"
backend_model = "trtllm_echo"
prompt_format = "chatml"
"""
    with run_router(cfg, tmp) as r:
        yield r


def _ask(r: RouterProc, system: str, question: str) -> None:
    req = urllib.request.Request(
        r.base_url + "/chat/completions",
        headers={"Authorization": "Bearer sk-t", "Content-Type": "application/json"},
        data=json.dumps({"model": "m", "max_tokens": 4, "messages": [
            {"role": "system", "content": system},
            {"role": "user", "content": question}]}).encode())
    with urllib.request.urlopen(req, timeout=20) as resp:
        assert resp.status == 200


def _served_by(r: RouterProc, count: int) -> list[str]:
    """The node of each access log line, in order, once `count` lines are written (the log
    is written off the request path)."""
    deadline = time.monotonic() + 10
    while True:
        lines = [json.loads(line.split("airouter.access ", 1)[1].split("] ", 1)[1])
                 for line in r.log_text().splitlines() if "airouter.access" in line]
        if len(lines) >= count or time.monotonic() > deadline:
            return [x["node"] for x in lines]
        time.sleep(0.05)


def test_a_shared_rendered_prefix_lands_on_one_node(router: RouterProc) -> None:
    # 12 groups: the odds that every cold home is the same one of two nodes are 1 in 2,048.
    for g in range(12):
        system = f"You answer for team {g}. " * 60
        for q in range(3):
            _ask(router, system, f"question {q}")
    nodes = _served_by(router, 36)
    groups = [set(nodes[i : i + 3]) for i in range(0, 36, 3)]
    assert all(len(n) == 1 for n in groups), groups
    assert len(set(nodes)) == 2  # cold prefixes spread over both


def test_triton_sim_nodes_hold_their_prefixes_and_report_their_engine(tmp_path: Path) -> None:
    with triton_nodes(3, tmp_path, prefill_ms_per_token=0.01) as nodes:
        nodes.reset()
        cfg = '[server]\napi_keys = ["sk-t"]\n' + nodes.config("prefix_load", "", 0.2)
        with run_router(cfg, tmp_path) as r:
            for g in range(8):  # all on one of 3 nodes: 1 in 2,187
                system = f"You answer for team {g}. " * 100
                for q in range(4):
                    _ask(r, system, f"question {q}")
            served = _served_by(r, 32)
            health = json.loads(urllib.request.urlopen(r.url + "/health", timeout=5).read())
        stats = nodes.stats()
    groups = [set(served[i : i + 4]) for i in range(0, 32, 4)]
    assert all(len(n) == 1 for n in groups), groups
    assert len(set(served)) >= 2
    # The engines' own count: each group's prompt was computed once, then found in cache.
    prompt = sum(s["prompt_tokens"] for s in stats)
    cached = sum(s["cached_tokens"] for s in stats)
    assert sum(s["requests"] for s in stats) == 32
    assert cached / prompt > 0.6, (cached, prompt)
    # The router read the TensorRT-LLM families: the KV capacity, 750 blocks of 16 tokens.
    engines = [n.get("engine") for b in health["backends"].values() for n in b["nodes"]]
    assert engines and all(e and e["kv_tokens"] == 12_000 for e in engines), health

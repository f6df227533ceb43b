"""TensorRT-LLM's own word on its KV cache, fed back to `balance = "prefix_load"`: a model that
declares `return_perf_metrics` and `kv_cache_reused_blocks` (the `trtllm_perf` mock) is asked
for them, its reused-block count confirms or contradicts the prefix index's prediction, and
the `airouter_prefix_cache_*` counters say so. A model without them is sent nothing new."""

from __future__ import annotations

import json
import re
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.router import RouterProc, run_router
from tests.support.triton import TritonServer, run_triton

pytestmark = pytest.mark.triton

REPO = Path(__file__).resolve().parents[1] / "triton_models"


class Setup:
    def __init__(self, router: RouterProc, requests: Path, flush: Path) -> None:
        self.router, self.requests, self.flush = router, requests, flush


@pytest.fixture(scope="module")
def triton(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TritonServer, Path]]:
    tmp = tmp_path_factory.mktemp("triton-kv-feedback")
    env = {"AIROUTER_REQUEST_LOG": str(tmp / "requests.jsonl"),
           "AIROUTER_KV_FLUSH": str(tmp / "flush")}
    with run_triton(REPO, log=tmp / "triton.log", models=["trtllm_perf", "trtllm_ensemble"],
                    env=env) as t:
        yield t, tmp


def _config(t: TritonServer, balance: str) -> str:
    # One Triton server under two names: two nodes, one engine cache.
    return f"""
[server]
api_keys = ["sk-t"]

[backends.pair]
type = "triton"
urls = ["{t.grpc_url}", "localhost:{t.grpc_port}"]
balance = "{balance}"
health_interval = 0

[models.perf]
backend = "pair"
backend_model = "trtllm_perf"
prompt_format = "chatml"

[models.plain]
backend = "pair"
backend_model = "trtllm_ensemble"
prompt_format = "chatml"
"""


@pytest.fixture(scope="module")
def setup(triton: tuple[TritonServer, Path]) -> Iterator[Setup]:
    t, tmp = triton
    (tmp / "prefix").mkdir()
    with run_router(_config(t, "prefix_load"), tmp / "prefix") as r:
        yield Setup(r, tmp / "requests.jsonl", tmp / "flush")


def _ask(r: RouterProc, model: str, system: str, question: str, stream: bool = False) -> str:
    req = urllib.request.Request(
        r.base_url + "/chat/completions",
        headers={"Authorization": "Bearer sk-t", "Content-Type": "application/json"},
        data=json.dumps({"model": model, "max_tokens": 4, "stream": stream, "messages": [
            {"role": "system", "content": system},
            {"role": "user", "content": question}]}).encode())
    with urllib.request.urlopen(req, timeout=20) as resp:
        assert resp.status == 200
        return str(resp.read().decode())


def _counters(r: RouterProc) -> dict[str, float]:
    """Each airouter_prefix_cache_* counter of the backend, summed over its nodes."""
    text = urllib.request.urlopen(r.url + "/metrics", timeout=5).read().decode()
    out: dict[str, float] = {}
    for m in re.finditer(r'^airouter_prefix_cache_(\w+)_total\{[^}]*backend="pair"[^}]*\} (\S+)$',
                         text, re.M):
        out[m[1]] = out.get(m[1], 0.0) + float(m[2])
    return out


def _wait_for(r: RouterProc, name: str, at_least: float) -> dict[str, float]:
    deadline = time.monotonic() + 5
    while True:
        c = _counters(r)
        if c.get(name, 0.0) >= at_least or time.monotonic() > deadline:
            return c
        time.sleep(0.05)


def _sent(requests: Path, marker: str) -> list[list[str]]:
    """The input names of each request the mocks got whose prompt holds `marker`."""
    lines = [json.loads(x) for x in requests.read_text().splitlines()]
    return [x["inputs"] for x in lines if marker in x["prompt"]]


def test_reused_blocks_confirm_and_contradict_predicted_hits(setup: Setup) -> None:
    r = setup.router
    before = _counters(r)
    system = "You answer for the confirmation team. " * 40
    for q in range(4):
        body = _ask(r, "perf", system, f"question {q}", stream=q % 2 == 1)
        # The engine's metrics stay between the router and the engine.
        assert "kv_cache" not in body
    c = _wait_for(r, "reported", before.get("reported", 0) + 4)
    grew = {k: c.get(k, 0.0) - before.get(k, 0.0) for k in
            ("reported", "predicted", "confirmed", "contradicted")}
    # The first was cold (no prediction, nothing reused); the three after were predicted on
    # the node that had it, and the engine reused the shared prompt's blocks.
    assert grew == {"reported": 4, "predicted": 3, "confirmed": 3, "contradicted": 0}, grew
    assert all("return_perf_metrics" in i for i in _sent(setup.requests, "confirmation team"))

    # The engine lost its cache (a restart the scrape did not see): the next prediction is
    # denied, counted, and the index demoted.
    setup.flush.touch()
    _ask(r, "perf", system, "question after the flush")
    c2 = _wait_for(r, "contradicted", c.get("contradicted", 0) + 1)
    assert c2.get("contradicted", 0) - c.get("contradicted", 0) == 1, (c, c2)
    assert c2.get("predicted", 0) - c.get("predicted", 0) == 1
    assert c2.get("confirmed", 0) == c.get("confirmed", 0)
    assert not setup.flush.exists()
    # Cached again now: confirmed.
    _ask(r, "perf", system, "question once more")
    c3 = _wait_for(r, "confirmed", c2.get("confirmed", 0) + 1)
    assert c3.get("confirmed", 0) - c2.get("confirmed", 0) == 1, (c2, c3)
    assert "Traceback" not in r.log_text()


def test_a_model_without_perf_metrics_is_sent_no_such_input(setup: Setup) -> None:
    r = setup.router
    before = _counters(r)
    system = "You answer for the plain team. " * 40
    for q in range(3):
        _ask(r, "plain", system, f"question {q}", stream=q == 1)
    sent = _sent(setup.requests, "plain team")
    assert len(sent) == 3
    assert all("return_perf_metrics" not in i and "text_input" in i for i in sent), sent
    # Nothing reported, so nothing counted for it.
    time.sleep(0.2)
    assert _counters(r).get("reported", 0) == before.get("reported", 0)


def test_without_a_prefix_balancer_the_metrics_are_not_asked_for(
        triton: tuple[TritonServer, Path], tmp_path: Path) -> None:
    t, tmp = triton
    with run_router(_config(t, "least_inflight"), tmp_path) as r:
        for q in range(2):
            _ask(r, "perf", "You answer for the unbalanced team. " * 40, f"question {q}")
    sent = _sent(tmp / "requests.jsonl", "unbalanced team")
    assert len(sent) == 2 and all("return_perf_metrics" not in i for i in sent), sent

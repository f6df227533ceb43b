"""Triton in-band errors: an engine fault is the backend's (502, retried on another node before
the first byte, counted against the node); a request the model refuses is the client's (400)."""

from __future__ import annotations

import json
import os
import signal
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.test_resilience import wait_until
from tests.support.openapi import validate
from tests.support.router import RouterProc, run_router
from tests.support.triton import TritonServer, run_triton

pytestmark = pytest.mark.triton

REPO = Path(__file__).resolve().parents[1] / "triton_models"
FULL = "Hello, world! Café 😀 The end."
AUTH = {"Authorization": "Bearer sk-t", "Content-Type": "application/json"}


@pytest.fixture(scope="module")
def cancel_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cancel") / "cancel.jsonl"


@pytest.fixture(scope="module")
def triton(tmp_path_factory: pytest.TempPathFactory, cancel_log: Path
           ) -> Iterator[TritonServer]:
    tmp = tmp_path_factory.mktemp("triton")
    with run_triton(REPO, log=tmp / "triton.log", models=["engine_fault", "cancel_model",
                                                             "late_model", "slow_embed"],
                    env={"AIROUTER_CANCEL_LOG": str(cancel_log)}) as server:
        yield server


@pytest.fixture(scope="module")
def router(triton: TritonServer, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[RouterProc]:
    # The same server under two names: two nodes to the router.
    cfg = f"""
[server]
api_keys = ["sk-t"]

[backends.pair]
type = "triton"
urls = ["{triton.grpc_url}", "localhost:{triton.grpc_port}"]
health_interval = 0
retries = 1
eject_after = 2
cooldown = 60

[models.m]
backend = "pair"
backend_model = "engine_fault"
prompt_format = "chatml"

[backends.hasty]
type = "triton"
url = "{triton.grpc_url}"
health_interval = 0
retries = 0
first_token_timeout = 1

[models.late]
backend = "hasty"
backend_model = "late_model"
prompt_format = "chatml"

[models.late-embed]
backend = "hasty"
backend_model = "slow_embed"
"""
    with run_router(cfg, tmp_path_factory.mktemp("router")) as r:
        yield r


def chat(router: RouterProc, content: str, stream: bool = False) -> tuple[int, bytes]:
    req = urllib.request.Request(
        router.base_url + "/chat/completions", headers=AUTH,
        data=json.dumps({"model": "m", "stream": stream,
                         "messages": [{"role": "user", "content": content}]}).encode())
    try:
        with urllib.request.urlopen(req, timeout=20) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def streamed_text(raw: bytes) -> str:
    events = [e.removeprefix(b"data: ") for e in raw.split(b"\n\n") if e]
    assert events[-1] == b"[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert not any("error" in c for c in chunks), chunks
    return "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)


def nodes(router: RouterProc) -> list[str]:
    try:
        with urllib.request.urlopen(router.url + "/health", timeout=5) as r:
            health = json.loads(r.read())
    except urllib.error.HTTPError as e:  # 503: no node up
        health = json.loads(e.read())
    return [n["status"] for n in health["backends"]["pair"]["nodes"]]


@pytest.mark.parametrize(("path", "payload"), [
    ("/chat/completions", {"model": "late", "messages": [{"role": "user", "content": "hi"}]}),
    ("/embeddings", {"model": "late-embed", "input": "hi"}),
])
def test_first_token_timeout_bounds_a_whole_answer(router: RouterProc, path: str,
                                                   payload: dict) -> None:
    # The models start their answer after 3 s; first_token_timeout is 1 s.
    t0 = time.monotonic()
    req = urllib.request.Request(router.base_url + path, headers=AUTH,
                                 data=json.dumps(payload).encode())
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req, timeout=20)
    took = time.monotonic() - t0
    body = json.loads(e.value.read())
    validate("ErrorResponse", body)
    assert e.value.code == 504, body
    assert "first_token_timeout" in body["error"]["message"], body
    assert took < 3, took  # the model answers after 3 s: a 200 then


def test_client_fault_is_a_400_and_not_retried(router: RouterProc) -> None:
    content = f"[[too-long]] {time.time()}"
    status, raw = chat(router, content)
    assert status == 400, raw
    err = json.loads(raw)
    validate("ErrorResponse", err)
    assert err["error"]["type"] == "invalid_request_error"
    assert "exceeds maximum input length" in err["error"]["message"]
    # Not retried: only the first request with this prompt is refused, and that was it.
    assert chat(router, content)[0] == 200
    assert nodes(router) == ["up", "up"]  # and not held against the nodes


def test_engine_fault_is_retried_on_another_node(router: RouterProc) -> None:
    tag = time.time()
    # The first request with a prompt fails with a CUDA out-of-memory error on whichever node
    # gets it; the retry on the other node succeeds: the client never sees the fault.
    status, raw = chat(router, f"[[once]] whole {tag}")
    assert status == 200, raw
    assert json.loads(raw)["choices"][0]["message"]["content"] == FULL
    status, raw = chat(router, f"[[once]] streamed {tag}", stream=True)
    assert status == 200, raw
    assert streamed_text(raw) == FULL


def test_engine_fault_everywhere_is_a_502_that_ejects_the_nodes(router: RouterProc) -> None:
    for stream in (False, True):
        status, raw = chat(router, f"[[oom]] {time.time()}", stream=stream)
        assert status == 502, raw
        err = json.loads(raw)
        validate("ErrorResponse", err)
        assert err["error"]["type"] == "upstream_error"
        assert err["error"]["code"] == "backend_failed"
        # The engine's words (paths, internals) stay in the router's log.
        assert "cudaMalloc" not in err["error"]["message"]
    # Two requests, each tried on both nodes: two failures in a row on each.
    assert nodes(router) == ["ejected", "ejected"]
    assert "out of memory" in router.log_text()
    # With every node ejected the backend still serves (panic routing), and a node that
    # answers is taken back: once its call has ended, which may be just after the client got
    # the answer (the router reads the call's status after the last response).
    status, raw = chat(router, f"after {time.time()}")
    assert status == 200 and json.loads(raw)["choices"][0]["message"]["content"] == FULL
    wait_until(lambda: "up" in nodes(router), timeout=5, what="the answering node taken back")


def test_shutdown_during_the_clean_up_still_cancels_and_logs_a_complete_answer(
        triton: TritonServer, cancel_log: Path, tmp_path: Path) -> None:
    """A stop sequence cuts the answer; the model goes on, so the router drains the call for up
    to 2 s before cancelling it. A shutdown whose grace period (0.5 s) ends during that drain
    cancels the clean-up itself: the gRPC call must still be cancelled, and the answer the
    client got in full is logged as such."""
    cfg = f"""
[server]
api_keys = ["sk-t"]
shutdown_grace = 0.5
[backends.t]
type = "triton"
url = "{triton.grpc_url}"
health_interval = 0
[models.c]
backend = "t"
backend_model = "cancel_model"
prompt_format = "chatml"
"""
    marker = f"drain-{time.time()}"
    with run_router(cfg, tmp_path) as router:
        req = urllib.request.Request(
            router.base_url + "/chat/completions", headers={**AUTH, "x-request-id": marker},
            data=json.dumps({"model": "c", "stream": True, "max_tokens": 400, "stop": ["wor"],
                             "messages": [{"role": "user", "content": marker}]}).encode())
        with urllib.request.urlopen(req, timeout=20) as r:
            raw = r.read()
        assert streamed_text(raw) == "Hello, "
        t_term = time.monotonic()
        os.kill(router.proc.pid, signal.SIGTERM)
        assert router.proc.wait(20) == 0
        took = time.monotonic() - t_term
    lines = [json.loads(line.split(f"airouter.access [{marker}] ", 1)[1])
             for line in router.log_text().splitlines() if f"airouter.access [{marker}] " in line]
    assert [(x["status"], x["outcome"]) for x in lines] == [(200, "ok")], lines
    cancelled = [json.loads(line) for line in cancel_log.read_text().splitlines()
                 if marker in line and "cancelled_at" in line]
    assert cancelled, "the model never saw the call cancelled"
    assert took < 10

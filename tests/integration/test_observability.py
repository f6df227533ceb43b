"""Metrics, traces and access logs, observed from outside: /metrics, an OTLP receiver, the log."""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import CLIENT_KEY, UPSTREAM_KEY, fake_config
from tests.support.fake_upstream import FakeUpstream
from tests.support.otlp import Receiver, run_receiver
from tests.support.procs import free_port
from tests.support.router import RouterProc, run_router

MSGS = [{"role": "user", "content": "one two three"}]


def scrape(router: RouterProc) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(router.url + "/metrics", timeout=10) as r:
        assert r.headers["content-type"].startswith("text/plain")
        text = r.read().decode()
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def total(samples: dict, name: str, **labels: str) -> float:
    return sum(v for (n, lab), v in samples.items()
               if n == name and all(dict(lab).get(k) == want for k, want in labels.items()))


@pytest.fixture(scope="module")
def two_workers(upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory
                ) -> Iterator[RouterProc]:
    cfg = fake_config(upstream.url, dead_port=free_port())
    with run_router(cfg, tmp_path_factory.mktemp("obs"), workers=2,
                    env={"FAKE_UPSTREAM_KEY": UPSTREAM_KEY}) as r:
        yield r


def test_metrics_add_up_across_two_workers(two_workers: RouterProc) -> None:
    before = scrape(two_workers)
    n_whole, n_stream = 12, 8
    for _ in range(n_whole):
        # A new client per request: new connections spread over both workers.
        c = openai.OpenAI(base_url=two_workers.base_url, api_key=CLIENT_KEY, max_retries=0)
        r = c.chat.completions.create(model="echo", messages=MSGS)
        assert r.usage is not None
        c.close()
    for _ in range(n_stream):
        c = openai.OpenAI(base_url=two_workers.base_url, api_key=CLIENT_KEY, max_retries=0)
        list(c.chat.completions.create(model="echo", messages=MSGS, stream=True,
                                       stream_options={"include_usage": True}))
        c.close()
    for _ in range(2):
        # fake-slow spaces its content chunks 0.3 s apart: real inter-token gaps.
        c = openai.OpenAI(base_url=two_workers.base_url, api_key=CLIENT_KEY, max_retries=0)
        list(c.chat.completions.create(model="slow", messages=MSGS, stream=True))
        c.close()
    with pytest.raises(openai.NotFoundError):
        openai.OpenAI(base_url=two_workers.base_url, api_key=CLIENT_KEY,
                      max_retries=0).chat.completions.create(model="nope", messages=MSGS)
    with pytest.raises(openai.InternalServerError):
        openai.OpenAI(base_url=two_workers.base_url, api_key=CLIENT_KEY,
                      max_retries=0).chat.completions.create(model="dead", messages=MSGS)
    time.sleep(0.3)  # metrics are recorded just after the last byte is sent
    # Several scrapes land on different workers: each must show the sum over both.
    for _ in range(4):
        after = scrape(two_workers)

        def delta(name: str, after: dict = after, **labels: str) -> float:
            return total(after, name, **labels) - total(before, name, **labels)

        assert delta("airouter_requests_total", model="echo", status="200") == n_whole + n_stream
        assert delta("airouter_requests_total", model="dead", status="502") == 1
        assert delta("airouter_request_duration_seconds_count", model="echo") == n_whole + n_stream
        assert delta("airouter_time_to_first_token_seconds_count", model="echo") == n_stream
        assert delta("airouter_time_to_first_token_seconds_count", model="slow") == 2
        assert delta("airouter_inter_token_latency_seconds_count", model="slow") >= 8
        assert delta("airouter_inter_token_latency_seconds_sum", model="slow") > 0.25 * 8
        assert delta("airouter_inter_token_latency_seconds_bucket", model="slow", le="0.25") < 4
        # fake-echo: 3 prompt words, reply "echo: one two three" = 4 words.
        assert delta("airouter_prompt_tokens_total", model="echo") == 3 * (n_whole + n_stream)
        assert delta("airouter_completion_tokens_total", model="echo") == 4 * (n_whole + n_stream)
        assert delta("airouter_upstream_errors_total", backend="dead") == 1
        assert total(after, "airouter_requests_in_flight", model="echo") == 0
        node = [dict(lab)["node"] for (n, lab) in after if n == "airouter_requests_total"
                and dict(lab).get("model") == "echo"]
        assert node and node[0].startswith("127.0.0.1:")


def test_node_label_joins_node_up_requests_and_health(two_workers: RouterProc) -> None:
    c = openai.OpenAI(base_url=two_workers.base_url, api_key=CLIENT_KEY, max_retries=0)
    assert c.chat.completions.create(model="echo", messages=MSGS).choices
    time.sleep(0.3)
    samples = scrape(two_workers)

    def nodes(name: str) -> set[str]:
        return {dict(lab)["node"] for (n, lab) in samples
                if n == name and dict(lab).get("backend") == "fake"}

    up = nodes("airouter_backend_node_up")
    assert len(up) == 1 and up == nodes("airouter_requests_total")
    with urllib.request.urlopen(two_workers.url + "/health", timeout=10) as r:
        health = json.loads(r.read())
    assert [n["url"] for n in health["backends"]["fake"]["nodes"]] == sorted(up)
    assert sorted(up)[0].startswith("127.0.0.1:") and "/" not in sorted(up)[0]


def test_glob_aliases_are_labelled_by_their_pattern(router: RouterProc) -> None:
    c = openai.OpenAI(base_url=router.base_url, api_key=CLIENT_KEY, max_retries=0)
    for name in ("gpt-a1", "gpt-b2", "gpt-c3"):
        assert c.chat.completions.create(model=name, messages=MSGS).model == name
    time.sleep(0.3)
    samples = scrape(router)
    models = {dict(lab).get("model") for (n, lab) in samples if n == "airouter_requests_total"}
    assert "gpt-*" in models and not {"gpt-a1", "gpt-b2", "gpt-c3"} & models


def test_unprintable_request_ids_are_replaced(router: RouterProc) -> None:
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", router.port, timeout=10)
    conn.putrequest("POST", "/v1/chat/completions")
    conn.putheader("Authorization", f"Bearer {CLIENT_KEY}")
    conn.putheader("Content-Type", "application/json")
    conn.putheader("x-request-id", b"bad\xe9id")  # obs-text: valid HTTP, not ASCII
    body = json.dumps({"model": "echo", "messages": MSGS}).encode()
    conn.putheader("Content-Length", str(len(body)))
    conn.endheaders(body)
    r = conn.getresponse()
    r.read()
    # (A minted id is hex: it may itself contain "bad", so it is matched whole.)
    assert r.status == 200 and re.fullmatch(r"[0-9a-f-]{36}", r.headers["x-request-id"])
    conn.close()


@pytest.mark.parametrize("rid", [
    'x] {"request_id":"forged","status":200} [',  # would make a second JSON record
    "a b",
    "x" * 129,
    "id\u2028two",
])
def test_request_ids_outside_the_safe_charset_are_replaced_and_echoed(
        router: RouterProc, rid: str) -> None:
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", router.port, timeout=10)
    body = json.dumps({"model": "echo", "messages": MSGS}).encode()
    conn.request("POST", "/v1/chat/completions", body, {
        "Authorization": f"Bearer {CLIENT_KEY}", "Content-Type": "application/json",
        "x-request-id": rid.encode("utf-8")})  # type: ignore[dict-item]
    r = conn.getresponse()
    r.read()
    conn.close()
    minted = r.headers["x-request-id"]
    assert r.status == 200 and minted != rid
    assert re.fullmatch(r"[0-9a-f-]{36}", minted), minted
    tag = f" airouter.access [{minted}] "
    deadline = time.monotonic() + 5
    while tag not in router.log_text() and time.monotonic() < deadline:
        time.sleep(0.02)
    [line] = [ln for ln in router.log_text().splitlines() if tag in ln]
    assert json.loads(line.split(tag, 1)[1])["request_id"] == minted
    assert "forged" not in router.log_text()


def test_request_ids_in_the_safe_charset_are_kept(router: RouterProc) -> None:
    c = openai.OpenAI(base_url=router.base_url, api_key=CLIENT_KEY, max_retries=0)
    rid = "Az09._:/+=@-" + "x" * 116  # every allowed character, 128 in all
    r = c.chat.completions.with_raw_response.create(model="echo", messages=MSGS,
                                                    extra_headers={"x-request-id": rid})
    assert r.headers["x-request-id"] == rid


def test_unnamed_key_labels_carry_no_function_of_the_key(router: RouterProc) -> None:
    c = openai.OpenAI(base_url=router.base_url, api_key=CLIENT_KEY, max_retries=0)
    c.chat.completions.create(model="echo", messages=MSGS)
    keys: set[str | None] = set()
    deadline = time.monotonic() + 5
    while "key-0" not in keys and time.monotonic() < deadline:  # counted once a second
        time.sleep(0.1)
        keys = {dict(lab).get("key") for (n, lab) in scrape(router)
                if n == "airouter_key_requests_total"}
    with urllib.request.urlopen(router.url + "/metrics", timeout=10) as r:
        metrics_text = r.read().decode()
    req = urllib.request.Request(router.base_url + "/usage",
                                 headers={"Authorization": f"Bearer {CLIENT_KEY}"})
    with urllib.request.urlopen(req, timeout=10) as r:
        usage_text = r.read().decode()
    digest = hashlib.sha256(CLIENT_KEY.encode()).hexdigest()
    assert "key-0" in keys
    assert '"key-0"' in usage_text
    for text in (metrics_text, usage_text, router.log_text()):
        for i in range(0, 56, 4):  # no 8 consecutive hex digits of the key's digest
            assert digest[i:i + 8] not in text


def test_access_log_has_one_line_per_request_and_no_keys(router: RouterProc) -> None:
    c = openai.OpenAI(base_url=router.base_url, api_key=CLIENT_KEY, max_retries=0)
    r = c.chat.completions.with_raw_response.create(model="echo", messages=MSGS,
                                                    extra_headers={"x-request-id": "rid-777"})
    assert r.headers["x-request-id"] == "rid-777"
    lines: list[dict] = []
    deadline = time.monotonic() + 5
    while not lines and time.monotonic() < deadline:  # the line is written after the reply
        time.sleep(0.02)
        lines = [json.loads(line.split(" airouter.access [rid-777] ", 1)[1])
                 for line in router.log_text().splitlines() if "airouter.access [rid-777]" in line]
    assert len(lines) == 1
    rec = lines[0]
    assert rec["request_id"] == "rid-777" and rec["status"] == 200 and rec["model"] == "echo"
    assert rec["backend"] == "fake" and rec["key"] == "key-0"
    assert rec["tokens_in"] == 3 and rec["tokens_out"] == 4 and rec["duration_ms"] > 0
    assert CLIENT_KEY not in router.log_text() and UPSTREAM_KEY not in router.log_text()


@pytest.fixture(scope="module")
def traced(upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[tuple[RouterProc, Receiver]]:
    cfg = fake_config(upstream.url, dead_port=free_port())
    with run_receiver() as receiver, run_router(
        cfg, tmp_path_factory.mktemp("traced"),
        env={"FAKE_UPSTREAM_KEY": UPSTREAM_KEY, "OTLP_ENDPOINT": f"127.0.0.1:{receiver.port}"},
    ) as r:
        yield r, receiver


def test_traces_continue_incoming_context_and_reach_the_backend(
    traced: tuple[RouterProc, Receiver], upstream: FakeUpstream
) -> None:
    router, receiver = traced
    trace_id, parent = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    upstream.clear()
    c = openai.OpenAI(base_url=router.base_url, api_key=CLIENT_KEY, max_retries=0)
    stream = c.chat.completions.create(
        model="echo", messages=MSGS, stream=True, max_tokens=50, temperature=0.5,
        stream_options={"include_usage": True},
        extra_headers={"traceparent": f"00-{trace_id}-{parent}-01"})
    list(stream)
    spans = [s for s in receiver.wait_for(2) if s.trace_id == trace_id]
    server = next(s for s in spans if s.kind == 2)  # SPAN_KIND_SERVER
    client = next(s for s in spans if s.kind == 3)  # SPAN_KIND_CLIENT
    assert server.parent_span_id == parent
    assert client.parent_span_id == server.span_id
    assert server.name == "chat echo" and client.name == "chat fake-echo"
    assert server.service == "airouter"
    a = client.attributes
    assert a["gen_ai.operation.name"] == "chat"
    assert a["gen_ai.request.model"] == "fake-echo"
    assert a["gen_ai.response.model"] == "fake-echo-0613"
    assert a["gen_ai.request.max_tokens"] == 50 and a["gen_ai.request.temperature"] == 0.5
    assert a["gen_ai.usage.input_tokens"] == 3 and a["gen_ai.usage.output_tokens"] == 4
    assert a["gen_ai.response.finish_reasons"] == ["stop"]
    assert a["gen_ai.provider.name"] == "openai"
    assert "gen_ai.first_token" in client.events
    assert server.attributes["http.response.status_code"] == 200
    # The backend saw our client span as its parent, in the same trace.
    sent = [r for r in upstream.requests if r["method"] == "POST"][-1]["headers"]["traceparent"]
    assert sent == f"00-{trace_id}-{client.span_id}-01"


def test_errors_are_recorded_on_spans(traced: tuple[RouterProc, Receiver]) -> None:
    router, receiver = traced
    trace_id = os.urandom(16).hex()
    c = openai.OpenAI(base_url=router.base_url, api_key=CLIENT_KEY, max_retries=0)
    with pytest.raises(openai.InternalServerError):
        c.chat.completions.create(model="dead", messages=MSGS, extra_headers={
            "traceparent": f"00-{trace_id}-{os.urandom(8).hex()}-01"})
    deadline_spans = receiver.wait_for(4)
    mine = [s for s in deadline_spans if s.trace_id == trace_id]
    assert len(mine) == 2
    assert all(s.status_code == 2 for s in mine)  # STATUS_CODE_ERROR
    assert all(s.attributes["error.type"] == "bad_gateway" for s in mine)


def test_client_strings_are_bounded_in_logs_and_labels(router: RouterProc) -> None:
    name = "gpt-" + "x" * 1_000_000  # matched by the glob alias "gpt-*"
    before = len(router.log.read_bytes())
    c = openai.OpenAI(base_url=router.base_url, api_key=CLIENT_KEY, max_retries=0, timeout=30)
    r = c.chat.completions.with_raw_response.create(
        model=name, messages=MSGS, extra_headers={"x-request-id": "rid-long-name"})
    assert r.parse().model == name
    with pytest.raises(openai.NotFoundError):
        c.chat.completions.create(model="nope" + "y" * 1_000_000, messages=MSGS)
    lines: list[str] = []
    deadline = time.monotonic() + 5
    while not lines and time.monotonic() < deadline:
        time.sleep(0.05)
        lines = [ln for ln in router.log_text().splitlines() if "[rid-long-name]" in ln]
    assert lines
    logged = json.loads(lines[0].split(" airouter.access [rid-long-name] ", 1)[1])["model"]
    assert logged == name[:256] + f"...[{len(name) - 256} more chars]"
    assert len(router.log.read_bytes()) - before < 4096
    samples = scrape(router)
    assert all(len(dict(lab).get("model", "")) <= 256 for (_, lab) in samples)


def test_span_attributes_are_bounded(traced: tuple[RouterProc, Receiver]) -> None:
    router, receiver = traced
    trace_id = os.urandom(16).hex()
    name = "gpt-" + "z" * 100_000
    c = openai.OpenAI(base_url=router.base_url, api_key=CLIENT_KEY, max_retries=0)
    c.chat.completions.create(model=name, messages=MSGS, extra_headers={
        "traceparent": f"00-{trace_id}-{os.urandom(8).hex()}-01"})
    deadline = time.monotonic() + 10
    mine: list = []
    while len(mine) < 2 and time.monotonic() < deadline:
        mine = [s for s in receiver.wait_for(1) if s.trace_id == trace_id]
    server = next(s for s in mine if s.kind == 2)
    assert server.attributes["gen_ai.request.model"].startswith("gpt-zzz")
    assert len(server.attributes["gen_ai.request.model"]) < 300
    assert len(server.name) < 320


@pytest.fixture(scope="module")
def guarded(upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[RouterProc]:
    cfg = fake_config(upstream.url, dead_port=free_port()).replace(
        "[server]\n", '[server]\nmetrics_key = "${METRICS_KEY}"\n', 1)
    with run_router(cfg, tmp_path_factory.mktemp("guarded"),
                    env={"FAKE_UPSTREAM_KEY": UPSTREAM_KEY, "METRICS_KEY": "mk-secret-1"}) as r:
        yield r


def _get(url: str, auth: str | None) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(url, headers={"Authorization": auth} if auth else {})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def test_metrics_key_guards_metrics_and_health_detail(guarded: RouterProc) -> None:
    from tests.integration.test_bad_input import assert_error

    for path in ("/metrics", "/health"):
        for auth in (None, "Bearer wrong", f"Bearer {CLIENT_KEY}", "mk-secret-1",
                     "Basic mk-secret-1", "Bearer mk-secret-1x"):
            status, headers, body = _get(guarded.url + path, auth)
            assert_error(status, body, 401, code="invalid_api_key")
            assert headers["content-type"].startswith("application/json")
            assert b"mk-secret" not in body
        status, headers, body = _get(guarded.url + path, "Bearer mk-secret-1")
        assert status == 200, body
    status, _, body = _get(guarded.url + "/metrics", "Bearer mk-secret-1")
    assert b"airouter_" in body
    status, _, body = _get(guarded.url + "/health", "Bearer mk-secret-1")
    assert "backends" in json.loads(body)
    for path in ("/health/live", "/health/ready"):
        assert _get(guarded.url + path, None)[0] == 200
    assert "mk-secret-1" not in guarded.log_text()


def test_metrics_and_health_detail_open_without_metrics_key(router: RouterProc) -> None:
    assert _get(router.url + "/metrics", None)[0] == 200
    status, _, body = _get(router.url + "/health", None)
    assert status == 200 and "backends" in json.loads(body)


def test_a_stream_broken_after_its_start_is_an_error_span(
        traced: tuple[RouterProc, Receiver]) -> None:
    router, receiver = traced
    trace_id = os.urandom(16).hex()
    c = openai.OpenAI(base_url=router.base_url, api_key=CLIENT_KEY, max_retries=0)
    # fake-die cuts the connection after two content chunks: the client had its 200.
    with pytest.raises(openai.APIError):
        list(c.chat.completions.create(model="die", messages=MSGS, stream=True, extra_headers={
            "traceparent": f"00-{trace_id}-{os.urandom(8).hex()}-01"}))
    deadline = time.monotonic() + 10
    mine: list = []
    while len(mine) < 2 and time.monotonic() < deadline:
        mine = [s for s in receiver.wait_for(1) if s.trace_id == trace_id]
        time.sleep(0.1)
    assert len(mine) == 2
    assert all(s.status_code == 2 for s in mine)  # STATUS_CODE_ERROR
    assert all(s.attributes["error.type"] == "bad_gateway" for s in mine)
    server = next(s for s in mine if s.kind == 2)
    assert server.attributes["http.response.status_code"] == 200

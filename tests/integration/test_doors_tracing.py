"""The Responses and Messages routes are traced like chat: a server span for the route, a client
span for the backend call, the incoming context continued and passed on."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import anthropic
import openai
import pytest

from tests.conftest import CLIENT_KEY, UPSTREAM_KEY, fake_config
from tests.support.fake_upstream import FakeUpstream
from tests.support.otlp import Receiver, SpanRecord, run_receiver
from tests.support.procs import free_port
from tests.support.router import RouterProc, run_router


@pytest.fixture(scope="module")
def traced(upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[tuple[RouterProc, Receiver]]:
    cfg = fake_config(upstream.url, dead_port=free_port())
    with run_receiver() as receiver, run_router(
        cfg, tmp_path_factory.mktemp("traced-doors"),
        env={"FAKE_UPSTREAM_KEY": UPSTREAM_KEY, "OTLP_ENDPOINT": f"127.0.0.1:{receiver.port}"},
    ) as r:
        yield r, receiver


@pytest.mark.parametrize("route", ["responses", "messages"])
def test_route_spans(traced: tuple[RouterProc, Receiver], upstream: FakeUpstream,
                     route: str) -> None:
    router, receiver = traced
    trace_id, parent = os.urandom(16).hex(), os.urandom(8).hex()
    headers = {"traceparent": f"00-{trace_id}-{parent}-01"}
    upstream.clear()
    if route == "responses":
        c = openai.OpenAI(base_url=router.base_url, api_key=CLIENT_KEY, max_retries=0)
        list(c.responses.create(model="echo", input="hello there", max_output_tokens=50,
                                stream=True, extra_headers=headers))
    else:
        a = anthropic.Anthropic(base_url=router.url, api_key=CLIENT_KEY, max_retries=0)
        a.messages.create(model="echo", max_tokens=50, extra_headers=headers,
                          messages=[{"role": "user", "content": "hello there"}])
    deadline = time.monotonic() + 10
    spans: list[SpanRecord] = []
    while len(spans) < 2 and time.monotonic() < deadline:  # exported in batches, soon after
        time.sleep(0.05)
        with receiver.lock:
            spans = [s for s in receiver.spans if s.trace_id == trace_id]
    assert len(spans) == 2
    server = next(s for s in spans if s.kind == 2)
    client = next(s for s in spans if s.kind == 3)
    assert server.parent_span_id == parent and client.parent_span_id == server.span_id
    assert server.name == "chat echo" and client.name == "chat fake-echo"
    assert server.attributes["url.path"] == f"/v1/{route}"
    assert client.attributes["gen_ai.request.max_tokens"] == 50
    assert client.attributes["gen_ai.usage.output_tokens"] == 3  # "echo: hello there"
    sent = [r for r in upstream.requests if r["method"] == "POST"][-1]["headers"]["traceparent"]
    assert sent == f"00-{trace_id}-{client.span_id}-01"

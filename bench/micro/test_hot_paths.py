"""Micro-benchmarks of the router's per-request and per-token pieces (pytest-benchmark).

Run: make bench-micro. Each test also checks its result, so a change that breaks a piece
fails here instead of getting faster.
"""

from __future__ import annotations

from typing import Any

import pytest
from pytest_benchmark.fixture import BenchmarkFixture

from airouter.backends.base import Endpoint, Target
from airouter.backends.http.parser import ResponseParser
from airouter.backends.openai.relay import rewrite_model
from airouter.backends.openai.relay_state import first_bad_event
from airouter.output.chunks import ChunkWriter
from airouter.output.cutter import StopMatcher
from airouter.output.textfix import TextPipeline
from airouter.protocol.requests import ChatRequest, decode
from airouter.protocol.sse import SSEDecoder, frame
from airouter.templates import load_template
from bench import bodies
from bench.micro import http1_before
from tests.integration.test_triton_mocks import PIECES

TCP_PIECE = 1448  # one loopback/Ethernet MSS: what a read returns from a fast upstream
CHAT_BODY = bodies.chat_request(bodies.ALIAS_SSE, stream=True, max_tokens=256)
SSE = bodies.sse_body()
SSE_PIECES = [SSE[i : i + TCP_PIECE] for i in range(0, len(SSE), TCP_PIECE)]
CHUNK = bodies.chunk_json(" Denmark")
# The 64 chunk events of the SSE body as the pass-through relay sees them (whole events).
EVENTS = SSE[: SSE.rindex(b"data: [DONE]")]
TOKENS = [" The", " prince", " of", " Den", "mark", " seeks", " re", "venge", ".", "\n"] * 7
# The Triton mock's pieces, two of them splitting a UTF-8 character (pinned by its tests).
MOCK_PIECES = PIECES
MESSAGES: list[dict[str, Any]] = [
    {"role": "system", "content": "You are a helpful assistant. Answer briefly."},
    {"role": "user", "content": "What is the capital of France?"},
    {"role": "assistant", "content": "Paris."},
    {"role": "user", "content": "And of Germany? Answer in one word, please."},
]


def test_request_decode(benchmark: BenchmarkFixture) -> None:
    body, view = benchmark(decode, Endpoint.CHAT, CHAT_BODY)
    assert isinstance(view, ChatRequest) and view.stream and body["max_tokens"] == 256


def test_chunk_encode(benchmark: BenchmarkFixture) -> None:
    writer = ChunkWriter(Endpoint.CHAT, bodies.ALIAS_SSE, include_usage=False)
    out = benchmark(writer.text, " Denmark")
    assert out.endswith(b'"finish_reason":null}]}') and b'"content":" Denmark"' in out


def test_sse_parse_64_events(benchmark: BenchmarkFixture) -> None:
    def parse() -> list[bytes]:
        decoder = SSEDecoder()
        out: list[bytes] = []
        for piece in SSE_PIECES:
            out += decoder.feed(piece)
        return out + decoder.close()

    events = benchmark(parse)
    assert len(events) == bodies.SSE_CHUNKS + 1 and events[-1] == b"[DONE]"


def test_sse_frame_batch(benchmark: BenchmarkFixture) -> None:
    batch = [CHUNK] * 8
    out = benchmark(frame, batch)
    assert out.count(b"data: ") == 8


def test_model_rewrite_chunk(benchmark: BenchmarkFixture, target: Target) -> None:
    out = benchmark(rewrite_model, CHUNK, target)
    assert f'"model":"{bodies.ALIAS_SSE}"'.encode() in out


def test_model_rewrite_completion(benchmark: BenchmarkFixture, target: Target) -> None:
    body = bodies.completion_json()
    out = benchmark(rewrite_model, body, target)
    assert f'"model":"{bodies.ALIAS_SSE}"'.encode() in out


def test_stop_matcher_70_tokens(benchmark: BenchmarkFixture) -> None:
    def run() -> str:
        m = StopMatcher(["\n\nUser:", "</answer>", "###"])
        return "".join(m.feed(t) for t in TOKENS) + m.flush()

    out = benchmark(run)
    assert out == "".join(TOKENS)


def test_text_pipeline_mock_stream(benchmark: BenchmarkFixture) -> None:
    def run() -> str:
        p = TextPipeline(special_tokens=("<|im_end|>", "<|endoftext|>"), stops=["###"])
        return "".join(p.feed(raw) for raw in MOCK_PIECES) + p.flush()

    out = benchmark(run)
    assert out == "Hello, world! Café 😀 The end."


def test_template_render_chatml(benchmark: BenchmarkFixture) -> None:
    template = load_template(format="chatml")
    out = benchmark(template.render, MESSAGES)
    assert out.startswith("<|im_start|>system\n") and out.endswith("<|im_start|>assistant\n")


def test_event_json_check_64_events(benchmark: BenchmarkFixture) -> None:
    """What the pass-through relay spends to keep non-JSON events from clients: every event
    validated (in C, no objects built)."""
    assert benchmark(first_bad_event, EVENTS) == -1
    bad = EVENTS.replace(b'"content":"', b'"content":', 1)
    assert first_bad_event(bad) >= 0


def test_event_brace_check_64_events(benchmark: BenchmarkFixture) -> None:
    """The cheaper check it was weighed against (each payload starts with { and ends with }),
    which would let `{"a": }` through."""

    def braces(out: bytes, events: int) -> int:
        start, find = 6, out.find
        for _ in range(events):
            end = find(b"\n\n", start)
            if out[start : start + 1] != b"{" or out[end - 1 : end] != b"}":
                return start - 6
            start = end + 8
        return -1

    assert benchmark(braces, EVENTS, bodies.SSE_CHUNKS) == -1


# The upstream's HTTP/1.1 framing of the 64-event stream: one chunk per event, as vLLM and
# llama.cpp send them.
HTTP_HEAD = (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
             b"Transfer-Encoding: chunked\r\n\r\n")
HTTP_CHUNKS = [b"%x\r\n%s\n\n\r\n" % (len(e) + 2, e) for e in SSE.split(b"\n\n")[:-1]]
HTTP_CHUNKED = HTTP_HEAD + b"".join(HTTP_CHUNKS) + b"0\r\n\r\n"
# Read in one-MSS pieces (a fast upstream), or one event per read (a paced one).
HTTP_PIECES = [HTTP_CHUNKED[i : i + TCP_PIECE] for i in range(0, len(HTTP_CHUNKED), TCP_PIECE)]
HTTP_EVENT_READS = [HTTP_HEAD, *HTTP_CHUNKS, b"0\r\n\r\n"]
# llhttp (the router's) against the hand-written parser it replaced.
PARSERS: dict[str, Any] = {"llhttp": ResponseParser, "before": http1_before.ResponseParser}
HTTP_JSON = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
             % len(bodies.completion_json()) + bodies.completion_json())


@pytest.mark.parametrize("parser", PARSERS)
def test_http1_chunked_64_events_mss_reads(benchmark: BenchmarkFixture, parser: str) -> None:
    def parse() -> bytes:
        p = PARSERS[parser]()
        out = [p.feed(piece) for piece in HTTP_PIECES]
        assert p.complete
        return b"".join(out)

    assert benchmark(parse) == SSE


@pytest.mark.parametrize("parser", PARSERS)
def test_http1_chunked_one_event_per_read(benchmark: BenchmarkFixture, parser: str) -> None:
    def parse() -> bytes:
        p = PARSERS[parser]()
        out = [p.feed(piece) for piece in HTTP_EVENT_READS]
        assert p.complete
        return b"".join(out)

    assert benchmark(parse) == SSE


@pytest.mark.parametrize("parser", PARSERS)
def test_http1_content_length_response(benchmark: BenchmarkFixture, parser: str) -> None:
    def parse() -> bytes:
        p = PARSERS[parser]()
        body = p.feed(HTTP_JSON)
        assert p.complete and p.keep_alive
        return body

    assert benchmark(parse) == bodies.completion_json()


@pytest.mark.parametrize("parser", PARSERS)
def test_http1_one_sse_chunk(benchmark: BenchmarkFixture, parser: str) -> None:
    """One chunk of a stream in one read (a token's event): the per-chunk cost."""
    p = PARSERS[parser]()
    p.feed(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
    event = EVENTS[: EVENTS.index(b"\n\n") + 2]
    chunk = b"%x\r\n%s\r\n" % (len(event), event)
    assert benchmark(p.feed, chunk) == event and not p.complete


def test_relay_pass_through_64_events(benchmark: BenchmarkFixture, target: Target) -> None:
    """One read of 64 whole events through the pass-through relay: framing check, JSON check
    of every event, `model` rewritten to the alias, the last two payloads kept."""
    from airouter.backends.base import Stats
    from airouter.backends.openai.relay_state import RelayState

    def relay() -> bytes | None:
        return RelayState("b", target.model_repl, Stats()).raw(EVENTS)

    out = benchmark(relay)
    assert out is not None and out.count(b"\n\n") == bodies.SSE_CHUNKS
    assert out.count(target.model_repl) == bodies.SSE_CHUNKS

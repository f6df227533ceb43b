"""The listener's HTTP/1.1 rules, probed with raw sockets against a real router: an incomplete or
malformed request body is answered 400 and never reaches a backend; a head past
`max_header_bytes` is 431; an HTTP/1.1 request needs exactly one Host header."""

from __future__ import annotations

import json
import os
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import CLIENT_KEY, UPSTREAM_KEY, fake_config
from tests.integration.test_bad_input import assert_error
from tests.support.fake_upstream import FakeUpstream
from tests.support.procs import free_port
from tests.support.router import RouterProc, run_router

AUTH_LINES = f"Authorization: Bearer {CLIENT_KEY}\r\nContent-Type: application/json\r\n"


def body_for(marker: str) -> bytes:
    return json.dumps({"model": "echo", "messages": [{"role": "user", "content": marker}]}).encode()


def exchange(port: int, data: bytes, *, half_close: bool = False, wait: float = 5.0) -> tuple[
        bytes, bool]:
    """Send raw bytes; read until the router closes the connection or `wait` passes.
    (what came back, whether the router closed the connection)."""
    with socket.create_connection(("127.0.0.1", port), timeout=wait) as s:
        s.sendall(data)
        if half_close:
            s.shutdown(socket.SHUT_WR)
        got = b""
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            try:
                part = s.recv(65536)
            except TimeoutError:
                return got, False
            except ConnectionResetError:
                return got, True
            if not part:
                return got, True
            got += part
        return got, False


def split(reply: bytes) -> tuple[int, str, bytes]:
    head, _, body = reply.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    return int(lines[0].split()[1]), "\n".join(lines[1:]).lower(), body


def never_forwarded(upstream: FakeUpstream, marker: str) -> None:
    time.sleep(0.3)
    assert not [r for r in upstream.requests if marker in repr(r)]


def head(path: str, extra: str = "") -> str:
    return f"POST {path} HTTP/1.1\r\nHost: x\r\n{AUTH_LINES}{extra}"


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/messages/count_tokens"])
def test_a_body_shorter_than_its_content_length_is_400_and_never_served(
        router: RouterProc, upstream: FakeUpstream, path: str) -> None:
    marker = f"short-{uuid.uuid4()}"
    body = body_for(marker)
    data = (head(path, f"Content-Length: {len(body) + 50}\r\n\r\n")).encode() + body
    reply, closed = exchange(router.port, data, half_close=True)
    status, headers, payload = split(reply)
    err = json.loads(payload)
    assert status == 400, reply
    assert "connection: close" in headers and closed
    assert "incomplete" in json.dumps(err)
    never_forwarded(upstream, marker)


@pytest.mark.parametrize("tail", [
    "zz\r\n\r\n",  # a chunk-size line that is not hex, after a complete JSON body
    "5\r\nabc",  # a chunk cut short, then the client half-closes
    "",  # no last chunk, then the client half-closes
    "0\r\nX-Trailer: 1\r\n\r\n",  # trailers: granian cannot pass them on, so not accepted
], ids=["bad-size-line", "cut-chunk", "no-last-chunk", "trailers"])
def test_a_malformed_or_unfinished_chunked_body_is_400_and_never_served(
        router: RouterProc, upstream: FakeUpstream, tail: str) -> None:
    marker = f"chunked-{uuid.uuid4()}"
    body = body_for(marker)
    data = (head("/v1/chat/completions", "Transfer-Encoding: chunked\r\n\r\n").encode()
            + b"%x\r\n" % len(body) + body + b"\r\n" + tail.encode())
    # (A message that is complete apart from its trailers stays open: no half-close.)
    reply, closed = exchange(router.port, data, half_close="Trailer" not in tail)
    status, headers, payload = split(reply)
    assert_error(status, payload, 400, code="incomplete_body")
    assert "connection: close" in headers and closed
    never_forwarded(upstream, marker)


def test_a_whole_chunked_body_in_several_chunks_is_served(
        router: RouterProc, upstream: FakeUpstream) -> None:
    marker = f"whole-{uuid.uuid4()}"
    body = body_for(marker)
    cut = len(body) // 3
    data = head("/v1/chat/completions", "Transfer-Encoding: chunked\r\n\r\n").encode()
    for part in (body[:cut], body[cut:2 * cut], body[2 * cut:]):
        data += b"%x\r\n" % len(part) + part + b"\r\n"
    reply, _ = exchange(router.port, data + b"0\r\n\r\n", wait=2)
    status, _, payload = split(reply)
    assert status == 200, reply
    assert json.loads(payload)["choices"][0]["message"]["content"] == f"echo: {marker}"


def test_an_incomplete_body_on_the_messages_route_has_anthropic_shape(
        router: RouterProc) -> None:
    body = json.dumps({"model": "echo", "max_tokens": 5,
                       "messages": [{"role": "user", "content": "hi"}]}).encode()
    data = head("/v1/messages", f"Content-Length: {len(body) + 1}\r\n\r\n").encode() + body
    reply, _ = exchange(router.port, data, half_close=True)
    status, _, payload = split(reply)
    err = json.loads(payload)
    assert status == 400 and err["type"] == "error"
    assert err["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize(("what", "data"), [
    ("header-line", "GET /health/live HTTP/1.1\r\nHost: x\r\nX-Big: {fill}\r\n\r\n"),
    ("header-line-17k", "GET /health/live HTTP/1.1\r\nHost: x\r\nX-Big: {fill17}\r\n\r\n"),
    ("url", "GET /health/live?{fill} HTTP/1.1\r\nHost: x\r\n\r\n"),
    ("many-headers", "GET /health/live HTTP/1.1\r\nHost: x\r\n{many}\r\n"),
])
def test_a_head_past_max_header_bytes_is_431(router: RouterProc, what: str, data: str) -> None:
    many = "".join(f"X-H{i}: {'b' * 400}\r\n" for i in range(90))
    raw = data.format(fill="a" * 40_000, fill17="a" * 17_000, many=many)
    reply, closed = exchange(router.port, raw.encode())
    assert reply.startswith(b"HTTP/1.1 431"), reply[:100]
    assert closed


def test_a_head_under_max_header_bytes_is_served(router: RouterProc) -> None:
    raw = f"GET /health/live HTTP/1.1\r\nHost: x\r\nX-Big: {'a' * 16_000}\r\n\r\n"
    reply, _ = exchange(router.port, raw.encode(), wait=2)
    assert reply.startswith(b"HTTP/1.1 200"), reply[:100]


def _rss(pid: int) -> int:
    """Resident bytes of a process and its children (the router's workers)."""
    total = 0
    pids = [pid]
    children = Path(f"/proc/{pid}/task/{pid}/children")
    if children.exists():
        pids += [int(p) for p in children.read_text().split()]
    for p in pids:
        try:
            fields = Path(f"/proc/{p}/statm").read_text().split()
        except OSError:
            continue
        total += int(fields[1]) * os.sysconf("SC_PAGE_SIZE")
    return total


@pytest.fixture(scope="module")
def small_heads(upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory
                ) -> Iterator[RouterProc]:
    cfg = fake_config(upstream.url, dead_port=free_port()).replace(
        "max_body_mb = 1", "max_body_mb = 1\nmax_header_bytes = 8192")
    with run_router(cfg, tmp_path_factory.mktemp("heads"),
                    env={"FAKE_UPSTREAM_KEY": UPSTREAM_KEY}) as r:
        yield r


def test_max_header_bytes_is_configurable(small_heads: RouterProc) -> None:
    raw = f"GET /health/live HTTP/1.1\r\nHost: x\r\nX-Big: {'a' * 10_000}\r\n\r\n"
    reply, closed = exchange(small_heads.port, raw.encode())
    assert reply.startswith(b"HTTP/1.1 431") and closed
    raw = f"GET /health/live HTTP/1.1\r\nHost: x\r\nX-Big: {'a' * 6_000}\r\n\r\n"
    reply, _ = exchange(small_heads.port, raw.encode(), wait=2)
    assert reply.startswith(b"HTTP/1.1 200"), reply[:100]


@pytest.fixture(scope="module")
def large_heads(upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory
                ) -> Iterator[RouterProc]:
    cfg = fake_config(upstream.url, dead_port=free_port()).replace(
        "max_body_mb = 1", "max_body_mb = 1\nmax_header_bytes = 65536")
    with run_router(cfg, tmp_path_factory.mktemp("heads"),
                    env={"FAKE_UPSTREAM_KEY": UPSTREAM_KEY}) as r:
        yield r


@pytest.mark.parametrize("size", [70_000, 100_000])
def test_a_large_max_header_bytes_is_exact_too(large_heads: RouterProc, size: int) -> None:
    """Past 24 KiB granian's parser overshoots its buffer; the router measures the head."""
    raw = f"GET /health/live HTTP/1.1\r\nHost: x\r\nX-Big: {'a' * size}\r\n\r\n"
    reply, closed = exchange(large_heads.port, raw.encode())
    assert reply.startswith(b"HTTP/1.1 431") and closed, reply[:100]
    raw = f"GET /health/live HTTP/1.1\r\nHost: x\r\nX-Big: {'a' * 60_000}\r\n\r\n"
    reply, _ = exchange(large_heads.port, raw.encode(), wait=2)
    assert reply.startswith(b"HTTP/1.1 200"), reply[:100]


def test_unfinished_heads_hold_bounded_memory(small_heads: RouterProc) -> None:
    """200 connections each sending 390 KB of one header line and never ending it: each is
    answered 431 and closed once past the limit; the worker does not hold their bytes."""
    before = _rss(small_heads.proc.pid)
    socks = []
    line = b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 390_000
    try:
        for _ in range(200):
            s = socket.create_connection(("127.0.0.1", small_heads.port), timeout=5)
            socks.append(s)
            try:
                s.sendall(line)
            except (BrokenPipeError, ConnectionResetError):
                pass
        grown = _rss(small_heads.proc.pid) - before
        refused = 0
        for s in socks:
            s.settimeout(5)
            try:
                refused += s.recv(64).startswith(b"HTTP/1.1 431")
            except (ConnectionResetError, TimeoutError):
                pass
    finally:
        for s in socks:
            s.close()
    assert grown < 30 * 1024 * 1024, grown
    assert refused >= 150, refused  # (a reset may beat the answer on a few)


@pytest.mark.parametrize(("hosts", "path"), [
    ("", "/v1/chat/completions"),
    ("Host: a\r\nHost: b\r\n", "/v1/chat/completions"),
    ("", "/health/live"),
    ("Host: a\r\nHost: a\r\n", "/v1/models"),
])
def test_http11_needs_exactly_one_host(
        router: RouterProc, upstream: FakeUpstream, hosts: str, path: str) -> None:
    marker = f"host-{uuid.uuid4()}"
    body = body_for(marker)
    method = "POST" if path.startswith("/v1/chat") else "GET"
    data = (f"{method} {path} HTTP/1.1\r\n{hosts}{AUTH_LINES}Content-Length: {len(body)}\r\n\r\n"
            ).encode() + body
    reply, closed = exchange(router.port, data)
    status, headers, payload = split(reply)
    assert_error(status, payload, 400, code="invalid_host")
    assert "connection: close" in headers and closed
    never_forwarded(upstream, marker)


def test_http10_without_host_is_served(router: RouterProc) -> None:
    reply, _ = exchange(router.port, b"GET /health/live HTTP/1.0\r\n\r\n", wait=3)
    assert reply.startswith(b"HTTP/1.0 200") or reply.startswith(b"HTTP/1.1 200"), reply[:80]


def test_the_messages_route_answers_a_missing_host_in_anthropic_shape(
        router: RouterProc) -> None:
    reply, _ = exchange(router.port, b"POST /v1/messages HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}")
    status, _, payload = split(reply)
    err = json.loads(payload)
    assert status == 400 and err["type"] == "error" and err["error"]["type"] == (
        "invalid_request_error")


def _framing_cases() -> list[bytes]:
    body = body_for("probe")
    post = f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n{AUTH_LINES}".encode()
    n = len(body)
    te = post + b"Transfer-Encoding: chunked\r\n\r\n"
    end = b"\r\n0\r\n\r\n"
    return [
        post + b"Content-Length: %d\r\nTransfer-Encoding: chunked\r\n\r\n" % n + body,
        post + b"Content-Length: %d\r\nContent-Length: %d\r\n\r\n" % (n, n + 1) + body,
        post + b"Content-Length: -1\r\n\r\n" + body,
        post + b"Content-Length: +%d\r\n\r\n" % n + body,
        post + b"Content-Length: 0x10\r\n\r\n" + body,
        post + b"Content-Length: 99999999999999999999\r\n\r\n" + body,
        post + b"Content-Length: %d\r\n\r\n" % (n - 5) + body,  # the rest reads as a request
        post + b"Transfer-Encoding: gzip, chunked\r\n\r\n" + b"%x\r\n" % n + body + end,
        te + b" %x \r\n" % n + body + end,
        te + b"%x;ext=1\r\n" % n + body + end,
        post + b"Transfer-Encoding: chunked\r\n\r\nffffffffffffffffff\r\n" + body,
        post + b"Transfer-Encoding: identity\r\n\r\n" + body,
        post + b"Content-Length : %d\r\n\r\n" % n + body,
        post + b" Content-Length: %d\r\n\r\n" % n + body,
        post + b"X-Bad\x00Header: 1\r\nContent-Length: %d\r\n\r\n" % n + body,
        post + b"X-Bad: a\x01b\r\nContent-Length: %d\r\n\r\n" % n + body,
        post.replace(b"\r\n", b"\n") + b"Content-Length: %d\n\n" % n + body,
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nHost: x\r\n\r\n",
        b"GET /v1/models HTTP/1.0\r\nHost: x\r\n\r\n",
        b"GET /v1/models HTTP/2.0\r\nHost: x\r\n\r\n",
        b"GET /v1/models HTTP/9.9\r\nHost: x\r\n\r\n",
        b"GET /v1/models\r\n\r\n",
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + os.urandom(64),  # a TLS hello
        b"FOO /v1/models HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET http://evil.example/v1/models HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET //v1/../../etc/passwd HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /v1/models%00 HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /v1/models/%ff%fe HTTP/1.1\r\nHost: x\r\n" + AUTH_LINES.encode() + b"\r\n",
        b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /v1/models HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n\r\n",
        post + b"Expect: 100-continue\r\nContent-Length: %d\r\n\r\n" % n + body,
        post + b"Content-Length: %d\r\n\r\n" % n + body + b"GARBAGE\r\n\r\n",
    ]


def test_a_framing_probe_gets_no_5xx_and_the_router_keeps_serving(router: RouterProc) -> None:
    statuses = []
    for raw in _framing_cases():
        reply, _ = exchange(router.port, raw, half_close=True, wait=3)
        for line in reply.split(b"\r\n"):
            if line.startswith(b"HTTP/1."):
                statuses.append(int(line.split()[1]))
    assert statuses and not [s for s in statuses if s >= 500], statuses
    body = body_for("after-probe")
    reply, _ = exchange(router.port, head("/v1/chat/completions",
                                          f"Content-Length: {len(body)}\r\n\r\n").encode()
                        + body, wait=2)
    assert split(reply)[0] == 200


def test_a_body_over_the_limit_is_read_through_then_413_on_a_kept_connection(
        router: RouterProc) -> None:
    """max_body_mb = 1: a 1.5 MB body is read and dropped, then 413, and the connection
    carries the next request; a body declared past twice the limit is 413 and closed."""
    big = b'{"pad": "' + b"x" * 1_500_000 + b'"}'
    ok = body_for("after-413")
    with socket.create_connection(("127.0.0.1", router.port), timeout=10) as s:
        s.sendall(head("/v1/chat/completions", f"Content-Length: {len(big)}\r\n\r\n").encode()
                  + big)
        s.sendall(head("/v1/chat/completions", f"Content-Length: {len(ok)}\r\n\r\n").encode()
                  + ok)
        got = b""
        while got.count(b"HTTP/1.1 ") < 2 or not got.rstrip().endswith(b"}"):
            part = s.recv(65536)
            assert part, got
            got += part
    first, second = got.split(b"HTTP/1.1 ")[1:3]
    assert first.startswith(b"413") and b"request_too_large" in first
    assert second.startswith(b"200") and b"after-413" in second
    # Only the head: the declared length alone gets the 413 and the close (a body sent behind
    # it would race the close, and the client could meet a reset before reading the answer).
    reply, closed = exchange(router.port, head(
        "/v1/chat/completions", f"Content-Length: {3 * 1024 * 1024}\r\n\r\n").encode())
    status, headers, payload = split(reply)
    assert_error(status, payload, 413, code="request_too_large")
    assert "connection: close" in headers and closed

"""Silent and slow clients cannot starve the router: idle, header and body read timeouts, and a
connection cap far above the listen backlog."""

from __future__ import annotations

import contextlib
import http.client
import json
import resource
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import CLIENT_KEY, UPSTREAM_KEY, fake_config
from tests.integration.test_bad_input import OK_BODY, assert_error
from tests.support.fake_upstream import FakeUpstream
from tests.support.procs import free_port
from tests.support.router import RouterProc, run_router

AUTH = {"Authorization": f"Bearer {CLIENT_KEY}", "Content-Type": "application/json"}
SILENT = 2100  # more than granian's default per-worker connection cap (the backlog, 2048)


def chat(port: int, timeout: float) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("POST", "/v1/chat/completions", json.dumps(OK_BODY).encode(), AUTH)
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


@contextlib.contextmanager
def silent_sockets(port: int, n: int) -> Iterator[list[socket.socket]]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < n + 256:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, n + 256), hard))
    socks: list[socket.socket] = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            socks.append(s)
            s.setblocking(False)
            s.connect_ex(("127.0.0.1", port))  # in progress: never wait on a full backlog
        yield socks
    finally:
        for s in socks:
            s.close()


def closed_within(sock: socket.socket, seconds: float) -> tuple[bool, bytes]:
    """Read until the peer closes; (closed, what was received)."""
    sock.settimeout(seconds)
    got = b""
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            data = sock.recv(65536)
            if not data:
                return True, got
            got += data
    except TimeoutError:
        return False, got
    except ConnectionResetError:
        return True, got
    return False, got


def test_silent_connections_do_not_deny_service(router: RouterProc) -> None:
    with silent_sockets(router.port, SILENT):
        time.sleep(0.5)  # let the router accept them
        start = time.monotonic()
        status, body = chat(router.port, timeout=2)
        assert status == 200, body
        assert time.monotonic() - start < 2
    status, _ = chat(router.port, timeout=5)
    assert status == 200


@pytest.fixture(scope="module")
def strict_router(
    upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RouterProc]:
    tmp: Path = tmp_path_factory.mktemp("strict")
    cfg = fake_config(upstream.url, dead_port=free_port()).replace(
        "max_body_mb = 1\n", "max_body_mb = 1\nheader_timeout = 1\nbody_timeout = 1\n", 1
    )
    with run_router(cfg, tmp, env={"FAKE_UPSTREAM_KEY": UPSTREAM_KEY}) as r:
        yield r


def connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=5)


def test_silent_connection_closed_after_header_timeout(strict_router: RouterProc) -> None:
    with connect(strict_router.port) as s:
        start = time.monotonic()
        closed, got = closed_within(s, 5)
        assert closed and got == b""
        assert 0.8 < time.monotonic() - start < 4


def test_partial_headers_closed_after_header_timeout(strict_router: RouterProc) -> None:
    with connect(strict_router.port) as s:
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: app")
        start = time.monotonic()
        closed, _ = closed_within(s, 5)
        assert closed
        assert time.monotonic() - start < 4


def test_idle_keep_alive_closed_after_header_timeout(strict_router: RouterProc) -> None:
    with connect(strict_router.port) as s:
        s.sendall(b"GET /health/live HTTP/1.1\r\nHost: x\r\n\r\n")
        s.settimeout(5)
        assert s.recv(65536).startswith(b"HTTP/1.1 200")
        start = time.monotonic()
        closed, got = closed_within(s, 5)
        assert closed and got == b""
        assert 0.8 < time.monotonic() - start < 4


def test_stalled_body_gets_408_and_close(strict_router: RouterProc) -> None:
    body = json.dumps(OK_BODY).encode()
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {CLIENT_KEY}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    with connect(strict_router.port) as s:
        s.sendall(head + body[:10])
        start = time.monotonic()
        closed, got = closed_within(s, 5)
        elapsed = time.monotonic() - start
    assert closed and 0.8 < elapsed < 4
    head_part, _, payload = got.partition(b"\r\n\r\n")
    assert head_part.startswith(b"HTTP/1.1 408"), got
    assert b"connection: close" in head_part.lower()
    assert_error(408, payload, 408, code="request_timeout")
    # A body that keeps coming, even slowly, is read: the limit is per read, not per body.
    with connect(strict_router.port) as s:
        s.sendall(head)
        for i in range(0, len(body), 20):
            time.sleep(0.3)
            s.sendall(body[i : i + 20])
        s.settimeout(10)
        assert s.recv(65536).startswith(b"HTTP/1.1 200")
    status, _ = chat(strict_router.port, timeout=5)
    assert status == 200

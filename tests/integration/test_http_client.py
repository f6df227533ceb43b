"""The upstream HTTP/1.1 client over real sockets: keep-alive reuse only of connections read to
their end, flow control, the idle timer, gzip, stale connections, and TLS through the router."""

from __future__ import annotations

import asyncio
import gzip
import json
import ssl
import subprocess
import zlib
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import aiohttp
import pytest

from airouter.backends.http import client as http_client
from airouter.backends.http.client import Disconnected, Origin, Pool
from tests.conftest import CLIENT_KEY, UPSTREAM_KEY, fake_config
from tests.support.fake_upstream import MODEL_SUFFIX, FakeUpstream
from tests.support.procs import free_port
from tests.support.router import run_router

Script = Callable[[int, bytes, asyncio.StreamWriter], Awaitable[None]]


class Scripted:
    """A raw HTTP/1.1 server: each request (its head and body) goes to `script` with its number,
    which writes whatever bytes the test wants. Counts the connections it accepted."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.connections = 0
        self.ended = 0  # connections the client closed
        self.requests: list[bytes] = []
        self.writers: list[asyncio.StreamWriter] = []
        self.server: asyncio.Server | None = None

    async def __aenter__(self) -> Scripted:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        for w in self.writers:
            w.close()

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}/v1"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.writers.append(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line[15:])
                request = head + await reader.readexactly(length)
                self.requests.append(request)
                await self.script(len(self.requests) - 1, request, writer)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        self.ended += 1

    @property
    def open(self) -> int:
        return self.connections - self.ended


def pool_for(url: str, idle: float = 5.0) -> Pool:
    return Pool(Origin(url, {"Content-Type": "application/json"}), 2.0, idle, max_idle=4)


def ok(body: bytes, extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n%s" % (len(body), extra, body)


async def test_the_request_head_and_keep_alive_reuse() -> None:
    async def script(n: int, req: bytes, w: asyncio.StreamWriter) -> None:
        w.write(ok(b'{"n": %d}' % n))

    async with Scripted(script) as srv:
        pool = pool_for(srv.url)
        for n in range(3):
            r = await pool.request(b"POST", "/chat/completions", b"{}", {"x-request-id": "r1"})
            assert r.status == 200 and await r.read() == b'{"n": %d}' % n
            r.release()
        assert srv.connections == 1
        head = srv.requests[0].split(b"\r\n")
        assert head[0] == b"POST /v1/chat/completions HTTP/1.1"
        assert set(head[1:-2]) == {
            b"Host: " + srv.url.split("/")[2].encode(), b"Accept-Encoding: identity",
            b"Content-Type: application/json", b"x-request-id: r1", b"Content-Length: 2"}
        pool.close()


async def test_a_response_not_read_to_its_end_never_goes_back_to_the_pool() -> None:
    async def script(n: int, req: bytes, w: asyncio.StreamWriter) -> None:
        w.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n")
        if n == 1:
            w.write(b"0\r\n\r\n")

    async with Scripted(script) as srv:
        pool = pool_for(srv.url)
        r = await pool.request(b"POST", "/chat/completions", b"{}")
        assert await r.readany() == b"first" and not r.at_eof()
        r.release()  # unfinished: closed, not pooled
        assert pool.idle == []
        r = await pool.request(b"POST", "/chat/completions", b"{}")
        assert await r.read() == b"first" and r.at_eof()
        r.release()
        assert srv.connections == 2 and len(pool.idle) == 1
        pool.close()


async def test_connection_close_and_bytes_after_the_body_are_not_reused() -> None:
    async def script(n: int, req: bytes, w: asyncio.StreamWriter) -> None:
        w.write(ok(b"a", b"Connection: close\r\n") if n == 0 else ok(b"b") + b"junk")

    async with Scripted(script) as srv:
        pool = pool_for(srv.url)
        for want in (b"a", b"b"):
            r = await pool.request(b"POST", "/completions", b"{}")
            assert await r.read() == want
            r.release()
            assert pool.idle == []
        assert srv.connections == 2


async def test_flow_control_pauses_a_fast_upstream_for_a_slow_reader() -> None:
    piece = b"data: " + b"x" * 8000 + b"\n\n"
    count = 400  # ~3 MiB, far above the high-water mark

    async def script(n: int, req: bytes, w: asyncio.StreamWriter) -> None:
        w.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        for _ in range(count):
            w.write(b"%x\r\n%s\r\n" % (len(piece), piece))
        w.write(b"0\r\n\r\n")
        await w.drain()

    async with Scripted(script) as srv:
        pool = pool_for(srv.url)
        r = await pool.request(b"POST", "/chat/completions", b"{}")
        conn = r._conn
        assert conn is not None
        got, paused, peak = bytearray(), 0, 0
        while data := await r.readany():
            got += data
            peak = max(peak, len(data))
            await asyncio.sleep(0.002)  # the consumer is behind
            paused += conn.paused
        assert got == piece * count
        # At most one socket read (256 KiB in asyncio) beyond the mark before the pause.
        assert paused and peak <= http_client.HIGH_WATER + 256 * 1024 + len(piece)
        r.release()
        assert len(pool.idle) == 1  # read to its end: reusable
        pool.close()


async def test_the_idle_timer_counts_the_upstreams_silence_not_the_readers() -> None:
    async def script(n: int, req: bytes, w: asyncio.StreamWriter) -> None:
        w.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        for i in range(4):
            w.write(b"1\r\n%d\r\n" % i)
            await asyncio.sleep(0.1)  # never silent for the idle timeout
        if n == 0:
            w.write(b"0\r\n\r\n")
        # n == 1: then silent

    async with Scripted(script) as srv:
        pool = pool_for(srv.url, idle=0.3)
        r = await pool.request(b"POST", "/chat/completions", b"{}")
        await asyncio.sleep(0.6)  # a slow consumer: longer than the idle timeout
        assert await r.read() == b"0123"
        r.release()
        r = await pool.request(b"POST", "/chat/completions", b"{}")
        loop = asyncio.get_running_loop()
        start = loop.time()
        with pytest.raises(TimeoutError):
            while await r.readany():
                pass
        assert 0.6 < loop.time() - start < 1.2  # 4 x 0.1 s of pieces, then 0.3 s of silence
        r.close()
        pool.close()


async def test_the_idle_timer_leaves_the_wait_for_the_head_to_the_caller() -> None:
    async def script(n: int, req: bytes, w: asyncio.StreamWriter) -> None:
        await asyncio.sleep(0.5)  # a long prefill: the head comes late
        w.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\na\r\n")
        # then silent

    async with Scripted(script) as srv:
        pool = pool_for(srv.url, idle=0.2)
        loop = asyncio.get_running_loop()
        start = loop.time()
        r = await pool.request(b"POST", "/chat/completions", b"{}")
        assert loop.time() - start > 0.45
        assert await r.readany() == b"a"
        with pytest.raises(TimeoutError):  # from the head on, the idle timer runs
            await r.readany()
        r.close()
        pool.close()


async def test_a_gzip_body_is_decoded() -> None:
    body = json.dumps({"text": "hello " * 500}).encode()

    async def script(n: int, req: bytes, w: asyncio.StreamWriter) -> None:
        w.write(ok(gzip.compress(body), b"Content-Encoding: gzip\r\n"))

    async with Scripted(script) as srv:
        pool = pool_for(srv.url)
        r = await pool.request(b"POST", "/chat/completions", b"{}")
        assert await r.read() == body
        r.release()
        pool.close()


async def test_a_malformed_response_is_a_clean_error() -> None:
    async def script(n: int, req: bytes, w: asyncio.StreamWriter) -> None:
        w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nab")
        w.close()

    async with Scripted(script) as srv:
        pool = pool_for(srv.url)
        r = await pool.request(b"POST", "/chat/completions", b"{}")
        with pytest.raises(Disconnected):
            await r.read()
        r.close()


async def test_a_post_is_never_sent_twice_when_a_reused_connection_closes_unanswered() -> None:
    async def script(n: int, req: bytes, w: asyncio.StreamWriter) -> None:
        if n == 1:
            w.close()  # read the whole POST, then closed without an answer
        else:
            w.write(ok(b"%d" % n))

    async with Scripted(script) as srv:
        pool = pool_for(srv.url)
        r = await pool.request(b"POST", "/chat/completions", b"{}")
        assert await r.read() == b"0"
        r.release()
        with pytest.raises(Disconnected):
            await pool.request(b"POST", "/chat/completions", b"{}")
        assert len(srv.requests) == 2 and srv.connections == 1  # the upstream saw it once
        pool.close()


@pytest.mark.parametrize(("method", "headers"), [
    (b"GET", {}), (b"POST", {"Idempotency-Key": "k1"})], ids=["GET", "Idempotency-Key"])
async def test_an_idempotent_request_is_replayed_on_a_fresh_connection(
        method: bytes, headers: dict[str, str]) -> None:
    async def script(n: int, req: bytes, w: asyncio.StreamWriter) -> None:
        if n == 1:
            w.close()  # a keep-alive timeout racing the next request: closed, nothing answered
        else:
            w.write(ok(b"%d" % n))

    async with Scripted(script) as srv:
        pool = pool_for(srv.url)
        r = await pool.request(method, "/models", b"", headers)
        assert await r.read() == b"0"
        r.release()
        r = await pool.request(method, "/models", b"", headers)
        assert await r.read() == b"2"
        r.release()
        assert srv.connections == 2 and len(srv.requests) == 3
        # On a fresh connection the same failure is the upstream's, not a stale socket's.
        srv.script = lambda n, req, w: _close(w)
        pool.close()
        with pytest.raises(Disconnected):
            await pool.request(method, "/models", b"", headers)


async def test_a_connection_found_closed_before_writing_is_replaced() -> None:
    async def script(n: int, req: bytes, w: asyncio.StreamWriter) -> None:
        w.write(ok(b"%d" % n))

    async with Scripted(script) as srv:
        pool = pool_for(srv.url)
        r = await pool.request(b"POST", "/chat/completions", b"{}")
        assert await r.read() == b"0"
        r.release()
        conn = pool.idle[0]
        assert conn.transport is not None
        conn.transport.close()  # closing as the next request is about to be written
        r = await pool.request(b"POST", "/chat/completions", b"{}")
        assert await r.read() == b"1"
        r.release()
        assert srv.connections == 2 and len(srv.requests) == 2
        pool.close()


async def _close(w: asyncio.StreamWriter) -> None:
    w.close()


@pytest.fixture(scope="module")
def cert(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path]]:
    d = tmp_path_factory.mktemp("tls")
    crt, key = d / "cert.pem", d / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(crt)],
        check=True, capture_output=True,
    )
    yield crt, key


def test_an_https_upstream_through_the_router(cert: tuple[Path, Path], tmp_path: Path) -> None:
    crt, key = cert
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(crt, key)
    with FakeUpstream(tls=ctx) as up:
        config = fake_config(up.url, dead_port=free_port())
        env = {"FAKE_UPSTREAM_KEY": UPSTREAM_KEY, "SSL_CERT_FILE": str(crt)}
        with run_router(config, tmp_path, env=env) as router:
            asyncio.run(_chat_both_ways(router.base_url))
        sent = [r["json"] for r in up.requests]
        assert [(j["model"], j.get("stream")) for j in sent] == [("fake-echo", None),
                                                                 ("fake-echo", True)]
        assert up.requests[0]["headers"]["authorization"] == f"Bearer {UPSTREAM_KEY}"


async def _chat_both_ways(base: str) -> None:
    auth = {"Authorization": f"Bearer {CLIENT_KEY}"}
    msg = {"model": "echo", "messages": [{"role": "user", "content": "over TLS"}]}
    async with aiohttp.ClientSession(headers=auth) as s:
        async with s.post(base + "/chat/completions", json=msg) as r:
            assert r.status == 200, await r.text()
            body = await r.json()
            assert body["model"] == "echo" and body["choices"][0]["message"]["content"]
        async with s.post(base + "/chat/completions", json={**msg, "stream": True}) as r:
            assert r.status == 200
            text = await r.text()
            assert text.endswith("data: [DONE]\n\n") and MODEL_SUFFIX not in text
            assert '"model":"echo"' in text.replace(" ", "")


async def test_the_idle_stack_is_bounded_and_last_in_first_out() -> None:
    async def script(n: int, req: bytes, w: asyncio.StreamWriter) -> None:
        w.write(ok(b"x"))

    async with Scripted(script) as srv:
        pool = pool_for(srv.url)  # max_idle=4
        replies = [await pool.request(b"POST", "/embeddings", b"{}") for _ in range(6)]
        conns = [r._conn for r in replies]
        for r in replies:
            assert await r.read() == b"x"
            r.release()
        assert pool.idle == conns[:4] and all(c is not None and c.closed for c in conns[4:])
        r = await pool.request(b"POST", "/embeddings", b"{}")
        assert r._conn is conns[3]  # the warmest
        r.close()
        assert srv.connections == 6
        pool.close()


def test_credentials_in_the_url_become_basic_auth_unless_a_key_is_set() -> None:
    fields = Origin("https://user:pa%3Ass@api.example:8443/v1", {}).fields
    assert b"Host: api.example:8443\r\n" in fields
    assert b"Authorization: Basic dXNlcjpwYTpzcw==\r\n" in fields
    keyed = Origin("https://user:pass@api.example/v1", {"Authorization": "Bearer k"}).fields
    assert b"Host: api.example\r\n" in keyed and b"Basic" not in keyed


async def _burst(pool: Pool, n: int) -> None:
    async def one() -> None:
        r = await pool.request(b"POST", "/embeddings", b"{}")
        assert await r.read() == b"x"
        r.release()

    await asyncio.gather(*(one() for _ in range(n)))


@pytest.mark.parametrize("keep_alive", [b"", b"Keep-Alive: timeout=2\r\n"],
                         ids=["default lifetime", "Keep-Alive timeout"])
async def test_idle_connections_are_closed_when_they_expire(
        keep_alive: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(http_client, "KEEPALIVE", 1.0)  # the default lifetime, shortened
    monkeypatch.setattr(http_client, "IDLE_TICK", 0.25, raising=False)

    async def script(n: int, req: bytes, w: asyncio.StreamWriter) -> None:
        await asyncio.sleep(0.05)  # the burst's requests overlap: one connection each
        w.write(ok(b"x", keep_alive))

    async with Scripted(script) as srv:
        pool = Pool(Origin(srv.url, {}), 2.0, 5.0, max_idle=8)
        await _burst(pool, 6)
        assert srv.connections == 6 and srv.open == 6 and len(pool.idle) == 6
        # Lifetime 1 s (the default here, or 2 s less its 1 s margin), then a tick.
        await asyncio.sleep(0.6)
        assert srv.open == 6
        await asyncio.sleep(0.9)
        assert srv.open == 0 and pool.idle == []
        await _burst(pool, 2)  # the pool still works
        assert srv.connections == 8
        pool.close()


def test_keep_alive_lifetimes() -> None:
    life = http_client.keep_alive_lifetime
    assert life("timeout=5, max=100") == 4.0
    assert life("timeout=60") == http_client.KEEPALIVE
    assert life("timeout=1") == 0.5 and life("max=1") == 0 and life("bogus, timeout=x") == 15


async def test_a_reply_that_is_not_http1_fails_at_once() -> None:
    async def script(n: int, req: bytes, w: asyncio.StreamWriter) -> None:
        # An h2c-only server: its SETTINGS frame, then it waits for the client's preface.
        w.write(b"\x00\x00\x06\x04\x00\x00\x00\x00\x00\x00\x03\x00\x00\x00\x64")

    async with Scripted(script) as srv:
        pool = pool_for(srv.url)
        async with asyncio.timeout(2):
            with pytest.raises(http_client.BadResponse):
                await pool.request(b"POST", "/chat/completions", b"{}")
        pool.close()


def _gzip_bomb() -> bytes:
    z = zlib.compressobj(9, zlib.DEFLATED, 31)
    zero = bytes(1024 * 1024)
    return b"".join([z.compress(zero) for _ in range(200)] + [z.flush()])


@pytest.mark.parametrize("case", ["bomb", "trailing garbage", "cut short", "brotli"])
async def test_a_bad_compressed_body_is_refused(case: str) -> None:
    body = gzip.compress(b'{"ok": true}')
    coding = b"gzip"
    if case == "bomb":
        body = _gzip_bomb()
        assert len(body) < 250_000
    elif case == "trailing garbage":
        body += b"garbage"
    elif case == "cut short":
        body = body[:-3]
    else:
        coding = b"br"

    async def script(n: int, req: bytes, w: asyncio.StreamWriter) -> None:
        w.write(ok(body, b"Content-Encoding: " + coding + b"\r\n"))

    async with Scripted(script) as srv:
        pool = pool_for(srv.url)
        with pytest.raises(http_client.BadResponse):
            r = await pool.request(b"POST", "/chat/completions", b"{}")
            got = 0
            while data := await r.readany():
                got += len(data)
                assert got <= 2 * 1024 * 1024  # refused after about 1 MiB of output
        pool.close()


async def test_a_gzip_body_of_two_members_is_decoded_whole() -> None:
    async def script(n: int, req: bytes, w: asyncio.StreamWriter) -> None:
        w.write(ok(gzip.compress(b'{"a": ') + gzip.compress(b'"b"}'),
                   b"Content-Encoding: gzip\r\n"))

    async with Scripted(script) as srv:
        pool = pool_for(srv.url)
        r = await pool.request(b"POST", "/chat/completions", b"{}")
        assert await r.read() == b'{"a": "b"}'
        r.release()
        pool.close()

"""rediss:// with the TLS options redis-py reads from the URL (ssl_ca_certs, ssl_certfile,
ssl_keyfile, ssl_cert_reqs), against a real redis-server on a TLS port that asks for client
certificates; certificates are made with openssl for each run."""

from __future__ import annotations

import asyncio
import shutil
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from airouter.limits import resp
from airouter.limits.engine import WINDOW, Check
from airouter.limits.node_redis import GRANTED, RedisSlots
from airouter.limits.redis_engine import RedisEngine
from tests.support.procs import free_port
from tests.support.redis import RedisServer


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def _certs(d: Path) -> None:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, both signed by it."""
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=ca",
             "-keyout", str(d / "ca.key"), "-out", str(d / "ca.pem"))
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    for name in ("server", "client"):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}",
                 "-keyout", str(d / f"{name}.key"), "-out", str(d / f"{name}.csr"))
        _openssl("x509", "-req", "-in", str(d / f"{name}.csr"), "-CA", str(d / "ca.pem"),
                 "-CAkey", str(d / "ca.key"), "-CAcreateserial", "-days", "2",
                 "-extfile", str(d / "san.ext"), "-out", str(d / f"{name}.pem"))


@pytest.fixture
def tls(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    _certs(tmp_path)
    port = free_port()
    server = RedisServer(tmp_path / "redis.log", extra=(
        "--tls-port", str(port), "--tls-cert-file", str(tmp_path / "server.pem"),
        "--tls-key-file", str(tmp_path / "server.key"),
        "--tls-ca-cert-file", str(tmp_path / "ca.pem"), "--tls-auth-clients", "yes",
    ))
    server.start()
    try:
        yield port, tmp_path
    finally:
        server.stop()


def _url(port: int, d: Path, **opts: str) -> str:
    query = "&".join(f"{k}={v}" for k, v in opts.items())
    return f"rediss://127.0.0.1:{port}/0?{query}"


def test_rediss_with_a_ca_and_a_client_certificate(tls: tuple[int, Path]) -> None:
    port, d = tls
    url = _url(port, d, ssl_ca_certs=str(d / "ca.pem"), ssl_certfile=str(d / "client.pem"),
               ssl_keyfile=str(d / "client.key"))

    async def main() -> None:
        engine, slots = RedisEngine(url, timeout=2), RedisSlots(url, timeout=2)
        await engine.start()
        await slots.start()
        try:
            got = await engine.admit([Check(WINDOW, "t:rpm", 10, 1)], "")
            assert got is not None and got.used == [1] and engine.up
            taken = await slots.take("t", 1, 0, 1)
            assert taken is not None and taken[0] == GRANTED
        finally:
            await engine.aclose()
            await slots.aclose()

    asyncio.run(asyncio.wait_for(main(), 20))


def test_rediss_without_verification_still_sends_the_client_certificate(
    tls: tuple[int, Path],
) -> None:
    port, d = tls
    url = _url(port, d, ssl_cert_reqs="none", ssl_certfile=str(d / "client.pem"),
               ssl_keyfile=str(d / "client.key"))

    async def main() -> None:
        conn = await resp.connect(url)
        try:
            assert await conn.call(b"PING") == b"PONG"
        finally:
            conn.close()

    asyncio.run(asyncio.wait_for(main(), 20))


def test_rediss_refuses_a_server_its_ca_did_not_sign(tls: tuple[int, Path]) -> None:
    port, d = tls
    url = _url(port, d, ssl_certfile=str(d / "client.pem"), ssl_keyfile=str(d / "client.key"))

    async def main() -> None:
        engine = RedisEngine(url, timeout=2)
        await engine.start()
        try:
            assert await engine.admit([Check(WINDOW, "t:rpm", 10, 1)], "") is None
            assert not engine.up
        finally:
            await engine.aclose()

    asyncio.run(asyncio.wait_for(main(), 20))


def test_tls_options_as_redis_py_reads_them(tmp_path: Path) -> None:
    assert resp.tls_context("redis://h/0?ssl_cert_reqs=none") is None
    ctx = resp.tls_context("rediss://h/0")
    assert ctx is not None and ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
    ctx = resp.tls_context("rediss://h/0?ssl_cert_reqs=none")
    assert ctx is not None and ctx.verify_mode == ssl.CERT_NONE and not ctx.check_hostname
    ctx = resp.tls_context("rediss://h/0?ssl_cert_reqs=optional&ssl_check_hostname=false")
    assert ctx is not None and ctx.verify_mode == ssl.CERT_OPTIONAL and not ctx.check_hostname
    with pytest.raises(ValueError, match="ssl_cert_reqs"):
        resp.tls_context("rediss://h/0?ssl_cert_reqs=maybe")
    with pytest.raises(OSError):
        resp.tls_context(f"rediss://h/0?ssl_ca_certs={tmp_path}/missing.pem")

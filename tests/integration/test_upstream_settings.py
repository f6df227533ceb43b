"""An openai backend's operator settings over real sockets: a private CA and a client
certificate (mutual TLS), a forward proxy (the `proxy` key and the proxy environment, CONNECT
tunnels and absolute-form requests, NO_PROXY), and a base URL's query and percent-encoding."""

from __future__ import annotations

import asyncio
import base64
import http.client
import json
import ssl
import subprocess
from pathlib import Path

import pytest

from airouter import config
from airouter.backends.http.client import Origin, Pool
from airouter.config import ConfigError
from tests.conftest import CLIENT_KEY
from tests.support.fake_upstream import FakeUpstream
from tests.support.forward_proxy import ForwardProxy
from tests.support.router import RouterProc, run_router


def _openssl(*args: str | Path) -> None:
    subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True)


def _signed(d: Path, name: str, ext: str) -> None:
    """d/NAME.pem and d/NAME.key: an EC key and a certificate the test CA signs."""
    _openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
             "-nodes", "-subj", f"/CN={name}", "-keyout", d / f"{name}.key",
             "-out", d / f"{name}.csr")
    (d / f"{name}.ext").write_text(ext)
    _openssl("x509", "-req", "-in", d / f"{name}.csr", "-CA", d / "ca.pem", "-CAkey",
             d / "ca.key", "-CAcreateserial", "-days", "1", "-extfile", d / f"{name}.ext",
             "-out", d / f"{name}.pem")


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A private CA, a server certificate for 127.0.0.1 and localhost, a client certificate."""
    d = tmp_path_factory.mktemp("pki")
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
             "-nodes", "-days", "1", "-subj", "/CN=airouter test CA",
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign",
             "-keyout", d / "ca.key", "-out", d / "ca.pem")
    _signed(d, "server", "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
                         "extendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n")
    _signed(d, "client", "extendedKeyUsage=clientAuth\nbasicConstraints=CA:FALSE\n")
    return d


def _server_tls(pki: Path, client_cert: bool) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(pki / "server.pem", pki / "server.key")
    if client_cert:
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(pki / "ca.pem")
    return ctx


def _config(backends: dict[str, str]) -> str:
    """One backend and one model alias (its name) per entry: the backend's own lines."""
    out = f'[server]\napi_keys = ["{CLIENT_KEY}"]\n'
    for name, lines in backends.items():
        out += (f'\n[backends.{name}]\ntype = "openai"\nhealth_interval = 0\nretries = 0\n'
                f'connect_timeout = 3\n{lines}\n'
                f'\n[models.{name}]\nbackend = "{name}"\nbackend_model = "fake-echo"\n')
    return out


def _chat(router: RouterProc, model: str) -> tuple[int, dict[str, object]]:
    c = http.client.HTTPConnection("127.0.0.1", router.port, timeout=20)
    try:
        body = json.dumps({"model": model, "messages": [{"role": "user", "content": "hi"}]})
        c.request("POST", "/v1/chat/completions", body,
                  {"Authorization": f"Bearer {CLIENT_KEY}", "Content-Type": "application/json"})
        r = c.getresponse()
        return r.status, json.loads(r.read())
    finally:
        c.close()


def _copy_pki(pki: Path, tmp_path: Path) -> None:
    """The files beside the router's config: the config names them by relative paths."""
    for name in ("ca.pem", "client.pem", "client.key"):
        (tmp_path / name).write_bytes((pki / name).read_bytes())


def test_mutual_tls_with_a_private_ca(pki: Path, tmp_path: Path) -> None:
    _copy_pki(pki, tmp_path)
    with FakeUpstream(tls=_server_tls(pki, client_cert=True)) as up:
        cfg = _config({
            "mtls": f'base_url = "{up.url}"\ntls_ca_file = "ca.pem"\n'
                    'tls_cert_file = "client.pem"\ntls_key_file = "client.key"',
            "nocert": f'base_url = "{up.url}"\ntls_ca_file = "ca.pem"',
            "noca": f'base_url = "{up.url}"',
        })
        with run_router(cfg, tmp_path) as router:
            status, body = _chat(router, "mtls")
            assert status == 200, body
            assert len(up.requests) == 1
            # The upstream asks for a client certificate: none is none.
            assert _chat(router, "nocert")[0] == 502
            # The system's store does not know the private CA.
            assert _chat(router, "noca")[0] == 502
        assert len(up.requests) == 1


def test_the_proxy_key_http_and_https_upstreams(pki: Path, tmp_path: Path) -> None:
    _copy_pki(pki, tmp_path)
    with FakeUpstream() as plain, FakeUpstream(tls=_server_tls(pki, False)) as secure, \
            ForwardProxy() as proxy, ForwardProxy(refuse=True) as refusing:
        auth = proxy.url.replace("http://", "http://proxy%20user:s3cret-pw@")
        cfg = _config({
            "plain": f'base_url = "{plain.url}"\nproxy = "{auth}"',
            "secure": f'base_url = "{secure.url}"\nproxy = "{auth}"\ntls_ca_file = "ca.pem"',
            "refused": f'base_url = "{secure.url}"\nproxy = "{refusing.url}"\n'
                       'tls_ca_file = "ca.pem"',
        })
        # The proxy key wins over the environment.
        env = {"HTTPS_PROXY": "http://127.0.0.1:1", "http_proxy": "http://127.0.0.1:1"}
        with run_router(cfg, tmp_path, env=env) as router:
            assert _chat(router, "plain")[0] == 200
            assert _chat(router, "secure")[0] == 200
            status, body = _chat(router, "refused")
            assert status == 502, body
        basic = "Basic " + base64.b64encode(b"proxy user:s3cret-pw").decode()
        assert proxy.lines() == [
            f"POST http://127.0.0.1:{plain.port}/v1/chat/completions HTTP/1.1",
            f"CONNECT 127.0.0.1:{secure.port} HTTP/1.1",
        ]
        assert [h.get("proxy-authorization") for _, h in proxy.seen] == [basic, basic]
        assert refusing.lines() == [f"CONNECT 127.0.0.1:{secure.port} HTTP/1.1"]
        assert plain.requests[0]["path"] == "/v1/chat/completions"
        assert "proxy-authorization" not in plain.requests[0]["headers"]
        assert len(secure.requests) == 1
        assert "s3cret-pw" not in router.log_text()


def test_the_proxy_environment_and_no_proxy(pki: Path, tmp_path: Path) -> None:
    with FakeUpstream() as plain, FakeUpstream(tls=_server_tls(pki, False)) as secure, \
            ForwardProxy() as proxy:
        cfg = _config({
            "secure": f'base_url = "{secure.url}"',
            "bypass": f'base_url = "https://localhost:{secure.port}/v1"',
            "plain": f'base_url = "{plain.url}"',
        })
        env = {"HTTPS_PROXY": proxy.url, "HTTP_PROXY": proxy.url, "NO_PROXY": "x.test,localhost",
               "SSL_CERT_FILE": str(pki / "ca.pem")}
        with run_router(cfg, tmp_path, env=env) as router:
            for model in ("secure", "bypass", "plain"):
                status, body = _chat(router, model)
                assert status == 200, (model, body)
        assert proxy.lines() == [
            f"CONNECT 127.0.0.1:{secure.port} HTTP/1.1",
            f"POST http://127.0.0.1:{plain.port}/v1/chat/completions HTTP/1.1",
        ]
        assert len(secure.requests) == 2 and len(plain.requests) == 1


async def test_the_base_urls_query_and_percent_encoded_path() -> None:
    heads: list[bytes] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while head := await reader.readuntil(b"\r\n\r\n"):
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    await reader.readexactly(int(line[15:]))
            heads.append(head)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")
            await writer.drain()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    base = (f"http://127.0.0.1:{port}/openai/deployments/my dép%2Fx/"
            "?api-version=2024-06-01&tag=a b")
    pool = Pool(Origin(base, {}), 2.0, 5.0, max_idle=4)
    try:
        for method, path in ((b"POST", "/chat/completions"), (b"GET", "/models")):
            r = await pool.request(method, path, b"{}" if method == b"POST" else b"")
            await r.read()
            r.release()
    finally:
        pool.close()
        server.close()
        await server.wait_closed()
    assert [h.split(b"\r\n")[0] for h in heads] == [
        b"POST /openai/deployments/my%20d%C3%A9p%2Fx/chat/completions"
        b"?api-version=2024-06-01&tag=a%20b HTTP/1.1",
        b"GET /openai/deployments/my%20d%C3%A9p%2Fx/models"
        b"?api-version=2024-06-01&tag=a%20b HTTP/1.1",
    ]


def _tls_config(**keys: str) -> str:
    lines = "".join(f'{k} = "{v}"\n' for k, v in keys.items())
    return f'[backends.up]\ntype = "openai"\nbase_url = "https://h/v1"\n{lines}'


@pytest.fixture
def files(pki: Path, tmp_path: Path) -> Path:
    _copy_pki(pki, tmp_path)
    (tmp_path / "ca.key").write_bytes((pki / "ca.key").read_bytes())
    return tmp_path


@pytest.mark.parametrize(("keys", "expected"), [
    ({"tls_cert_file": "client.pem", "tls_key_file": "gone.key"},
     "backends.up.tls_key_file: no such file"),
    ({"tls_cert_file": "client.pem", "tls_key_file": "ca.key"},
     "backends.up.tls_key_file: cannot load the key"),
    ({"tls_cert_file": "client.key", "tls_key_file": "client.key"},
     "backends.up.tls_cert_file: cannot load"),
    ({"tls_ca_file": "client.key"}, "backends.up.tls_ca_file: cannot load"),
])
def test_tls_files_that_do_not_load_are_config_errors(files: Path, keys: dict[str, str],
                                                      expected: str) -> None:
    with pytest.raises(ConfigError) as e:
        config.parse(_tls_config(**keys), "backends.toml", base_dir=files)
    assert expected in str(e.value)


def test_tls_paths_are_relative_to_the_config_file(files: Path) -> None:
    cfg = config.parse(_tls_config(tls_ca_file="ca.pem", tls_cert_file="client.pem",
                                   tls_key_file="client.key"), base_dir=files)
    backend = cfg.backends["up"]
    assert isinstance(backend, config.OpenAIBackendConfig)
    assert backend.tls_key_file == str(files / "client.key")

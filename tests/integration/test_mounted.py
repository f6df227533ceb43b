"""The router inside other applications: mounted under /llm in a Starlette app served by
uvicorn (the official client through it), and driven in-process by Starlette's TestClient."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
from starlette.testclient import TestClient

from airouter.asgi import create_app
from tests.conftest import CLIENT_KEY, UPSTREAM_KEY, fake_config
from tests.support.fake_upstream import FakeUpstream
from tests.support.procs import ROOT, free_port, spawn, wait_http

MSGS = [{"role": "user", "content": "mounted here"}]


@pytest.fixture
def config(upstream: FakeUpstream, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cfg = tmp_path / "backends.toml"
    cfg.write_text(fake_config(upstream.url, dead_port=free_port()))
    monkeypatch.setenv("FAKE_UPSTREAM_KEY", UPSTREAM_KEY)
    return cfg


@pytest.fixture
def host(config: Path, tmp_path: Path) -> Iterator[str]:
    port = free_port()
    cmd = [sys.executable, "-m", "uvicorn", "tests.support.host_app:app",
           "--host", "127.0.0.1", "--port", str(port)]
    log = tmp_path / "host.log"
    with spawn(cmd, env={"AIROUTER_CONFIG": str(config), "FAKE_UPSTREAM_KEY": UPSTREAM_KEY},
               log=log, cwd=ROOT) as proc:
        url = f"http://127.0.0.1:{port}"
        try:
            wait_http(url + "/llm/health/live", timeout=30, proc=proc)
        except Exception as e:
            raise RuntimeError(f"host failed: {e}\n{log.read_text(errors='replace')}") from e
        yield url


def test_mounted_under_llm_beside_the_hosts_own_route(host: str) -> None:
    import urllib.request

    with urllib.request.urlopen(host + "/hello", timeout=10) as r:
        assert json.loads(r.read()) == {"hello": "from the host"}
    client = openai.OpenAI(base_url=host + "/llm/v1", api_key=CLIENT_KEY, max_retries=0)
    assert "echo" in [m.id for m in client.models.list()]
    assert client.models.retrieve("echo").id == "echo"
    r = client.chat.completions.create(model="echo", messages=MSGS)
    assert r.choices[0].message.content == "echo: mounted here"
    text = "".join(c.choices[0].delta.content or ""
                   for c in client.chat.completions.create(model="echo", messages=MSGS,
                                                           stream=True) if c.choices)
    assert text == "echo: mounted here"
    with pytest.raises(openai.NotFoundError) as e:
        client.with_options(base_url=host + "/llm/v2").models.list()
    assert e.value.status_code == 404
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=host + "/llm/v1", api_key="wrong", max_retries=0).models.list()


def test_test_client_drives_it_in_process(config: Path) -> None:
    app = create_app(config)
    with TestClient(app) as client:  # runs the lifespan: backends opened, then closed
        auth = {"Authorization": f"Bearer {CLIENT_KEY}"}
        r = client.get("/v1/models", headers=auth)
        assert r.status_code == 200 and r.headers["x-request-id"]
        r = client.post("/v1/chat/completions", headers=auth,
                        json={"model": "echo", "messages": MSGS})
        assert r.status_code == 200
        assert r.json()["choices"][0]["message"]["content"] == "echo: mounted here"
        with client.stream("POST", "/v1/chat/completions", headers=auth,
                            json={"model": "echo", "messages": MSGS, "stream": True}) as s:
            lines = [ln for ln in s.iter_lines() if ln]
        assert lines[-1] == "data: [DONE]"
        assert client.post("/v1/chat/completions", json={}).status_code == 401
        r = client.post("/v1/chat/completions", headers=auth, content=b"{not json")
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"

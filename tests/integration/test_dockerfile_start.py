"""The router started as the Dockerfile starts it: the image's command, environment and config.

Substituted, and nothing else:
  - `airouter`, the console script (airouter.cli:main), by `<this python> -m airouter` run from
    this checkout, which calls the same function;
  - the --config path in the image by the repository file the Dockerfile copies there;
  - the binding: --host 127.0.0.1 for the image's 0.0.0.0, and a free --port (the config's
    port may be taken here);
  - HEALTHCHECK's `python` by this python, and the config's port in its URL by that free port.
The environment is the Dockerfile's ENV plus what `docker run` is documented to pass:
AIROUTER_API_KEY, and TRITON_GRPC_URL, here a closed port (no Triton server).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from airouter.config import Config
from tests.support.dockerfile import Image, read
from tests.support.procs import ROOT, free_port, spawn, wait_http
from tests.support.router_command import (
    check_config,
    parse_router_args,
    replace_option,
    router_args,
)

KEY = "sk-deploy-test"


@dataclass
class Started:
    url: str
    port: int
    image: Image
    config: Config
    env: dict[str, str]
    log: Path


def test_the_image_command_is_the_console_script() -> None:
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert router_args(read(ROOT / "Dockerfile").argv) is not None
    assert scripts["airouter"] == "airouter.cli:main"


@pytest.fixture(scope="module")
def started(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Started]:
    image = read(ROOT / "Dockerfile")
    args = router_args(image.argv)
    assert args is not None, f"the image runs {image.argv}, not the router"
    given = parse_router_args(args)
    source = ROOT / image.copies[given.config or image.env["AIROUTER_CONFIG"]]
    port, triton = free_port(), f"127.0.0.1:{free_port()}"
    env = {**image.env, "AIROUTER_API_KEY": KEY, "TRITON_GRPC_URL": triton}
    config = check_config(source.read_text(), str(source), env)

    args = replace_option(args, "--config", str(source))
    args = replace_option(replace_option(args, "--host", "127.0.0.1"), "--port", str(port))
    log = tmp_path_factory.mktemp("dockerfile") / "router.log"
    with spawn([sys.executable, "-m", "airouter", *args], env=env, log=log, cwd=ROOT) as proc:
        url = f"http://127.0.0.1:{port}"
        try:
            wait_http(url + "/health/live", timeout=30, proc=proc)
        except Exception as e:
            raise RuntimeError(f"{e}\n{log.read_text(errors='replace')}") from e
        yield Started(url, port, image, config, env, log)


def fetch(url: str, key: str | None = None, body: object = None) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    data = None if body is None else json.dumps(body).encode()
    if data is not None:
        headers["Content-Type"] = "application/json"
    request = urllib.request.Request(url, data=data, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_the_healthcheck_passes(started: Started) -> None:
    argv = [sys.executable if a == "python" else a for a in started.image.healthcheck]
    argv = [a.replace(f":{started.config.server.port}/", f":{started.port}/") for a in argv]
    assert f":{started.port}/" in " ".join(argv)
    done = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    assert done.returncode == 0, done.stderr


def test_models_are_listed_to_the_configured_key_only(started: Started) -> None:
    status, body = fetch(started.url + "/v1/models")
    assert status == 401
    status, body = fetch(started.url + "/v1/models", KEY)
    assert status == 200
    assert [m["id"] for m in body["data"]] == list(started.config.models)


def test_a_chat_goes_to_the_configured_triton(started: Started) -> None:
    """No Triton listens there: the router names the address it was given and answers 502."""
    [model] = started.config.models
    chat = {"model": model, "messages": [{"role": "user", "content": "hello"}]}
    status, body = fetch(started.url + "/v1/chat/completions", KEY, chat)
    assert status == 502, body
    error = body["error"]
    assert error["code"] == "bad_gateway"
    assert started.env["TRITON_GRPC_URL"] in error["message"]

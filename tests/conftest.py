"""Shared fixtures: a fake upstream and a real router process in front of it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.fake_upstream import FakeUpstream
from tests.support.procs import free_port
from tests.support.router import RouterProc, run_router

CLIENT_KEY = "sk-test-client"
SCOPED_KEY = "sk-test-scoped"
UPSTREAM_KEY = "sk-upstream-secret"


def fake_config(up_url: str, *, dead_port: int, extra: str = "") -> str:
    return f"""
[server]
api_keys = ["{CLIENT_KEY}"]
max_body_mb = 1

[keys.scoped]
key = "{SCOPED_KEY}"
models = ["echo*"]

[backends.fake]
type = "openai"
base_url = "{up_url}"
api_key = "${{FAKE_UPSTREAM_KEY}}"
connect_timeout = 2
# A hung upstream (fake-hang) answers 504 in seconds, not minutes.
first_token_timeout = 5
idle_timeout = 2
# Exact request assertions: no background health checks mixed into the fake's log.
health_interval = 0

[backends.fake-nostream]
type = "openai"
base_url = "{up_url}"
stream = "never"
health_interval = 0

[backends.fake-always]
type = "openai"
base_url = "{up_url}"
stream = "always"
health_interval = 0

[backends.dead]
type = "openai"
base_url = "http://127.0.0.1:{dead_port}/v1"
connect_timeout = 1
health_interval = 0
eject_after = 1000000  # always the plain connection failure (502), never "ejected" (503)

[models.echo]
backend = "fake"
backend_model = "fake-echo"
default = true

[models.echo-nostream]
backend = "fake-nostream"
backend_model = "fake-echo"

[models.echo-always]
backend = "fake-always"
backend_model = "fake-echo"

[models.split]
backend = "fake"
backend_model = "fake-split"

[models.tricky]
backend = "fake"
backend_model = "fake-tricky"

[models.slow]
backend = "fake"
backend_model = "fake-slow"

[models.die]
backend = "fake"
backend_model = "fake-die"

[models.hang]
backend = "fake"
backend_model = "fake-hang"

[models.disconnect]
backend = "fake"
backend_model = "fake-disconnect"

[models.bad-json]
backend = "fake"
backend_model = "fake-bad-json"

[models.embed]
backend = "fake"
backend_model = "fake-embed"

[models.dead]
backend = "dead"

[models."fake-error-*"]
backend = "fake"

[models."gpt-*"]
backend = "fake"
backend_model = "fake-echo"

[models."gpt-4*"]
backend = "fake"
backend_model = "fake-split"
{extra}
"""


@pytest.fixture(scope="session")
def upstream() -> Iterator[FakeUpstream]:
    with FakeUpstream() as up:
        yield up


@pytest.fixture(scope="session")
def router(
    upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RouterProc]:
    tmp: Path = tmp_path_factory.mktemp("router")
    cfg = fake_config(upstream.url, dead_port=free_port())
    with run_router(cfg, tmp, env={"FAKE_UPSTREAM_KEY": UPSTREAM_KEY}) as r:
        yield r

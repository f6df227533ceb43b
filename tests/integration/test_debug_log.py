"""log_level = "debug" shows the decisions an operator chases: alias resolution, the node picked
and why, a retry on another node, the upstream's status and timing, limits verdicts; never a
key. At "info" none of it is written."""

from __future__ import annotations

import re
import time
from pathlib import Path

import openai
import pytest

from tests.conftest import CLIENT_KEY, UPSTREAM_KEY
from tests.support.fake_upstream import FakeUpstream
from tests.support.procs import free_port
from tests.support.router import RouterProc, run_router

TEAM_KEY = "sk-team-debug-secret"
MSGS = [{"role": "user", "content": "one two"}]


def config(up_url: str, dead: int, level: str) -> str:
    return f"""
[server]
api_keys = ["{CLIENT_KEY}"]
log_level = "{level}"

[keys.team]
key = "{TEAM_KEY}"
rpm = 2

[backends.pair]
type = "openai"
urls = ["http://127.0.0.1:{dead}/v1", "{up_url}"]
api_key = "{UPSTREAM_KEY}"
connect_timeout = 1
health_interval = 0

[models.echo]
backend = "pair"
backend_model = "fake-echo"
"""


def wait_for_line(router: RouterProc, pattern: str, timeout: float = 5) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in router.log_text().splitlines():
            if re.search(pattern, line):
                return line
        time.sleep(0.05)
    raise AssertionError(f"no line matches {pattern!r}:\n{router.log_text()[-3000:]}")


def test_debug_lines_show_each_decision_and_no_key(
        upstream: FakeUpstream, tmp_path: Path) -> None:
    dead = free_port()
    with run_router(config(upstream.url, dead, "debug"), tmp_path) as router:
        c = openai.OpenAI(base_url=router.base_url, api_key=TEAM_KEY, max_retries=0)
        for _ in range(2):
            assert c.chat.completions.create(model="echo", messages=MSGS).choices[0].message
        with pytest.raises(openai.RateLimitError):
            c.chat.completions.create(model="echo", messages=MSGS)
        wait_for_line(router, r"DEBUG .*key team: model echo is alias echo: backend pair, "
                              r"model fake-echo")
        wait_for_line(router, r"DEBUG .*limits: key team admitted on echo")
        wait_for_line(router, r"DEBUG .*limits: key team refused on echo by \w+")
        wait_for_line(router, rf"DEBUG .*backend pair: node 127\.0\.0\.1:{dead} picked "
                              r"\(least_inflight; 0 in flight")
        wait_for_line(router, rf"DEBUG .*backend pair: node 127\.0\.0\.1:{dead} failed before "
                              r"the answer: 502 \w+, trying another node")
        wait_for_line(router, r"DEBUG .*backend pair: node 127\.0\.0\.1:\d+ answered HTTP 200 "
                              r"\(application/json\) in [\d.]+ ms")
        text = router.log_text()
        for secret in (TEAM_KEY, CLIENT_KEY, UPSTREAM_KEY):
            assert secret not in text


def test_no_debug_lines_at_info(upstream: FakeUpstream,
                                tmp_path: Path) -> None:
    with run_router(config(upstream.url, free_port(), "info"), tmp_path) as router:
        c = openai.OpenAI(base_url=router.base_url, api_key=TEAM_KEY, max_retries=0)
        c.chat.completions.create(model="echo", messages=MSGS)
        wait_for_line(router, r"airouter\.access")
        assert " DEBUG " not in router.log_text()

"""The router under test: one granian worker pinned to its own core, and its CPU and memory."""

from __future__ import annotations

import contextlib
import json
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from bench import bodies
from bench.procs import (
    HOST,
    ProcStats,
    children,
    free_port,
    group_stats,
    pinned,
    spawn,
    wait_http,
)


def openai_config(
    json_url: str,
    sse_url: str,
    paced_url: str | None,
    *,
    limits: tuple[str, str, str] | None = None,
) -> str:
    """Auth on, aliases that differ from the upstream's model name (so every answer is
    rewritten), and a pool big enough for thousands of concurrent streams.
    `limits`: (lines for [server], [keys.*] tables that replace `api_keys`, lines for every
    model alias)."""
    server, keys, model = limits or (f'api_keys = ["{bodies.CLIENT_KEY}"]', "", "")
    cfg = f"""
[server]
{server}
log_level = "warning"
access_log = false
{keys}
[backends.json]
type = "openai"
base_url = "{json_url}"
api_key = "sk-bench-upstream"
max_connections = 4096

[backends.sse]
type = "openai"
base_url = "{sse_url}"
api_key = "sk-bench-upstream"
max_connections = 4096

[models.{bodies.ALIAS_JSON}]
backend = "json"
backend_model = "{bodies.UPSTREAM_MODEL}"
{model}
[models.{bodies.ALIAS_SSE}]
backend = "sse"
backend_model = "{bodies.UPSTREAM_MODEL}"
{model}
"""
    if paced_url:
        cfg += f"""
[backends.paced]
type = "openai"
base_url = "{paced_url}"
api_key = "sk-bench-upstream"
max_connections = 8192
idle_timeout = 60

[models.{bodies.ALIAS_PACED}]
backend = "paced"
backend_model = "{bodies.UPSTREAM_MODEL}"
"""
    return cfg


def triton_config(grpc_url: str) -> str:
    return f"""
[server]
api_keys = ["{bodies.CLIENT_KEY}"]
log_level = "warning"
access_log = false

[backends.triton]
type = "triton"
url = "{grpc_url}"

[models.{bodies.ALIAS_TRITON}]
backend = "triton"
backend_model = "trtllm_ensemble"
prompt_format = "chatml"
"""


@dataclass
class Router:
    port: int
    pid: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def workers(self) -> list[int]:
        return children(self.pid)

    def stats(self) -> ProcStats:
        return group_stats(self.pid)


@contextlib.contextmanager
def run(
    tmp: Path,
    name: str,
    config: str,
    core: int | str,
    prelude: str = "",
    workers: int = 1,
    cwd: Path | None = None,
    interface: str = "rsgi",
) -> Iterator[Router]:
    """`prelude`: Python run before the CLI (granian forks its worker, which inherits it),
    to try runtime knobs such as sys.setswitchinterval without touching the router.
    `cwd`: another checkout whose airouter package runs instead (an A/B baseline).
    `interface`: what granian serves (`--interface`; a baseline without the flag is RSGI)."""
    port = free_port()
    cfg = tmp / f"router-{name}.toml"
    cfg.write_text(config)
    log = tmp / f"router-{name}.log"
    entry = (
        ["-m", "airouter"]
        if not prelude
        else ["-c", f"import sys\n{prelude}\nfrom airouter.cli import main\nsys.exit(main())"]
    )
    args = pinned(
        core,
        [
            sys.executable,
            *entry,
            "--config",
            str(cfg),
            "--host",
            HOST,
            "--port",
            str(port),
            "--workers",
            str(workers),
            "--log-level",
            "warning",
            *(["--interface", interface] if interface != "rsgi" else []),
        ],
    )
    with spawn(args, log=log, cwd=cwd) as proc:
        try:
            wait_http(f"http://{HOST}:{port}/health/ready", timeout=60, proc=proc)
        except Exception as e:
            text = log.read_text(errors="replace")
            raise RuntimeError(f"router failed to start: {e}\n{text[-4000:]}") from e
        router = Router(port, proc.pid, log)
        deadline = time.monotonic() + 10
        while len(router.workers()) < workers and time.monotonic() < deadline:
            time.sleep(0.05)
        yield router


@contextlib.contextmanager
def run_floor(
    tmp: Path, name: str, command: list[str], routes: dict[str, str], core: int
) -> Iterator[Router]:
    """A floor pass-through (`python -m bench.floor ...`), pinned and sized like the router:
    one granian worker on the router's core."""
    port = free_port()
    log = tmp / f"{name}.log"
    module = command[0]
    args = [sys.executable, "-m", *command, "--port", str(port), "--routes", json.dumps(routes)]
    with spawn(pinned(core, args), log=log) as proc:
        # No health route: a POST of a known model proves the whole path.
        model = next(iter(routes))
        body = bodies.chat_request(model, stream=False)
        deadline = time.monotonic() + 30
        while True:
            try:
                req = urllib.request.Request(f"http://{HOST}:{port}/", data=body, method="POST")
                with urllib.request.urlopen(req, timeout=2) as r:
                    r.read()
                break
            except OSError as e:
                if proc.poll() is not None or time.monotonic() > deadline:
                    text = log.read_text(errors="replace")
                    raise RuntimeError(f"{module} failed to start: {e}\n{text[-4000:]}") from e
                time.sleep(0.1)
        floor = Router(port, proc.pid, log)
        deadline = time.monotonic() + 10
        while not floor.workers() and time.monotonic() < deadline:
            time.sleep(0.05)
        yield floor

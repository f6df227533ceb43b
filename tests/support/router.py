"""Start the real router (granian, real socket) on a config written for the test."""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.support.procs import ROOT, free_port, spawn, wait_http


@dataclass
class RouterProc:
    url: str  # http://127.0.0.1:PORT
    port: int
    proc: subprocess.Popen[bytes]
    log: Path
    config: Path

    @property
    def base_url(self) -> str:
        return self.url + "/v1"

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


@contextlib.contextmanager
def run_router(
    config: str,
    tmp: Path,
    *,
    workers: int = 1,
    env: dict[str, str] | None = None,
    args: tuple[str, ...] = (),
    interface: str = "rsgi",
) -> Iterator[RouterProc]:
    """`interface`: what serves the router: "rsgi" (airouter's command, the default), "asgi"
    (the command with --interface asgi: granian's ASGI mode), or an ASGI server run on
    `airouter.asgi:app` ("uvicorn", "hypercorn"; one worker)."""
    port = free_port()
    cfg = tmp / f"router-{port}.toml"
    cfg.write_text(config)
    log = tmp / f"router-{port}.log"
    if interface in ("uvicorn", "hypercorn"):
        env = {**(env or {}), "AIROUTER_CONFIG": str(cfg)}
        bind = (["--host", "127.0.0.1", "--port", str(port)] if interface == "uvicorn"
                else ["--bind", f"127.0.0.1:{port}"])
        cmd = [sys.executable, "-m", interface, "airouter.asgi:app", *bind, *args]
    else:
        cmd = [
            sys.executable,
            "-m",
            "airouter",
            "--config",
            str(cfg),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            str(workers),
            "--interface",
            interface,
            *args,
        ]
    with spawn(cmd, env=env, log=log, cwd=ROOT) as proc:
        url = f"http://127.0.0.1:{port}"
        try:
            wait_http(url + "/health/live", timeout=30, proc=proc)
        except Exception as e:
            raise RuntimeError(
                f"router failed to start: {e}\n{log.read_text(errors='replace')}"
            ) from e
        yield RouterProc(url, port, proc, log, cfg)

"""A throw-away redis-server per test: a free port, nothing written to disk, stopped by pid.

The binary comes from Debian's redis-server package (.ci/run installs it). Without it the
tests that need it skip with a clear message, except under CI, where they fail."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.procs import free_port


def redis_binary() -> str:
    path = shutil.which("redis-server") or (
        "/usr/bin/redis-server" if Path("/usr/bin/redis-server").exists() else None
    )
    if path is None:
        msg = "redis-server is not installed (apt-get install -y redis-server)"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    return path


def ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), 0.5) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith((b"+PONG", b"-NOAUTH"))  # up, with or without a password
    except OSError:
        return False


class RedisServer:
    def __init__(
        self, log: Path, port: int | None = None, unix: Path | None = None, password: str = "",
        extra: tuple[str, ...] = (),
    ) -> None:
        self.binary = redis_binary()
        self.port = port or free_port()
        self.log = log
        self.unix = unix  # also listen on this unix socket
        self.password = password
        self.extra = extra  # more redis-server arguments (TLS, say)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        out = open(self.log, "ab")  # noqa: SIM115 - the process owns it while it runs
        args = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "no"]
        if self.unix is not None:
            args += ["--unixsocket", str(self.unix), "--unixsocketperm", "700"]
        if self.password:
            args += ["--requirepass", self.password]
        args += self.extra
        self.proc = subprocess.Popen(
            args,
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )
        out.close()
        deadline = time.monotonic() + 10
        while not ping(self.port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server failed to start: {self.log.read_text()}")
            time.sleep(0.02)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None


@contextlib.contextmanager
def run_redis(tmp: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp / "redis.log")
    server.start()
    try:
        yield server
    finally:
        server.stop()

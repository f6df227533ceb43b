"""nginx twice: a static upstream answering POSTs with fixed bodies, and a plain reverse proxy."""

from __future__ import annotations

import contextlib
import resource
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from bench import bodies
from bench.deps import nginx_bin
from bench.procs import HOST, free_port, pinned, spawn, wait_http

JSON_PATH = "/json/v1/chat/completions"
SSE_PATH = "/sse/v1/chat/completions"


def _common(tmp: Path, name: str) -> str:
    for sub in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (tmp / f"{name}-{sub}").mkdir(exist_ok=True)
    # Run as root, nginx's workers drop to `nobody`: they must be able to read the www files.
    tmp.chmod(0o755)
    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    nofile = 65536 if nofile == resource.RLIM_INFINITY else min(nofile, 65536)
    return f"""
daemon off;
master_process on;
worker_processes 1;
worker_rlimit_nofile {nofile};
pid {tmp}/{name}.pid;
error_log {tmp}/{name}-error.log warn;
events {{ worker_connections 16384; multi_accept on; }}
"""


def _http_common(tmp: Path, name: str) -> str:
    return f"""
    access_log off;
    client_body_temp_path {tmp}/{name}-body;
    proxy_temp_path {tmp}/{name}-proxy;
    fastcgi_temp_path {tmp}/{name}-fastcgi;
    uwsgi_temp_path {tmp}/{name}-uwsgi;
    scgi_temp_path {tmp}/{name}-scgi;
    keepalive_requests 10000000;
    keepalive_timeout 300s;
    tcp_nodelay on;
    server_tokens off;
"""


def upstream_conf(tmp: Path, port: int) -> str:
    """Static files at the request paths. The static module refuses POST with 405, so
    error_page turns that into an internal GET redirect to the same URI, answered 200."""
    www = tmp / "www"
    for path, body in ((JSON_PATH, bodies.completion_json()), (SSE_PATH, bodies.sse_body())):
        f = www / path.lstrip("/")
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_bytes(body)
    return (
        _common(tmp, "upstream")
        + f"""
http {{
{_http_common(tmp, "upstream")}
    client_max_body_size 1m;
    server {{
        listen {HOST}:{port} backlog=4096;
        root {www};
        location /json/ {{
            default_type application/json;
            error_page 405 =200 $uri;
        }}
        location /sse/ {{
            default_type text/event-stream;
            add_header Cache-Control no-cache;
            error_page 405 =200 $uri;
        }}
    }}
}}
"""
    )


def proxy_conf(tmp: Path, port: int, upstreams: dict[str, int]) -> str:
    """`location /<name>/` proxies to upstream <name> with the prefix stripped, over a
    keepalive pool, unbuffered (so SSE flows as it arrives), HTTP/1.1 both ways."""
    pools = "".join(
        f"""
    upstream {name} {{
        server {HOST}:{up_port};
        keepalive 1024;
        keepalive_requests 10000000;
        keepalive_timeout 300s;
    }}"""
        for name, up_port in upstreams.items()
    )
    locations = "".join(
        f"""
        location /{name}/ {{
            proxy_pass http://{name}/;
        }}"""
        for name in upstreams
    )
    return (
        _common(tmp, "proxy")
        + f"""
http {{
{_http_common(tmp, "proxy")}
    client_max_body_size 16m;
    proxy_http_version 1.1;
    proxy_set_header Connection "";
    proxy_buffering off;
    proxy_request_buffering off;
    proxy_read_timeout 300s;
{pools}
    server {{
        listen {HOST}:{port} backlog=4096;
        location = /health {{ return 200 "ok"; }}{locations}
    }}
}}
"""
    )


@dataclass(frozen=True)
class Nginx:
    port: int
    pid: int

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"


@contextlib.contextmanager
def run(tmp: Path, name: str, conf: str, port: int, core: int, ready_path: str) -> Iterator[Nginx]:
    exe = nginx_bin()
    assert exe is not None
    path = tmp / f"{name}.conf"
    path.write_text(conf)
    args = pinned(core, [exe, "-p", str(tmp), "-c", str(path)])
    with spawn(args, log=tmp / f"{name}.log") as proc:
        try:
            wait_http(f"http://{HOST}:{port}{ready_path}", timeout=15, proc=proc, method="POST")
        except Exception as e:
            err = tmp / f"{name}-error.log"
            raise RuntimeError(
                f"nginx ({name}) did not start: {e}\n"
                f"{err.read_text(errors='replace') if err.exists() else ''}"
            ) from e
        yield Nginx(port, proc.pid)


@contextlib.contextmanager
def run_upstream(tmp: Path, core: int) -> Iterator[Nginx]:
    port = free_port()
    with run(tmp, "upstream", upstream_conf(tmp, port), port, core, JSON_PATH) as n:
        yield n


@contextlib.contextmanager
def run_proxy(tmp: Path, core: int, upstreams: dict[str, int], ready_path: str) -> Iterator[Nginx]:
    port = free_port()
    with run(tmp, "proxy", proxy_conf(tmp, port, upstreams), port, core, ready_path) as n:
        yield n

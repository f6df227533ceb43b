"""The `airouter` command: serve a config with granian + uvloop, or check one."""

from __future__ import annotations

import argparse
import ipaddress
import os
import shutil
import sys
import tempfile
from pathlib import Path

from airouter import config as config_mod
from airouter.config import Config, ConfigError


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_exposure(cfg: Config, host: str) -> str | None:
    """The secure default: no client keys means loopback only, unless explicitly allowed."""
    if cfg.server.api_keys or cfg.keys or _is_loopback(host):
        return None
    if cfg.server.allow_unauthenticated:
        return None
    return (
        f"refusing to listen on {host} with no client keys configured: set server.api_keys "
        "(or [keys.*]), or set server.allow_unauthenticated = true to serve without auth"
    )


def _with_source(message: str, path: str) -> str:
    return message if message.startswith(path) else f"{path}: {message}"


def _serve(args: argparse.Namespace) -> int:
    path = os.path.abspath(
        args.config or os.environ.get("AIROUTER_CONFIG") or config_mod.DEFAULT_CONFIG
    )
    # Workers are processes: Prometheus metrics live in files every worker writes and
    # /metrics sums. A fresh folder per run, so counters start at zero. This must happen
    # before prometheus_client is first imported: it picks its storage at import time.
    runtime = tempfile.mkdtemp(prefix="airouter-")
    os.makedirs(os.path.join(runtime, "metrics"))
    os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", os.path.join(runtime, "metrics"))
    try:
        return _run(args, path, runtime)
    finally:
        shutil.rmtree(runtime, ignore_errors=True)


def _run(args: argparse.Namespace, path: str, runtime: str) -> int:
    from airouter.reloading import MARKER_ENV, ReloadingServer, migrate_req_notice
    from airouter.service import RELOAD_CLOSE_S
    from airouter.state import State

    try:
        text = Path(path).read_text(encoding="utf-8")
        cfg = config_mod.parse(text, path, base_dir=Path(path).parent)
        State.build(cfg)
    except OSError as e:
        print(f"airouter: {path}: cannot read config: {e.strerror or e}", file=sys.stderr)
        return 2
    except ConfigError as e:
        print(f"airouter: {_with_source(str(e), path)}", file=sys.stderr)
        return 2
    host = args.host or cfg.server.host
    port = args.port if args.port is not None else cfg.server.port
    workers = args.workers or cfg.server.workers
    level = args.log_level or cfg.server.log_level
    problem = check_exposure(cfg, host)
    if problem:
        print(f"airouter: {problem}", file=sys.stderr)
        return 2
    if not (cfg.server.api_keys or cfg.keys):
        print("airouter: no client keys configured: client authentication is OFF", file=sys.stderr)
    notice = migrate_req_notice()
    if notice:
        print(f"airouter: {notice}", file=sys.stderr)
    # Workers load a snapshot of the last config that validated. On SIGHUP the file is checked
    # again: an invalid one is logged and counted, and nothing else happens. A valid one
    # replaces the snapshot; then new workers start and the old ones drain (reloading.py).
    snapshot = Path(runtime) / "backends.toml"
    snapshot.write_text(text, encoding="utf-8")
    os.environ["AIROUTER_CONFIG"] = str(snapshot)
    os.environ["AIROUTER_CONFIG_BASE"] = str(Path(path).parent)
    os.environ["AIROUTER_LOG_LEVEL"] = level
    if not cfg.server.redis_url:
        # Without Redis the workers share limits and node slots through this process.
        from airouter.limits.shared import SOCKET_ENV
        from airouter.limits.shared_server import start_server

        start_server(os.path.join(runtime, "limits.sock"))
        os.environ[SOCKET_ENV] = os.path.join(runtime, "limits.sock")
    if workers > 1:
        # The workers' prefix indexes (balance = "prefix", "prefix_load") learn from each other.
        from airouter.backends import prefix_share

        prefix_share.start_relay(os.path.join(runtime, "prefix.sock"))
        os.environ[prefix_share.SOCKET_ENV] = os.path.join(runtime, "prefix.sock")

    from airouter.observability import metrics

    for result in ("ok", "rejected"):
        metrics.CONFIG_RELOADS.labels(result)

    reload_grace = [cfg.server.reload_grace]  # the running workers' config's

    def reload() -> float | None:
        try:
            new = Path(path).read_text(encoding="utf-8")
            new_cfg = config_mod.parse(new, path, base_dir=Path(path).parent)
            State.build(new_cfg)
        except (OSError, ConfigError) as e:
            metrics.CONFIG_RELOADS.labels("rejected").inc()
            print(f"airouter: reload rejected, keeping the running config: {e}", file=sys.stderr)
            return None
        tmp = snapshot.with_suffix(".new")
        tmp.write_text(new, encoding="utf-8")
        tmp.replace(snapshot)
        metrics.CONFIG_RELOADS.labels("ok").inc()
        print(f"airouter: reloading {path}", file=sys.stderr)
        # The backstop before an old worker is killed: it drains on its own config's grace.
        grace = reload_grace[0]
        reload_grace[0] = new_cfg.server.reload_grace
        return RELOAD_CLOSE_S + grace + 10

    from granian.constants import HTTPModes, Interfaces, Loops
    from granian.http import HTTP1Settings

    _raise_fd_limit(cfg.server.max_connections * workers + 1024)

    marker = Path(runtime) / "generation"
    os.environ[MARKER_ENV] = str(marker)
    # RSGI, granian's native interface, is the faster; ASGI serves the same routes on Starlette.
    asgi = args.interface == "asgi"
    server = ReloadingServer(
        "airouter.asgi:create_worker_app" if asgi else "airouter.app:create_app",
        factory=True,
        address=host,
        port=port,
        interface=Interfaces.ASGI if asgi else Interfaces.RSGI,
        websockets=False,
        workers=workers,
        loop=Loops.uvloop,
        log_level=level,
        backlog=2048,
        # Open connections per worker. Granian's default follows the backlog (2048), which a
        # few thousand silent sockets exhaust; header_timeout is what reclaims those.
        backpressure=cfg.server.max_connections,
        http=HTTPModes.http1,
        http1_settings=HTTP1Settings(
            header_read_timeout=int(cfg.server.header_timeout * 1000),
            # The parser's read buffer is what bounds a request head (431 past it).
            max_buffer_size=cfg.server.max_header_bytes,
        ),
        # After the grace period a worker ends its streams itself; this is the backstop.
        workers_kill_timeout=int(cfg.server.shutdown_grace) + 10,
        respawn_interval=1.0,
        accept=reload,
        marker=marker,
    )
    server.serve()
    return 0


def _raise_fd_limit(want: int) -> None:
    """Every connection is a file descriptor: lift the soft limit toward what the connection
    cap needs (never above the hard limit), as nginx's worker_rlimit_nofile does."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            pass


def _check(args: argparse.Namespace) -> int:
    from airouter.state import State

    try:
        cfg = config_mod.load(args.file)
        State.build(cfg)
    except ConfigError as e:
        print(f"airouter: {_with_source(str(e), args.file)}", file=sys.stderr)
        return 1
    print(f"{args.file}: ok ({len(cfg.backends)} backends, {len(cfg.models)} models)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The serving command's arguments: `airouter [--config ...] [--host ...] ...`."""
    p = argparse.ArgumentParser(prog="airouter", description="OpenAI-compatible router.")
    p.add_argument(
        "--config", help="backends.toml path (default: $AIROUTER_CONFIG or ./backends.toml)"
    )
    p.add_argument("--host")
    p.add_argument("--port", type=int)
    p.add_argument("--workers", type=int)
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error", "critical"])
    p.add_argument(
        "--interface", choices=["rsgi", "asgi"], default="rsgi",
        help="what granian serves: rsgi (default, faster) or asgi (the Starlette app)",
    )
    return p


def build_check_parser() -> argparse.ArgumentParser:
    """`airouter check FILE`'s arguments (after the word `check`)."""
    p = argparse.ArgumentParser(prog="airouter check", description="Validate a config file.")
    p.add_argument("file")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["check"]:
        return _check(build_check_parser().parse_args(argv[1:]))
    return _serve(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())

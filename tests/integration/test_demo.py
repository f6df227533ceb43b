"""`make run`'s launcher end to end: Triton with the example SmolLM2 model, the router in front,
the README's `openai` streaming example against it, and a clean stop on SIGINT."""

from __future__ import annotations

import contextlib
import io
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import openai
import pytest

from tests.support.procs import ROOT, free_port, spawn, wait_http

pytestmark = [pytest.mark.triton, pytest.mark.llm]

SHM = Path("/dev/shm")


def readme_streaming_example() -> str:
    """The README's streaming `openai` example, as printed there."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", readme, flags=re.S)
    found = [b for b in blocks if "from openai import OpenAI" in b and "stream=True" in b]
    assert found, "README.md has no streaming openai example"
    return found[0]


def pgroup_members(pgids: set[int]) -> list[str]:
    """Live (non-zombie) processes in any of these process groups."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            pid = stat.parent.name
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if fields[0] != "Z" and int(fields[2]) in pgids:
                out.append(f"{pid}: {(stat.parent / 'cmdline').read_bytes()!r}")
    return out


def mapped(paths: set[Path]) -> set[Path]:
    """Those of `paths` some live process still maps (another Triton's, say)."""
    found: set[Path] = set()
    for maps in Path("/proc").glob("[0-9]*/maps"):
        with contextlib.suppress(OSError):
            content = maps.read_text(errors="replace")
            found.update(p for p in paths if str(p) in content)
    return found


def processes_mentioning(text: str) -> list[str]:
    out = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        with contextlib.suppress(OSError):
            raw = cmdline.read_bytes()
            if text.encode() in raw and b"pytest" not in raw:
                out.append(f"{cmdline.parent.name}: {raw!r}")
    return out


@pytest.mark.timeout(240)
def test_demo_serves_smollm2_and_stops_cleanly(tmp_path: Path) -> None:
    port, http, grpc = free_port(), free_port(), free_port()
    state = tmp_path / "demo"
    log = tmp_path / "demo.log"
    env = {
        "AIROUTER_PORT": str(port),
        "TRITON_HTTP_PORT": str(http),
        "TRITON_GRPC_PORT": str(grpc),
        "AIROUTER_DEMO_DIR": str(state),
        # Triton only: no OpenAI-compatible backend is added.
        "OPENAI_API_KEY": "",
        "AIROUTER_UPSTREAM_URL": "",
    }
    shm_before = set(SHM.glob("triton_python_backend_shm_region_*"))
    cmd = [sys.executable, "-m", "airouter.demo", "--config", str(ROOT / "backends.toml")]
    with spawn(cmd, env=env, log=log, cwd=ROOT) as proc:
        try:
            wait_http(f"http://127.0.0.1:{port}/health/ready", timeout=120, proc=proc)
            deadline = time.monotonic() + 10
            while "Ctrl-C stops" not in log.read_text() and time.monotonic() < deadline:
                time.sleep(0.05)
        except Exception:
            pytest.fail(f"the demo did not come up:\n{log.read_text(errors='replace')}")
        out = log.read_text(errors="replace")
        pids = {
            name: int(m.group(1))
            for name in ("Triton", "router")
            if (m := re.search(rf"\[demo\] {name} ready in .*\(pid (\d+)\)", out))
        }
        assert set(pids) == {"Triton", "router"}, out
        assert f"http://localhost:{port}/v1" in out  # the printed one-liners name the real port

        # The README's example, verbatim but for the port.
        code = readme_streaming_example()
        assert "http://localhost:3000/v1" in code
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            exec(code.replace("localhost:3000", f"localhost:{port}"), {"__name__": "readme"})
        assert printed.getvalue().strip(), "the README example printed nothing"

        # The same call, looking at every chunk.
        client = openai.OpenAI(base_url=f"http://localhost:{port}/v1", api_key="none")
        stream = client.chat.completions.create(
            model="smollm2",
            messages=[{"role": "user", "content": "Write a haiku about the sea."}],
            stream=True,
        )
        chunks = list(stream)
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        reasons = [c.choices[0].finish_reason for c in chunks if c.choices]
        assert text.strip()
        assert "<|im_end|>" not in text and "<|im_start|>" not in text
        assert [r for r in reasons if r is not None] in (["stop"], ["length"])
        assert {c.model for c in chunks} == {"smollm2"}

        # Ctrl-C: the router, then Triton, all gone within 20 s.
        os.kill(proc.pid, signal.SIGINT)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the demo did not stop within 20 s:\n{log.read_text(errors='replace')}")
        assert proc.returncode == 0, log.read_text(errors="replace")
    out = log.read_text(errors="replace")
    assert out.index("stopping router") < out.index("stopping tritonserver"), out
    assert pgroup_members(set(pids.values())) == []
    assert processes_mentioning(str(state)) == []  # no tritonserver, no backend stub
    left = set(SHM.glob("triton_python_backend_shm_region_*")) - shm_before
    assert left <= mapped(left), "Triton's shared-memory files were left behind"


def test_demo_refuses_a_taken_port(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        env = {
            **os.environ,
            "AIROUTER_PORT": str(taken),
            "TRITON_HTTP_PORT": str(free_port()),
            "TRITON_GRPC_PORT": str(free_port()),
            "AIROUTER_DEMO_DIR": str(tmp_path / "demo"),
        }
        done = subprocess.run(
            [sys.executable, "-m", "airouter.demo", "--config", str(ROOT / "backends.toml")],
            env=env, cwd=ROOT, capture_output=True, text=True, timeout=60,
        )
    assert done.returncode == 1
    assert f"port {taken} (router) is already in use" in done.stderr
    assert "AIROUTER_PORT" in done.stderr

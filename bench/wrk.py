"""wrk with a Lua script: POST a chat body with a bearer key; percentiles come back as JSON."""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench.procs import LOAD_CORE, pinned

_MARK = "BENCH_JSON "

_DONE = r"""
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests":%d,"duration_us":%d,"bytes":%d,"connect":%d,"read":%d,' ..
    '"write":%d,"status":%d,"timeout":%d,"p50":%d,"p90":%d,"p99":%d,"p999":%d,' ..
    '"max":%d,"mean":%.1f}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write,
    e.status, e.timeout, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency:percentile(99.9), latency.max, latency.mean))
end
"""


def lua_script(path: Path, body: bytes, key: str | None) -> Path:
    text = body.decode()
    assert "]==]" not in text
    lines = [
        'wrk.method = "POST"',
        f"wrk.body = [==[{text}]==]",
        'wrk.headers["Content-Type"] = "application/json"',
    ]
    if key:
        lines.append(f'wrk.headers["Authorization"] = "Bearer {key}"')
    path.write_text("\n".join(lines) + "\n" + _DONE)
    return path


@dataclass
class WrkResult:
    requests: int
    seconds: float
    rps: float
    mbps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    p999_ms: float
    max_ms: float
    mean_ms: float
    errors: int  # socket errors and non-2xx/3xx answers together

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def run(
    url: str,
    script: Path,
    *,
    seconds: float,
    connections: int = 64,
    threads: int = 1,
    timeout_s: int = 10,
    cores: int | str = LOAD_CORE,
) -> WrkResult:
    exe = shutil.which("wrk")
    assert exe is not None
    args = pinned(
        cores,
        [
            exe,
            f"-t{threads}",
            f"-c{connections}",
            f"-d{max(1, round(seconds))}s",  # wrk takes whole seconds only
            f"--timeout={timeout_s}s",
            "-s",
            str(script),
            url,
        ],
    )
    r = subprocess.run(args, capture_output=True, text=True, timeout=seconds + timeout_s + 30)
    line = next((ln for ln in r.stdout.splitlines() if ln.startswith(_MARK)), None)
    if r.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({r.returncode}):\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")
    d = json.loads(line[len(_MARK) :])
    secs = d["duration_us"] / 1e6
    errors = d["connect"] + d["read"] + d["write"] + d["status"] + d["timeout"]
    return WrkResult(
        requests=d["requests"],
        seconds=round(secs, 3),
        rps=round(d["requests"] / secs, 1),
        mbps=round(d["bytes"] / secs / 1e6, 2),
        p50_ms=d["p50"] / 1e3,
        p90_ms=d["p90"] / 1e3,
        p99_ms=d["p99"] / 1e3,
        p999_ms=d["p999"] / 1e3,
        max_ms=d["max"] / 1e3,
        mean_ms=round(d["mean"] / 1e3, 3),
        errors=errors,
    )


def merge(runs: list[WrkResult]) -> WrkResult:
    """Slices of one path's load as one result: totals add up, percentiles are the slices'
    mean (each slice has about the same number of requests), the max is the max."""
    if len(runs) == 1:
        return runs[0]
    n = len(runs)
    req = sum(r.requests for r in runs)
    secs = sum(r.seconds for r in runs)
    return WrkResult(
        requests=req,
        seconds=round(secs, 3),
        rps=round(req / secs, 1),
        mbps=round(sum(r.mbps * r.seconds for r in runs) / secs, 2),
        p50_ms=round(sum(r.p50_ms for r in runs) / n, 3),
        p90_ms=round(sum(r.p90_ms for r in runs) / n, 3),
        p99_ms=round(sum(r.p99_ms for r in runs) / n, 3),
        p999_ms=round(sum(r.p999_ms for r in runs) / n, 3),
        max_ms=max(r.max_ms for r in runs),
        mean_ms=round(sum(r.mean_ms * r.requests for r in runs) / max(req, 1), 3),
        errors=sum(r.errors for r in runs),
    )

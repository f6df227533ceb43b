"""Processes for the bench: spawn pinned to a core, wait until ready, stop, read /proc."""

from __future__ import annotations

import contextlib
import os
import resource
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

# Port choice and process-group shutdown are the test suite's: one implementation.
from tests.support.procs import free_port as free_port
from tests.support.procs import stop

ROOT = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"
# The router under test gets core 0; load generators, upstreams and Triton share core 1.
ROUTER_CORE = 0
LOAD_CORE = 1
_CLK_TCK = os.sysconf("SC_CLK_TCK")


def pin_self(core: int) -> None:
    """Pin this process (and so every child it starts) to `core`, when the machine has it."""
    with contextlib.suppress(OSError, AttributeError):
        if core in os.sched_getaffinity(0):
            os.sched_setaffinity(0, {core})


def pinned(core: int | str, args: Sequence[str]) -> list[str]:
    """`core`: one core, or a taskset list such as "0,1"."""
    cores = [int(c) for c in str(core).split(",")]
    if all(c not in os.sched_getaffinity(0) and (os.cpu_count() or 1) <= c for c in cores):
        return list(args)
    return ["taskset", "-c", str(core), *args]


def raise_nofile(want: int = 65536) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if soft < target:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def wait_http(
    url: str,
    timeout: float = 30.0,
    proc: subprocess.Popen[bytes] | None = None,
    method: str = "GET",
) -> None:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before {url} was ready")
        try:
            data = b"{}" if method == "POST" else None
            req = urllib.request.Request(url, method=method, data=data)
            with urllib.request.urlopen(req, timeout=2) as r:
                if 200 <= r.status < 300:
                    return
        except (urllib.error.URLError, OSError) as e:
            last = e
        time.sleep(0.05)
    raise TimeoutError(f"{url} not ready after {timeout}s: {last}")


@contextlib.contextmanager
def spawn(
    args: Sequence[str],
    *,
    log: Path,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    grace: float = 10.0,
) -> Iterator[subprocess.Popen[bytes]]:
    """Start a process in its own process group; always stop it (and its group) on exit."""
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            list(args),
            env={**os.environ, **(env or {})},
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=cwd or ROOT,
            start_new_session=True,
        )
        try:
            yield proc
        finally:
            stop(proc, grace)


def children(pid: int) -> list[int]:
    """Direct children of `pid` (granian's workers are children of its main process)."""
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        with contextlib.suppress(OSError):
            out.extend(int(p) for p in task.read_text().split())
    return out


@dataclass(frozen=True)
class ProcStats:
    cpu_s: float  # user + system CPU seconds so far
    rss_kb: int  # VmRSS now
    hwm_kb: int  # VmHWM: peak resident set size


def proc_stats(pid: int) -> ProcStats:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return ProcStats(0.0, 0, 0)
    fields = stat.rsplit(")", 1)[1].split()
    # Fields 14 and 15 of stat (utime, stime); the split drops the first two.
    cpu = (int(fields[11]) + int(fields[12])) / _CLK_TCK
    kb = {"VmRSS": 0, "VmHWM": 0}
    for line in status.splitlines():
        name, _, value = line.partition(":")
        if name in kb:
            kb[name] = int(value.split()[0])
    return ProcStats(cpu, kb["VmRSS"], kb["VmHWM"])


def group_stats(pid: int) -> ProcStats:
    """A server's main process and its workers: CPU summed; memory of the largest worker
    (the main process only supervises), or of the main process when it has none."""
    main = proc_stats(pid)
    ws = [proc_stats(p) for p in children(pid)]
    cpu = main.cpu_s + sum(w.cpu_s for w in ws)
    rss = max((w.rss_kb for w in ws), default=main.rss_kb)
    hwm = max((w.hwm_kb for w in ws), default=main.hwm_kb)
    return ProcStats(round(cpu, 3), rss, hwm)


def _cpu_times(line: str = "cpu ") -> tuple[int, int]:
    """Ticks since boot of the whole machine (or of the core whose /proc/stat line starts
    with `line`): total, and idle + iowait."""
    for row in Path("/proc/stat").read_text().splitlines():
        if row.startswith(line):
            fields = [int(x) for x in row.split()[1:]]
            return sum(fields), fields[3] + fields[4]
    raise ValueError(f"/proc/stat has no {line.strip()} line")


def core_busy_s(core: int) -> float:
    """CPU seconds one core has spent busy since boot (all processes, kernel included)."""
    total, idle = _cpu_times(f"cpu{core} ")
    return (total - idle) / os.sysconf("SC_CLK_TCK")


def busy_percent(seconds: float = 1.0) -> float:
    """How much of the machine other work uses right now: a busy machine skews every number."""
    try:
        t0, i0 = _cpu_times()
        time.sleep(seconds)
        t1, i1 = _cpu_times()
    except (OSError, ValueError, IndexError):
        return 0.0
    return 100.0 * (1 - (i1 - i0) / max(t1 - t0, 1))

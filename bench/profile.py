"""`--profile`: py-spy samples the router's worker during its runs; raw stacks and top frames."""

from __future__ import annotations

import contextlib
import re
import signal
import subprocess
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from bench.deps import py_spy_bin
from bench.procs import LOAD_CORE, pinned

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<path>[^()]*?)(?::(?P<line>\d+))?\)$")


@dataclass
class Profile:
    path: Path
    samples: int = 0
    self_top: list[tuple[str, float]] = field(default_factory=list)  # (frame, % of samples)
    incl_top: list[tuple[str, float]] = field(default_factory=list)
    by_package: list[tuple[str, float]] = field(default_factory=list)  # self time per package


def _short(frame: str) -> str:
    m = _FRAME.match(frame)
    if not m:
        return frame
    path = m.group("path")
    for marker in ("site-packages/", "/work/main/", "lib/python3.11/"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{m.group('func')} ({path})"


# Self time in these frames is native code they called (py-spy without --native).
NO_PYTHON = "(native thread, no Python frame: granian's Rust runtime)"
_LOOP_FRAME = "MPServer._spawn_rsgi_worker"


def _package(frame: str) -> str:
    if frame == NO_PYTHON:
        return "granian Rust threads"
    if frame.startswith(_LOOP_FRAME):
        return "event loop (uvloop/granian native)"
    m = _FRAME.match(frame)
    path = m.group("path") if m else frame
    top = path.split("/", 1)[0]
    return top.removesuffix(".py") if "/" in path else "stdlib/other"


def summarize(raw: Path, top: int = 15) -> Profile:
    self_c: Counter[str] = Counter()
    incl_c: Counter[str] = Counter()
    pkg_c: Counter[str] = Counter()
    total = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, n = line.rpartition(" ")
        if not n.isdigit():
            continue
        count = int(n)
        # A stack that starts mid-way (no module frame) is a callback the native loop ran.
        frames = [_short(f) for f in stack.split(";") if f] or [NO_PYTHON]
        total += count
        self_c[frames[-1]] += count
        pkg_c[_package(frames[-1])] += count
        for f in set(frames):
            incl_c[f] += count
    prof = Profile(raw, total)
    if total:

        def pct(c: int) -> float:
            return round(100 * c / total, 1)

        prof.self_top = [(f, pct(c)) for f, c in self_c.most_common(top)]
        # The CLI frames sit under the whole event loop: they say nothing about the work.
        mine = [
            (f, c)
            for f, c in incl_c.most_common()
            if "airouter/" in f and "airouter/cli.py" not in f and "__main__" not in f
        ]
        prof.incl_top = [(f, pct(c)) for f, c in mine[:top]]
        prof.by_package = [(k, pct(c)) for k, c in pkg_c.most_common()]
    return prof


@contextlib.contextmanager
def record(pid: int | None, out: Path, seconds: float, enabled: bool) -> Iterator[list[Profile]]:
    """Sample `pid` for `seconds` while the block runs; the list gets the summary afterwards."""
    found: list[Profile] = []
    exe = py_spy_bin() if enabled and pid else None
    if exe is None or pid is None:
        yield found
        return
    args = pinned(
        LOAD_CORE,
        [
            exe,
            "record",
            "-p",
            str(pid),
            "-d",
            str(int(seconds) + 60),
            "-r",
            "250",
            "--nonblocking",
            "-f",
            "raw",
            "-o",
            str(out),
        ],
    )
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        yield found
    finally:
        # SIGINT makes py-spy stop sampling and write what it has.
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    if out.exists():
        found.append(summarize(out))

"""`python -m bench [--quick] [--profile]`: start the pieces, run the scenarios, report.

Writes bench/results/<timestamp>.json and .png. Every process it starts runs in its own
process group and is stopped on the way out, Ctrl-C and errors included.
"""

from __future__ import annotations

import argparse
import contextlib
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import FrameType
from typing import Any

from bench import chart, deps, limits, nginx, report, router, scenarios
from bench.procs import (
    HOST,
    LOAD_CORE,
    ROOT,
    ROUTER_CORE,
    busy_percent,
    free_port,
    pin_self,
    raise_nofile,
    spawn,
    wait_http,
)

ALL = ("chat", "stream", "overhead", "scale", "paced", "triton", "triton_cost", "limits")
FLOORS = {
    "floor": ["bench.floor"],
    "floor_rsgi": ["bench.floor_rsgi"],
    "floor_rsgi_aiohttp": ["bench.floor_rsgi", "--client", "aiohttp"],
}
DEFAULT_FLOORS = ("floor", "floor_rsgi")
RESULTS = ROOT / "bench" / "results"


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def _version(args: list[str]) -> str:
    try:
        r = subprocess.run(args, capture_output=True, text=True, timeout=10)
    except OSError:
        return "?"
    out = (r.stdout + r.stderr).strip().splitlines()
    return out[0] if out else "?"


def _meta(quick: bool, stamp: str) -> dict[str, Any]:
    import aiohttp
    import granian

    return {
        "timestamp": stamp,
        "quick": quick,
        "router_core": ROUTER_CORE,
        "load_core": LOAD_CORE,
        "cpu": _cpu_model(),
        "python": scenarios.python_version(),
        "granian": granian.__version__,
        "aiohttp": aiohttp.__version__,
        "nginx": _version([deps.nginx_bin() or "nginx", "-v"]),
        "wrk": _version(["wrk", "-v"]),
    }


def _terminate(signum: int, frame: FrameType | None) -> None:
    # SIGTERM unwinds like Ctrl-C, so every context manager stops what it started.
    raise KeyboardInterrupt


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="short runs, 500 paced streams (< 2 min)")
    p.add_argument(
        "--profile",
        action="store_true",
        help="sample the router worker with py-spy during its runs (skews its numbers)",
    )
    p.add_argument("--only", default=",".join(ALL), help=f"comma-separated subset of {ALL}")
    p.add_argument("--streams", type=int, help="paced streams (default 2000, quick 500)")
    p.add_argument(
        "--wait-idle",
        type=float,
        default=0,
        metavar="SECONDS",
        help="wait up to this long for other work on the machine to stop first",
    )
    p.add_argument("--no-install", action="store_true", help="fail rather than apt/pip install")
    p.add_argument(
        "--router-prelude",
        default="",
        metavar="CODE",
        help="Python to run in the router before it starts, to A/B runtime knobs, "
        "e.g. 'sys.setswitchinterval(0.0005)'",
    )
    p.add_argument(
        "--baseline",
        default="",
        metavar="DIR",
        help="another checkout (e.g. a git worktree at the commit before a change) whose "
        "router runs beside this one in chat, stream, overhead and triton_cost: an A/B in one run",
    )
    p.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="chat, stream and limits: the paths take turns in this many slices of the run, so "
        "drift from other work on the machine hits them alike (default 3; more on a busy "
        "machine)",
    )
    p.add_argument(
        "--floors",
        default=",".join(DEFAULT_FLOORS),
        help=f"comma-separated pass-throughs to run beside the router, of {tuple(FLOORS)}",
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = set(only) - set(ALL)
    if unknown:
        print(f"bench: unknown scenario(s) {sorted(unknown)}; choose from {ALL}", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _terminate)
    if not args.no_install:
        deps.ensure_tools(redis="limits" in only)
        deps.ensure_pip("matplotlib")
    busy = busy_percent()
    deadline = time.monotonic() + args.wait_idle
    while busy > 15 and time.monotonic() < deadline:
        busy = busy_percent(2.0)
    if busy > 15:
        print(
            f">> warning: the machine is {busy:.0f}% busy before the bench starts; other "
            "work on these cores will skew the numbers",
            flush=True,
        )
    pin_self(LOAD_CORE)
    raise_nofile()
    floors = [f.strip() for f in args.floors.split(",") if f.strip()]
    if set(floors) - set(FLOORS):
        print(f"bench: unknown floor(s); choose from {tuple(FLOORS)}", file=sys.stderr)
        return 2
    baseline = str(Path(args.baseline).resolve()) if args.baseline else ""
    settings = scenarios.Settings.make(
        args.quick, args.profile, args.streams, args.router_prelude, baseline, max(1, args.rounds)
    )
    stamp = time.strftime("%Y%m%d-%H%M%S")
    RESULTS.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {
        "meta": _meta(args.quick, stamp),
        "settings": vars(settings),
        "scenarios": {},
    }
    results["meta"]["busy_before_pct"] = round(busy, 1)
    started = time.monotonic()
    try:
        with (
            tempfile.TemporaryDirectory(prefix="airouter-bench-") as d,
            contextlib.ExitStack() as stack,
        ):
            tmp = Path(d)
            paced_port = free_port()
            up = stack.enter_context(
                spawn(
                    [
                        sys.executable,
                        "-m",
                        "bench.upstreams",
                        "--port",
                        str(paced_port),
                        "--tokens",
                        str(settings.paced_tokens),
                        "--interval",
                        str(settings.paced_interval),
                    ],
                    log=tmp / "paced-upstream.log",
                )
            )
            wait_http(f"http://{HOST}:{paced_port}/health", proc=up)
            upstream = stack.enter_context(nginx.run_upstream(tmp, LOAD_CORE))
            # The proxy under comparison gets the router's core: same budget, same pinning.
            proxy = stack.enter_context(
                nginx.run_proxy(
                    tmp,
                    ROUTER_CORE,
                    {"up": upstream.port, "paced": paced_port},
                    "/up" + nginx.JSON_PATH,
                )
            )
            running = {}
            if {"chat", "stream", "overhead", "paced"} & set(only):
                routes = scenarios.floor_routes(upstream.url, paced_port)
                for name in floors:
                    running[name] = stack.enter_context(
                        router.run_floor(tmp, name, FLOORS[name], routes, ROUTER_CORE)
                    )
            env = scenarios.Env(tmp, RESULTS, stamp, upstream, proxy, paced_port, running)
            sc = results["scenarios"]
            if "chat" in only:
                sc["chat"] = scenarios.wrk_scenario(env, settings, "chat", stream=False)
            if "stream" in only:
                sc["stream"] = scenarios.wrk_scenario(env, settings, "stream", stream=True)
            if "overhead" in only:
                sc["overhead"] = scenarios.overhead_scenario(env, settings)
            if "scale" in only:
                sc["scale"] = scenarios.scale_scenario(env, settings)
            if "paced" in only:
                sc["paced"] = scenarios.paced_scenario(env, settings)
            if "triton" in only:
                sc["triton"] = scenarios.triton_scenario(env, settings)
            if "triton_cost" in only:
                sc["triton_cost"] = scenarios.triton_cost_scenario(env, settings)
            if "limits" in only:
                sc["limits"] = limits.limits_scenario(env, settings)
    except KeyboardInterrupt:
        print("\nbench: interrupted; every process it started has been stopped", file=sys.stderr)
        return 130
    results["meta"]["wall_s"] = round(time.monotonic() - started, 1)
    report.add_ratios(results)
    tgts = report.targets(results)
    print()
    print(report.table(results, tgts))
    out = RESULTS / f"{stamp}.json"
    report.write_json(results, tgts, out)
    png = RESULTS / f"{stamp}.png"
    drew = chart.chart(results, png)
    print(
        f"\nwrote {out.relative_to(ROOT)}"
        + (f" and {png.relative_to(ROOT)}" if drew else "")
        + f" in {results['meta']['wall_s']:.0f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`python -m bench.admission [--quick]`: fair admission when the backends are full.

Two simulated nodes (bench/routing/sim_node.py) with 4 decode slots each behind the real
router (max_concurrent = 4 per node: 8 slots); a request decodes 15 tokens of 20 ms, about
0.3 s (the floods' lengths vary around it). Per scenario and worker count, one router:

- priority: an interactive key (high) sends 2 requests a second, streamed, alone (its
  unloaded TTFT) and then behind a low-priority bulk key keeping 40 requests in flight; the
  "same" arm gives both keys the same priority and weight (fair share alone: the interactive
  key, under its half, still goes ahead of the flood's backlog). Target: TTFT p90 within
  100 ms of unloaded.
- weights: keys a (weight 3) and b (weight 1) both keep 20 in flight. Target: served
  2.7-3.3 : 1.
- below share: a (weight 3) floods, b (weight 1) sends 2 a second (well under its quarter):
  b gets all it asks for (served / sent = 1) with little wait.
- starvation: a high key sends about half the capacity, a low key floods: the low key gets
  >= 90% of what is left (capacity measured with the low key alone).

Prints a markdown table and the targets; writes bench/results/admission-<time>.md/.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

from tests.support.procs import ROOT, free_port, spawn, wait_http
from tests.support.router import run_router

SLOTS_PER_NODE = 4
MAX_TOKENS = 15  # with the sim's 20 ms steps: about 0.3 s a request
KEYS = {"inter": ("high", 1), "bulk": ("low", 1), "a": ("normal", 3), "b": ("normal", 1)}


def router_config(ports: list[int], same_priority: bool) -> str:
    urls = ", ".join(f'"http://127.0.0.1:{p}/v1"' for p in ports)
    keys = "".join(
        f'[keys.{k}]\nkey = "sk-{k}"\npriority = "{"normal" if same_priority else p}"\n'
        f"weight = {w}\n" for k, (p, w) in KEYS.items())
    return f"""
{keys}
[backends.sim]
type = "openai"
urls = [{urls}]
health_interval = 0
max_concurrent = {SLOTS_PER_NODE}
max_queue = 1000
queue_timeout = 120
[models.m]
backend = "sim"
backend_model = "sim"
"""


class Load:
    """Requests of one key: TTFT of the streamed ones, counts of sent and served."""

    def __init__(self, url: str, key: str) -> None:
        self.url = url + "/v1/chat/completions"
        self.key = key
        self.ttft: list[float] = []
        self.sent = self.served = self.errors = 0
        self.record = True

    async def one(self, s: aiohttp.ClientSession, stream: bool) -> None:
        # The flood's lengths vary (0.3 s on average), as real ones do: slots free one by one,
        # not in waves.
        tokens = MAX_TOKENS if stream else random.randint(MAX_TOKENS // 2, MAX_TOKENS * 3 // 2)
        body = {"model": "m", "max_tokens": tokens, "stream": stream,
                "messages": [{"role": "user", "content": f"{self.key} {time.time()}"}]}
        record = self.record
        self.sent += record
        t0 = time.perf_counter()
        try:
            async with s.post(self.url, json=body,
                              headers={"Authorization": f"Bearer sk-{self.key}"}) as r:
                if r.status != 200:
                    await r.read()
                    self.errors += record
                    return
                first = True
                async for line in r.content:
                    if first and line.startswith(b"data: {"):
                        first = False
                        if record:
                            self.ttft.append(time.perf_counter() - t0)
                if record and self.record:
                    self.served += 1
        except (TimeoutError, aiohttp.ClientError):
            self.errors += record

    async def flood(self, s: aiohttp.ClientSession, n: int, until: float) -> None:
        async def loop() -> None:
            while time.monotonic() < until:
                await self.one(s, False)

        await asyncio.gather(*(loop() for _ in range(n)))

    async def paced(self, s: aiohttp.ClientSession, rate: float, until: float) -> None:
        tasks = []
        while time.monotonic() < until:
            tasks.append(asyncio.create_task(self.one(s, True)))
            await asyncio.sleep(1 / rate)
        await asyncio.gather(*tasks)


async def scenario(url: str, name: str, secs: float) -> dict[str, Any]:
    conn = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=300)
    async with aiohttp.ClientSession(connector=conn, timeout=timeout) as s:
        loads = {k: Load(url, k) for k in KEYS}
        warm = secs / 6

        async def run(*jobs: Any) -> None:
            for load in loads.values():
                load.record = False
            t_end = time.monotonic() + warm + secs
            tasks = [asyncio.create_task(j(t_end)) for j in jobs]
            await asyncio.sleep(warm)
            for load in loads.values():
                load.record = True
            await asyncio.gather(*tasks)

        inter, bulk, a, b = (loads[k] for k in ("inter", "bulk", "a", "b"))
        if name == "unloaded":
            await run(lambda t: inter.paced(s, 2, t))
        elif name == "priority":
            await run(lambda t: bulk.flood(s, 40, t), lambda t: inter.paced(s, 2, t))
        elif name == "weights":
            await run(lambda t: a.flood(s, 20, t), lambda t: b.flood(s, 20, t))
        elif name == "below_share":
            await run(lambda t: a.flood(s, 30, t), lambda t: b.paced(s, 2, t))
        elif name == "capacity":
            await run(lambda t: bulk.flood(s, 40, t))
        elif name == "starvation":
            await run(lambda t: bulk.flood(s, 40, t), lambda t: inter.paced(s, 12, t))
        return {k: {"sent": v.sent, "served": v.served, "errors": v.errors,
                    "rate": v.served / secs, "ttft_p50": _pct(v.ttft, 0.5) * 1000,
                    "ttft_p90": _pct(v.ttft, 0.9) * 1000} for k, v in loads.items()}


def _pct(xs: list[float], q: float) -> float:
    if not xs:
        return 0.0
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="6 s per scenario instead of 30")
    ap.add_argument("--workers", default="1,2")
    a = ap.parse_args()
    secs = 6.0 if a.quick else 30.0
    ports = [free_port() for _ in range(2)]
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        cmd = [sys.executable, "-m", "bench.routing.sim_node", "--ports",
               ",".join(map(str, ports)), "--decode-slots", str(SLOTS_PER_NODE)]
        with spawn(cmd, log=tmp / "sim.log") as proc:
            for p in ports:
                wait_http(f"http://127.0.0.1:{p}/v1/models", timeout=30, proc=proc)
            for workers in [int(w) for w in a.workers.split(",")]:
                for arm, same in (("fair", False), ("same", True)):
                    names = ["unloaded", "priority"] if same else [
                        "unloaded", "priority", "weights", "below_share", "capacity",
                        "starvation"]
                    with run_router(router_config(ports, same), tmp, workers=workers) as r:
                        for name in names:
                            got = asyncio.run(scenario(r.url, name, secs))
                            rows.append({"arm": arm, "workers": workers, "scenario": name,
                                         "secs": secs, **{f"{k}": v for k, v in got.items()}})
                            print(line(rows[-1]), flush=True)
    md = table(rows) + "\n\n" + "\n".join(check(rows))
    print("\n" + md)
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    (out / f"admission-{stamp}.json").write_text(json.dumps(rows, indent=1))
    (out / f"admission-{stamp}.md").write_text(md + "\n")


HEAD = ("| arm | workers | scenario | inter TTFT p50 / p90 ms | inter served/sent | "
        "bulk served/s | a served/s | b served/sent | a:b |")


def line(r: dict[str, Any]) -> str:
    i, bu, a, b = r["inter"], r["bulk"], r["a"], r["b"]
    ratio = f"{a['served'] / b['served']:.2f}" if b["served"] and a["served"] else "-"
    ttft = f"{i['ttft_p50']:.0f} / {i['ttft_p90']:.0f}" if i["sent"] else "-"
    return (f"| {r['arm']} | {r['workers']} | {r['scenario']} | {ttft} | "
            f"{i['served']}/{i['sent']} | {bu['rate']:.1f} | {a['rate']:.1f} | "
            f"{b['served']}/{b['sent']} | {ratio} |")


def table(rows: list[dict[str, Any]]) -> str:
    return "\n".join([HEAD, "|" + "---|" * 9, *(line(r) for r in rows)])


def _get(rows: list[dict[str, Any]], arm: str, w: int, name: str) -> dict[str, Any]:
    return next(r for r in rows if r["arm"] == arm and r["workers"] == w
                and r["scenario"] == name)


def check(rows: list[dict[str, Any]]) -> list[str]:
    out = []
    for w in sorted({r["workers"] for r in rows}):
        un = _get(rows, "fair", w, "unloaded")["inter"]["ttft_p90"]
        pr = _get(rows, "fair", w, "priority")["inter"]["ttft_p90"]
        ff = _get(rows, "same", w, "priority")["inter"]["ttft_p90"]
        out.append(f"{w} worker(s): high-priority TTFT p90 {pr:.0f} ms behind a low flood vs "
                   f"{un:.0f} ms unloaded (+{pr - un:.0f}; target <= +100; same priority: "
                   f"{ff:.0f} ms): {'PASS' if pr - un <= 100 else 'FAIL'}")
        wt = _get(rows, "fair", w, "weights")
        ratio = wt["a"]["served"] / max(1, wt["b"]["served"])
        out.append(f"{w} worker(s): weights 3:1, both flooding: served {ratio:.2f}:1 (target "
                   f"2.7-3.3): {'PASS' if 2.7 <= ratio <= 3.3 else 'FAIL'}")
        bs = _get(rows, "fair", w, "below_share")["b"]
        frac = bs["served"] / max(1, bs["sent"])
        out.append(f"{w} worker(s): a key under its share got {bs['served']} of {bs['sent']} "
                   f"({frac:.2f}; target 1.00, TTFT p90 {bs['ttft_p90']:.0f} ms): "
                   f"{'PASS' if frac >= 0.99 and bs['errors'] == 0 else 'FAIL'}")
        cap = _get(rows, "fair", w, "capacity")["bulk"]["rate"]
        st = _get(rows, "fair", w, "starvation")
        left = cap - st["inter"]["rate"]
        share = st["bulk"]["rate"] / left if left > 0 else 0.0
        out.append(f"{w} worker(s): low priority served {st['bulk']['rate']:.1f}/s of "
                   f"{left:.1f}/s left by high ({share:.2f}; target >= 0.90): "
                   f"{'PASS' if share >= 0.9 else 'FAIL'}")
    return out


if __name__ == "__main__":
    main()

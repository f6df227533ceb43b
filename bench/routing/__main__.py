"""`python -m bench.routing [--quick]`: the balance policies against simulated nodes.

Four simulated nodes (time, not compute) behind the real router, of two kinds
(bench/routing/nodes.py): vLLM-like OpenAI HTTP nodes (sim_node.py) for every trace and arm,
and Triton servers with a TensorRT-LLM-like Python-backend model (triton_sim/) for the
shared-prefix trace. Seeded traces; one router per (nodes, trace, arm), nodes reset between
runs. Reports client TTFT and inter-token latency, the nodes' own cache hit rate, load
imbalance and errors, as a markdown table (bench/results/routing-<time>.md, .json, .png).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import aiohttp

from bench.routing import traces
from bench.routing.nodes import HttpNodes, TritonNodes, http_nodes, triton_nodes
from bench.routing.traces import Trace
from tests.support.procs import ROOT
from tests.support.router import RouterProc, run_router

KEY = "sk-bench"
NODES = 4
# (balance, workers, [backends.sim.prefix] settings)
ARMS = [("round_robin", 1, ""), ("least_inflight", 1, ""), ("prefix", 1, ""),
        ("prefix_load", 1, ""), ("prefix_load", 2, "")]
# On the Triton nodes, the shared-prefix trace only (each run costs the same time).
TRITON_ARMS = [("least_inflight", 1, ""), ("prefix_load", 1, ""), ("prefix_load", 2, "")]


def router_config(nodes: HttpNodes | TritonNodes, balance: str, prefix: str = "",
                  resume: bool = False) -> str:
    metrics = 0.5 if balance == "prefix_load" else 0
    return f'[server]\napi_keys = ["{KEY}"]\n' + nodes.config(balance, prefix, metrics, resume)


class Client:
    def __init__(self, router: RouterProc) -> None:
        self.url = router.base_url + "/chat/completions"
        self.ttft: list[float] = []
        self.itl: list[float] = []
        self.errors = 0
        self.broken = 0  # of the errors: streams cut after they began
        self.done = 0
        self.wrong = 0  # complete answers of another length than asked (a resume gone wrong)

    async def ask(self, s: aiohttp.ClientSession, messages: list[dict[str, Any]],
                  record: bool = True) -> str:
        """One streamed request; its latencies count when `record` (after the warm-up)."""
        ttft = self.ttft if record else []
        itl = self.itl if record else []
        body = {"model": "m", "messages": messages, "max_tokens": traces.MAX_TOKENS,
                "stream": True}
        t0 = time.perf_counter()
        last = 0.0
        text: list[str] = []
        try:
            async with s.post(self.url, json=body,
                              headers={"Authorization": f"Bearer {KEY}"}) as resp:
                if resp.status != 200:
                    await resp.read()
                    self.errors += 1
                    return ""
                complete = False
                async for line in resp.content:
                    if not line.startswith(b"data: "):
                        continue
                    if line.startswith(b"data: [DONE]"):
                        complete = True
                        break
                    now = time.perf_counter()
                    if not text:
                        ttft.append(now - t0)
                    else:
                        itl.append(now - last)
                    last = now
                    chunk = json.loads(line[6:])
                    for c in chunk.get("choices") or ():
                        text.append((c.get("delta") or {}).get("content") or "")
                    if "error" in chunk:
                        break
                if not complete:
                    self.errors += 1
                    self.broken += 1 if text else 0
                    return ""
        except (TimeoutError, aiohttp.ClientError):
            self.errors += 1
            return ""
        self.done += 1
        answer = "".join(text)
        if answer.count("tok ") != traces.MAX_TOKENS:
            self.wrong += 1
        return answer


async def drive(router: RouterProc, trace: Trace, kill: tuple[float, int] | None,
                warm: float) -> Client:
    """Latencies of requests sent in the first `warm` seconds are not counted: every prefix
    is cold then, whatever the policy (their cache hits still count)."""
    client = Client(router)
    start = time.perf_counter()
    conn = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=conn,
                                     timeout=aiohttp.ClientTimeout(total=120)) as s:

        async def one(req: traces.Request) -> None:
            await asyncio.sleep(max(0.0, start + req.at - time.perf_counter()))
            await client.ask(s, req.messages, req.at >= warm)

        async def talk(conv: traces.Conversation) -> None:
            await asyncio.sleep(conv.start)
            msgs: list[dict[str, Any]] = [{"role": "system", "content": conv.system}]
            for q, think in zip(conv.questions, conv.think, strict=True):
                if len(msgs) > 1:
                    trace.attainable_tokens += sum(len(m["content"]) for m in msgs) // 4
                msgs.append({"role": "user", "content": q})
                answer = await client.ask(s, msgs, time.perf_counter() - start >= warm)
                msgs.append({"role": "assistant", "content": answer})
                await asyncio.sleep(think)

        async def killer() -> None:
            if kill is not None:
                await asyncio.sleep(kill[0])
                async with s.post(f"http://127.0.0.1:{kill[1]}/sim/kill") as r:
                    await r.read()

        await asyncio.gather(*(one(r) for r in trace.requests),
                             *(talk(c) for c in trace.conversations), killer())
    return client


def _pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def run_one(nodes: HttpNodes | TritonNodes, tmp: Path, trace_fn: Any, balance: str,
            workers: int, prefix: str = "", kill: tuple[float, int] | None = None,
            warm: float = 2.0, resume: bool = False) -> dict[str, Any]:
    trace: Trace = trace_fn()
    with run_router(router_config(nodes, balance, prefix, resume), tmp,
                    workers=workers) as r:
        time.sleep(0.5)  # a first metrics read (the scrapers read at once)
        nodes.reset()
        client = asyncio.run(drive(r, trace, kill, warm))
        resumed = _resumes(r)
    stats = nodes.stats()
    prompt = sum(n["prompt_tokens"] for n in stats)
    cached = sum(n["cached_tokens"] for n in stats)
    loads = [n["in_flight_area"] / n["elapsed"] for n in stats if n["elapsed"] > 0]
    util = [n["busy_prefill_s"] / n["elapsed"] for n in stats if n["elapsed"] > 0]
    mean = sum(loads) / len(loads) if loads else 0.0
    return {
        "nodes": nodes.kind,
        "trace": trace.name + (" (node killed)" if kill else ""),
        "balance": balance + (f" ({prefix})" if prefix else ""),
        "workers": workers, "requests": client.done + client.errors,
        "ttft_p50": _pct(client.ttft, 0.5) * 1000, "ttft_p90": _pct(client.ttft, 0.9) * 1000,
        "ttft_p99": _pct(client.ttft, 0.99) * 1000, "itl_p99": _pct(client.itl, 0.99) * 1000,
        "hit_rate": cached / prompt if prompt else 0.0,
        "hit_of_attainable": cached / trace.attainable_tokens if trace.attainable_tokens else None,
        "imbalance": max(loads) / mean if mean else 0.0,
        "prefill_util": sum(util) / len(util) if util else 0.0,
        "errors": client.errors, "broken": client.broken, "wrong_length": client.wrong,
        "resumed": resumed,
    }


def _resumes(router: RouterProc) -> dict[str, int]:
    """airouter_stream_resumes_total by outcome, summed over the router's workers."""
    with urllib.request.urlopen(router.url + "/metrics", timeout=10) as r:
        text = r.read().decode()
    out: dict[str, int] = {}
    for line in text.splitlines():
        if line.startswith("airouter_stream_resumes_total{"):
            outcome = line.split('outcome="', 1)[1].split('"', 1)[0]
            out[outcome] = out.get(outcome, 0) + int(float(line.rsplit(" ", 1)[1]))
    return out


def table(rows: list[dict[str, Any]]) -> str:
    head = ("| nodes | trace | balance | workers | requests | TTFT p50 ms | p90 | p99 | "
            "ITL p99 ms | hit rate | of attainable | imbalance | prefill util | "
            "errors (cut streams) |")
    out = [head, "|" + "---|" * 14]
    for r in rows:
        att = "n/a" if r["hit_of_attainable"] is None else f"{r['hit_of_attainable']:.2f}"
        out.append(
            f"| {r['nodes']} | {r['trace']} | {r['balance']} | {r['workers']} | {r['requests']} | "
            f"{r['ttft_p50']:.0f} | {r['ttft_p90']:.0f} | {r['ttft_p99']:.0f} | "
            f"{r['itl_p99']:.0f} | {r['hit_rate']:.2f} | {att} | {r['imbalance']:.2f} | "
            f"{r['prefill_util']:.2f} | {r['errors']} ({r.get('broken', 0)}) |")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true",
                    help="5 s per run instead of 10, and no round_robin arm")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--only", default="", help="comma-separated trace names (no checks)")
    ap.add_argument("--arms", default="", help="comma-separated balance names")
    ap.add_argument("--no-triton", action="store_true", help="the OpenAI HTTP nodes only")
    a = ap.parse_args()
    secs = 5.0 if a.quick else 10.0
    seed = a.seed
    # Rates: ~70% of least_inflight's prefill capacity on these nodes (see README).
    plan = [
        ("shared_prefix", lambda: traces.shared_prefix(seed, 20.0, secs)),
        ("no_sharing", lambda: traces.no_sharing(seed, 14.0, secs)),
        ("hot_prefix", lambda: traces.shared_prefix(seed, 20.0, secs, zipf=1.2)),
        ("multi_turn", lambda: traces.multi_turn(seed, 32, secs)),
    ]
    only = set(a.only.split(",")) - {""}
    arms = set(a.arms.split(",")) - {""}
    rows: list[dict[str, Any]] = []

    # --quick leaves round_robin out too: the whole run within ~3 minutes.
    skip = {"round_robin"} if a.quick else set()

    def run(nodes: HttpNodes | TritonNodes, name: str, fn: Any, arm_list: list[Any]) -> None:
        for balance, workers, prefix in arm_list:
            if (not arms and balance not in skip) or balance in arms:
                rows.append(run_one(nodes, tmp, fn, balance, workers, prefix, None, secs / 5))
                print(table(rows[-1:]).splitlines()[-1], flush=True)

    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        with http_nodes(NODES, tmp) as nodes:
            for name, fn in plan:
                if not only or name in only:
                    run(nodes, name, fn, ARMS)
            if not (only or arms):
                # A node killed halfway through (it stays dead); streams it was answering
                # are finished on the others (resume = "continue_final_message").
                rows.append(run_one(nodes, tmp, plan[0][1], "prefix_load", 1,
                                    kill=(secs / 2, nodes.ports[-1]), warm=secs / 5,
                                    resume=True))
                print(table(rows[-1:]).splitlines()[-1], flush=True)
        if not a.no_triton and (not only or "shared_prefix" in only):
            with triton_nodes(NODES, tmp) as tnodes:
                run(tnodes, "shared_prefix", plan[0][1], TRITON_ARMS)
    if only or arms:
        return
    md = table(rows)
    print("\n" + md + "\n")
    print("\n".join(check(rows)))
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    (out / f"routing-{stamp}.json").write_text(json.dumps(rows, indent=1))
    (out / f"routing-{stamp}.md").write_text(md + "\n\n" + "\n".join(check(rows)) + "\n")
    try:
        chart(rows, out / f"routing-{stamp}.png")
    except Exception as e:  # a chart is a nicety
        print(f"no chart: {e}")


def _row(rows: list[dict[str, Any]], trace: str, balance: str, workers: int = 1,
         nodes: str = "openai") -> dict[str, Any]:
    return next(r for r in rows if r["trace"] == trace and r["balance"] == balance
                and r["workers"] == workers and r["nodes"] == nodes)


def _mark(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def check(rows: list[dict[str, Any]]) -> list[str]:
    out = []
    for kind in sorted({r["nodes"] for r in rows}):
        sp = _row(rows, "shared_prefix", "prefix_load", nodes=kind)
        li = _row(rows, "shared_prefix", "least_inflight", nodes=kind)
        ratio = li["ttft_p90"] / sp["ttft_p90"] if sp["ttft_p90"] else 0
        out.append(f"{kind}: shared_prefix TTFT p90 least_inflight/prefix_load = {ratio:.1f}x "
                   f"(target >= 5): {_mark(ratio >= 5)}")
        att = sp["hit_of_attainable"] or 0
        out.append(f"{kind}: shared_prefix hit rate of attainable = {att:.2f} (target >= 0.9): "
                   f"{_mark(att >= 0.9)}")
        w2 = _row(rows, "shared_prefix", "prefix_load", 2, kind)
        gap = (sp["hit_rate"] - w2["hit_rate"]) * 100
        out.append(f"{kind}: prefix_load 2 workers hit rate {w2['hit_rate']:.2f} vs 1 worker "
                   f"{sp['hit_rate']:.2f} ({-gap:+.1f} points; target: at most 5 below): "
                   f"{_mark(gap <= 5)}")
    ns, nl = _row(rows, "no_sharing", "prefix_load"), _row(rows, "no_sharing", "least_inflight")
    d = ns["ttft_p90"] / nl["ttft_p90"] - 1
    out.append(f"no_sharing TTFT p90 prefix_load vs least_inflight = {d:+.0%} (target within "
               f"10%): {_mark(d <= 0.10)}")
    hp, hl = _row(rows, "hot_prefix", "prefix_load"), _row(rows, "hot_prefix", "least_inflight")
    out.append(f"hot_prefix TTFT p90 {hp['ttft_p90']:.0f} vs {hl['ttft_p90']:.0f} ms "
               f"(no worse): {_mark(hp['ttft_p90'] <= hl['ttft_p90'] * 1.05)}")
    k = next(r for r in rows if "killed" in r["trace"])
    early = k["errors"] - k["broken"]
    resumed = k.get("resumed", {})
    others = ", ".join(f"{n} {o}" for o, n in resumed.items() if o != "resumed")
    out.append(f"node killed mid-run: {k['errors']} client errors of {k['requests']}: "
               f"{early} before the answer began (target 0: {_mark(early == 0)}), "
               f"{k['broken']} streams cut mid-answer (target 0: {_mark(k['broken'] == 0)}); "
               f"{resumed.get('resumed', 0)} resumed on another node ({others or 'none lost'}), "
               f"{k['wrong_length']} complete answers of the wrong length (target 0: "
               f"{_mark(k['wrong_length'] == 0)})")
    return out


def chart(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in rows if r["nodes"] == "openai"]
    names = [t for t in dict.fromkeys(r["trace"] for r in rows) if "killed" not in t]
    ran = [(b, w, p) for b, w, p in ARMS
           if any(r["balance"] == b + (f" ({p})" if p else "") and r["workers"] == w
                  for r in rows)]
    arms = [f"{b}" + (f" x{w}" if w > 1 else "") + (f" {p}" if p else "") for b, w, p in ran]
    fig, ax = plt.subplots(figsize=(11, 4))
    width = 0.8 / len(ran)
    for i, (b, w, p) in enumerate(ran):
        label = b + (f" ({p})" if p else "")
        ys = [_row(rows, t, label, w)["ttft_p90"] for t in names]
        ax.bar([x + i * width for x in range(len(names))], ys, width, label=arms[i])
    ax.set_xticks([x + 0.4 - width / 2 for x in range(len(names))], names)
    ax.set_ylabel("client TTFT p90 (ms)")
    ax.set_yscale("log")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)


if __name__ == "__main__":
    main()

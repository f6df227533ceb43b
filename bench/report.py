"""Ratios, targets, the printed table, the JSON file and the PNG chart."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

RSS_LIMIT_MB = 200.0
ADDED_ITL_LIMIT_MS = 5.0


@dataclass
class Target:
    name: str
    value: float | None
    goal: str
    met: bool | None  # None: not measured in this run
    margin: str


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or not b or math.isnan(a) or math.isnan(b):
        return None
    return a / b


def _get(d: dict[str, Any], *keys: str) -> Any:
    for k in keys:
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d


def add_ratios(results: dict[str, Any]) -> None:
    for name in ("chat", "stream"):
        sc = results["scenarios"].get(name)
        if not sc:
            continue
        r, n, d = sc["router"], sc["nginx"], sc["direct"]
        sc["ratios"] = {
            "router_vs_nginx_rps": _round(_ratio(r["rps"], n["rps"]), 4),
            "router_vs_direct_rps": _round(_ratio(r["rps"], d["rps"]), 4),
            "nginx_vs_direct_rps": _round(_ratio(n["rps"], d["rps"]), 4),
            "router_added_p50_ms_vs_direct": round(r["p50_ms"] - d["p50_ms"], 3),
            "router_added_p99_ms_vs_direct": round(r["p99_ms"] - d["p99_ms"], 3),
            "router_added_p50_ms_vs_nginx": round(r["p50_ms"] - n["p50_ms"], 3),
            "router_added_p99_ms_vs_nginx": round(r["p99_ms"] - n["p99_ms"], 3),
            # CPU per request does not depend on which core ran out first, so it still
            # compares the two when the load core (wrk + upstream) caps nginx's req/s.
            "router_vs_nginx_cpu_efficiency": _round(
                _ratio(n.get("cpu_us_per_req"), r.get("cpu_us_per_req")), 4
            ),
        }
    sc = results["scenarios"].get("paced")
    if sc:
        r, n, d = sc["router"], sc["nginx"], sc["direct"]
        sc["ratios"] = {
            "router_added_ttft_p50_ms": round(r["ttft_p50_ms"] - d["ttft_p50_ms"], 3),
            "router_added_ttft_p99_ms": round(r["ttft_p99_ms"] - d["ttft_p99_ms"], 3),
            "router_added_itl_p50_ms": round(r["itl_p50_ms"] - d["itl_p50_ms"], 3),
            "router_added_itl_p99_ms": round(r["itl_p99_ms"] - d["itl_p99_ms"], 3),
            "nginx_added_itl_p99_ms": round(n["itl_p99_ms"] - d["itl_p99_ms"], 3),
            "nginx_added_ttft_p50_ms": round(n["ttft_p50_ms"] - d["ttft_p50_ms"], 3),
        }
    sc = results["scenarios"].get("triton")
    if sc:
        ceiling = sc.get("direct_core0", {}).get("tokens_per_s")
        sc["ratios"] = {
            # The target's comparison: both clients on the load core, beside Triton.
            "router_vs_direct_tokens_per_s": _round(
                _ratio(sc["router"]["tokens_per_s"], sc["direct"]["tokens_per_s"]), 4
            ),
            # Against Triton with a core to itself and the client elsewhere: the ceiling.
            "router_vs_direct_core0_tokens_per_s": _round(
                _ratio(sc["router"]["tokens_per_s"], ceiling), 4
            ),
        }


def _round(x: float | None, n: int) -> float | None:
    return None if x is None else round(x, n)


def targets(results: dict[str, Any]) -> list[Target]:
    sc = results["scenarios"]
    out: list[Target] = []

    def share(name: str, label: str, goal: float) -> None:
        v = _get(sc, name, "ratios", "router_vs_nginx_rps")
        errs = (_get(sc, name, "router", "errors") or 0) + (_get(sc, name, "nginx", "errors") or 0)
        met = None if v is None else v >= goal and errs == 0
        margin = "" if v is None else f"{100 * (v - goal):+.1f} pts"
        if errs:
            margin += f" ({errs} errors)"
        out.append(
            Target(
                label,
                None if v is None else round(100 * v, 2),
                f">= {100 * goal:.0f}% of nginx req/s",
                met,
                margin,
            )
        )

    share("chat", "non-streaming chat: router req/s vs nginx", 0.15)
    share("stream", "streaming 64 chunks: router req/s vs nginx", 0.20)

    streams = _get(sc, "paced", "streams")
    added = _get(sc, "paced", "ratios", "router_added_itl_p99_ms")
    errs = (_get(sc, "paced", "router", "errors") or 0) + (
        _get(sc, "paced", "router", "short_streams") or 0
    )
    met = None if added is None else added < ADDED_ITL_LIMIT_MS and errs == 0
    margin = "" if added is None else f"{ADDED_ITL_LIMIT_MS - added:+.2f} ms headroom"
    if errs:
        margin += f" ({errs} failed streams)"
    out.append(
        Target(
            f"paced {streams or '?'} streams: added p99 inter-token latency",
            added,
            f"< {ADDED_ITL_LIMIT_MS:g} ms",
            met,
            margin,
        )
    )
    rss = _get(sc, "paced", "router", "max_rss_mb")
    out.append(
        Target(
            f"paced {streams or '?'} streams: router max RSS (MB)",
            rss,
            f"< {RSS_LIMIT_MB:g} MB",
            None if rss is None else rss < RSS_LIMIT_MB,
            "" if rss is None else f"{RSS_LIMIT_MB - rss:+.1f} MB headroom",
        )
    )

    v = _get(sc, "triton", "ratios", "router_vs_direct_tokens_per_s")
    errs = _get(sc, "triton", "router", "errors") or 0
    out.append(
        Target(
            "Triton gRPC stream: router tokens/s vs direct",
            None if v is None else round(100 * v, 2),
            ">= 90% of direct",
            None if v is None else v >= 0.9 and errs == 0,
            ""
            if v is None
            else f"{100 * (v - 0.9):+.1f} pts" + (f" ({errs} errors)" if errs else ""),
        )
    )
    return out


def _fmt(x: Any, spec: str = ",.0f") -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return format(x, spec)


def table(results: dict[str, Any], tgts: list[Target]) -> str:
    sc = results["scenarios"]
    lines: list[str] = []
    add = lines.append
    meta = results["meta"]
    add(
        f"airouter bench {meta['timestamp']}  ({'QUICK' if meta['quick'] else 'full'}; "
        f"router: 1 worker on core {meta['router_core']}; load, upstreams on core "
        f"{meta['load_core']}; {meta['cpu']})"
    )
    if meta.get("busy_before_pct", 0) > 15:
        add(
            f"WARNING: the machine was {meta['busy_before_pct']:.0f}% busy with other work at "
            "the start; these numbers are noisy"
        )
    wrk_labels = (("chat", "(1) chat, non-streaming"), ("stream", "(2) chat, stream 64 chunks"))
    for name, label in wrk_labels:
        s = sc.get(name)
        if not s:
            continue
        add("")
        add(f"{label}: wrk, {s['connections']} connections, {s['seconds']:g} s")
        add(
            f"  {'path':8}{'req/s':>10}{'p50 ms':>9}{'p90 ms':>9}{'p99 ms':>9}{'p99.9':>9}"
            f"{'errors':>8}{'CPU us/req':>12}{'vs nginx':>10}{'vs direct':>11}"
        )
        for who in ("direct", "nginx", "router"):
            r = s[who]
            add(
                f"  {who:8}{_fmt(r['rps']):>10}{r['p50_ms']:>9.2f}{r['p90_ms']:>9.2f}"
                f"{r['p99_ms']:>9.2f}{r['p999_ms']:>9.2f}{r['errors']:>8}"
                f"{_fmt(r.get('cpu_us_per_req'), ',.1f'):>12}"
                f"{_fmt(_ratio(r['rps'], s['nginx']['rps']), '.1%'):>10}"
                f"{_fmt(_ratio(r['rps'], s['direct']['rps']), '.1%'):>11}"
            )
        ra = s["ratios"]
        add(
            f"  router adds p50 {ra['router_added_p50_ms_vs_direct']:+.2f} ms / p99 "
            f"{ra['router_added_p99_ms_vs_direct']:+.2f} ms vs direct; router max RSS "
            f"{_fmt(s['router'].get('max_rss_mb'), '.1f')} MB; CPU per request: router needs "
            f"{_fmt(_ratio(1, ra['router_vs_nginx_cpu_efficiency']), '.1f')}x nginx's"
        )
        if s["nginx"]["rps"] >= 0.9 * s["direct"]["rps"]:
            add(
                "  note: nginx is within 10% of direct, so the load core (wrk + upstream) capped "
                "it: its req/s is a lower bound and router/nginx an upper bound"
            )
    s = sc.get("paced")
    if s:
        add("")
        add(
            f"(3) paced streams: {s['streams']} concurrent, {s['tokens_per_stream']} tokens at "
            f"{s['interval_ms']:g} ms, {s['seconds']:g} s measured"
        )
        add(
            f"  {'path':8}{'streams':>8}{'tok/s':>9}{'TTFT p50':>10}{'TTFT p99':>10}"
            f"{'ITL p50':>9}{'ITL p99':>9}{'p99.9':>8}{'max':>8}{'errors':>8}{'CPU s':>7}"
            f"{'us/tok':>8}{'maxRSS MB':>10}"
        )
        for who in ("direct", "nginx", "router"):
            r = s[who]
            add(
                f"  {who:8}{r['streams']:>8}{_fmt(r['tokens_per_s']):>9}{r['ttft_p50_ms']:>10.2f}"
                f"{r['ttft_p99_ms']:>10.2f}{r['itl_p50_ms']:>9.2f}{r['itl_p99_ms']:>9.2f}"
                f"{r['itl_p999_ms']:>8.1f}{r['itl_max_ms']:>8.1f}"
                f"{r['errors'] + r['short_streams']:>8}{_fmt(r.get('cpu_s'), '.1f'):>7}"
                f"{_fmt(r.get('cpu_us_per_token'), '.1f'):>8}"
                f"{_fmt(r.get('max_rss_mb'), '.1f'):>10}"
            )
        ra = s["ratios"]
        add(
            f"  router adds TTFT p50 {ra['router_added_ttft_p50_ms']:+.2f} ms, p99 "
            f"{ra['router_added_ttft_p99_ms']:+.2f} ms; ITL p99 "
            f"{ra['router_added_itl_p99_ms']:+.2f} ms "
            f"(nginx: {ra['nginx_added_itl_p99_ms']:+.2f} ms)"
        )
    s = sc.get("triton")
    if s:
        add("")
        add(
            f"(4) Triton gRPC streaming ({s['model']}, 13 pieces/request): {s['concurrency']} "
            f"concurrent, {s['seconds']:g} s"
        )
        add(
            f"  {'path':15}{'tokens/s':>10}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}"
            f"{'CPU us/tok':>12}{'vs direct':>11}"
        )
        for who, label in (
            ("direct", "direct"),
            ("direct_core0", "direct core 0"),
            ("router", "router"),
        ):
            if who not in s:
                continue
            r = s[who]
            add(
                f"  {label:15}{_fmt(r['tokens_per_s']):>10}{_fmt(r['rps']):>9}"
                f"{r['p50_ms']:>9.2f}{r['p99_ms']:>9.2f}{r['errors']:>8}"
                f"{_fmt(r.get('cpu_us_per_token'), ',.1f'):>12}"
                f"{_fmt(_ratio(r['tokens_per_s'], s['direct']['tokens_per_s']), '.1%'):>11}"
            )
        add(
            "  direct: gRPC client on the load core beside Triton, as the router path's HTTP "
            "client is (the target compares these)"
        )
        add(
            "  direct core 0: the same client on the idle router core, Triton alone on its core "
            f"(the ceiling): router = "
            f"{_fmt(s['ratios']['router_vs_direct_core0_tokens_per_s'], '.1%')} of it"
        )
    add("")
    add("Targets:")
    for t in tgts:
        mark = "n/a   " if t.met is None else "MET   " if t.met else "MISSED"
        value = _fmt(t.value, ".2f") if t.value is not None else "-"
        add(f"  [{mark}] {t.name}: {value} (goal {t.goal}) {t.margin}")
    profiles = [
        (n, w, _get(s, w, "profile"))
        for n, s in sc.items()
        if isinstance(s, dict)
        for w in ("router",)
        if _get(s, w, "profile")
    ]
    for name, _, p in profiles:
        add("")
        add(
            f"Profile of the router worker during {name} ({p['samples']} samples, "
            f"{p['file']}): top self time"
        )
        for frame, pct in p["self_top"][:12]:
            add(f"  {pct:5.1f}%  {frame}")
        add(
            "  self time by package: "
            + ", ".join(f"{k} {v:.0f}%" for k, v in p["self_by_package"][:8])
        )
        add(
            "  inclusive, airouter: "
            + ", ".join(f"{k.split(' (')[0]} {v:.0f}%" for k, v in p["inclusive_top"][:8])
        )
    return "\n".join(lines)


def write_json(results: dict[str, Any], tgts: list[Target], path: Path) -> None:
    results["targets"] = [asdict(t) for t in tgts]
    path.write_text(json.dumps(results, indent=2, default=str) + "\n")


def chart(results: dict[str, Any], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    sc = results["scenarios"]
    colors = {"direct": "#7f7f7f", "nginx": "#2ca02c", "router": "#1f77b4"}
    fig, axes = plt.subplots(2, 2, figsize=(13, 9))
    fig.suptitle(
        f"airouter bench {results['meta']['timestamp']}"
        f"{' (quick)' if results['meta']['quick'] else ''}: router on 1 core"
    )

    wrk_names = [n for n in ("chat", "stream") if n in sc]
    labels = {"chat": "non-stream", "stream": "stream 64 chunks"}
    ax = axes[0][0]
    width = 0.27
    for i, who in enumerate(("direct", "nginx", "router")):
        xs = [j + (i - 1) * width for j in range(len(wrk_names))]
        ys = [sc[n][who]["rps"] for n in wrk_names]
        bars = ax.bar(xs, ys, width, label=who, color=colors[who])
        for b, n in zip(bars, wrk_names, strict=True):
            ratio = _ratio(sc[n][who]["rps"], sc[n]["nginx"]["rps"])
            ax.annotate(
                f"{sc[n][who]['rps']:,.0f}\n{_fmt(ratio, '.0%')} of nginx",
                (b.get_x() + b.get_width() / 2, b.get_height()),
                ha="center",
                va="bottom",
                fontsize=7,
            )
    ax.set_xticks(range(len(wrk_names)), [labels[n] for n in wrk_names])
    ax.set_ylim(0, ax.get_ylim()[1] * 1.15)
    ax.set_ylabel("requests/s (64 connections)")
    ax.set_title("Throughput: direct vs nginx proxy vs router")
    ax.legend()

    ax = axes[0][1]
    groups = [(n, who) for n in wrk_names for who in ("direct", "nginx", "router")]
    xs = list(range(len(groups)))
    for k, (q, hatch) in enumerate((("p50_ms", ""), ("p99_ms", "//"))):
        ax.bar(
            [x + (k - 0.5) * 0.4 for x in xs],
            [sc[n][w][q] for n, w in groups],
            0.4,
            color=[colors[w] for _, w in groups],
            hatch=hatch,
            edgecolor="black",
            linewidth=0.3,
            label=q.replace("_ms", ""),
        )
    short = {"chat": "non-stream", "stream": "stream"}
    ax.set_xticks(xs, [f"{short[n]}\n{w}" for n, w in groups], fontsize=8)
    ax.set_yscale("log")
    ax.set_ylabel("latency ms (log)")
    ax.set_title("wrk latency percentiles (plain p50, hatched p99)")
    ax.legend()

    ax = axes[1][0]
    if "paced" in sc:
        p = sc["paced"]
        whos = ("direct", "nginx", "router")
        qs = (
            ("ttft_p50_ms", "TTFT p50"),
            ("ttft_p99_ms", "TTFT p99"),
            ("itl_p99_ms", "ITL p99 - 50"),
            ("itl_p999_ms", "ITL p99.9 - 50"),
        )
        for i, who in enumerate(whos):
            vals = []
            for key, _ in qs:
                v = p[who][key]
                vals.append(max(v - p["interval_ms"], 0.01) if key.startswith("itl") else v)
            ax.bar(
                [j + (i - 1) * width for j in range(len(qs))],
                vals,
                width,
                label=who,
                color=colors[who],
            )
        ax.set_xticks(range(len(qs)), [label for _, label in qs])
        ax.set_yscale("log")
        ax.set_ylabel("ms (log); ITL shown as excess over the 50 ms pace")
        ax.set_title(
            f"Paced: {p['streams']} concurrent streams at {1000 / p['interval_ms']:g} tokens/s"
        )
        ax.legend()
    else:
        ax.axis("off")

    ax = axes[1][1]
    if "triton" in sc:
        t = sc["triton"]
        paths = [w for w in ("direct", "direct_core0", "router") if w in t]
        bars = ax.bar(
            paths,
            [t[w]["tokens_per_s"] for w in paths],
            color=[colors["router"] if w == "router" else colors["direct"] for w in paths],
        )
        for b, w in zip(bars, paths, strict=True):
            ax.annotate(
                f"{t[w]['tokens_per_s']:,.0f}",
                (b.get_x() + b.get_width() / 2, b.get_height()),
                ha="center",
                va="bottom",
                fontsize=8,
            )
        ax.set_ylabel("tokens/s")
        ax.set_title(f"Triton gRPC stream ({t['model']}), {t['concurrency']} concurrent")
    else:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True

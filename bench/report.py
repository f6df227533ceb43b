"""Ratios, targets, the printed table, the JSON file and the PNG chart."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench import limits, triton_cost

RSS_LIMIT_MB = 200.0
ADDED_ITL_LIMIT_MS = 5.0
ADDED_P99_LIMIT_MS = 0.3  # non-streaming, concurrency 1
ADDED_TTFC_P99_LIMIT_MS = 0.5  # streaming, concurrency 1
FLOOR_GOAL = 1.2  # router req/s over the same-stack pass-through's
NGINX_GOAL = {"chat": 0.20, "stream": 0.25}
TRITON_GOAL = 1.0
# Row order in tables and charts: references first, the router last.
PATHS = ("direct", "nginx", "floor", "floor_rsgi_aiohttp", "floor_rsgi", "baseline",
         "router_asgi", "router")
# The pass-throughs the paced scenario runs when they are up.
PACED_FLOORS = ("floor", "floor_rsgi_aiohttp", "floor_rsgi")
LABEL = {
    "direct": "direct",
    "nginx": "nginx",
    "floor": "floor ASGI",
    "floor_rsgi_aiohttp": "RSGI+aiohttp",
    "floor_rsgi": "floor RSGI",
    "baseline": "baseline",
    "router_asgi": "router ASGI",
    "router": "router RSGI",
}


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


def paths(sc: dict[str, Any]) -> list[str]:
    return [p for p in PATHS if p in sc]


def add_ratios(results: dict[str, Any]) -> None:
    for name in ("chat", "stream"):
        sc = results["scenarios"].get(name)
        if not sc:
            continue
        r, n, d = sc["router"], sc["nginx"], sc["direct"]
        sc["ratios"] = {
            **{
                f"{who}_vs_floor_rps": _round(_ratio(sc[who]["rps"], sc["floor"]["rps"]), 4)
                for who in ("router", "router_asgi", "baseline", "floor_rsgi")
                if who in sc and "floor" in sc
            },
            **{
                f"router_vs_{ref}_rps": _round(_ratio(r["rps"], sc[ref]["rps"]), 4)
                for ref in ("floor_rsgi", "baseline")
                if ref in sc
            },
            # CPU per request, reference over router: > 1 when the router is cheaper. Less
            # sensitive than req/s to other work stealing the router's core.
            **{
                f"router_vs_{ref}_cpu_efficiency": _round(
                    _ratio(sc[ref].get("cpu_us_per_req"), r.get("cpu_us_per_req")), 4
                )
                for ref in ("floor", "floor_rsgi", "floor_rsgi_aiohttp", "baseline")
                if ref in sc
            },
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
    sc = results["scenarios"].get("overhead")
    if sc:
        for kind in ("chat", "stream"):
            o = sc.get(kind)
            if not o:
                continue
            d = o["direct"]
            sc.setdefault("ratios", {})[kind] = {
                who: {
                    "added_p50_ms": round(o[who]["p50_ms"] - d["p50_ms"], 4),
                    "added_p99_ms": round(o[who]["p99_ms"] - d["p99_ms"], 4),
                    "added_ttfc_p50_ms": round(o[who]["ttfc_p50_ms"] - d["ttfc_p50_ms"], 4),
                    "added_ttfc_p99_ms": round(o[who]["ttfc_p99_ms"] - d["ttfc_p99_ms"], 4),
                }
                for who in paths(o)
                if who != "direct"
            }
    sc = results["scenarios"].get("scale")
    if sc:
        sc["ratios"] = {
            f"{kind}_x2_vs_x1_rps": _round(
                _ratio(sc[kind]["rps"], _get(results["scenarios"], kind, "router", "rps")), 4
            )
            for kind in ("chat", "stream")
            if kind in sc
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
            **{f"{who}_added_itl_p99_ms": round(sc[who]["itl_p99_ms"] - d["itl_p99_ms"], 3)
               for who in PACED_FLOORS if who in sc},
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


    sc = results["scenarios"].get("triton_cost")
    if sc:
        triton_cost.add_ratios(sc)


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

    def floor(name: str, label: str) -> None:
        v = _get(sc, name, "ratios", "router_vs_floor_rps")
        errs = _get(sc, name, "router", "errors") or 0
        out.append(
            Target(
                label,
                None if v is None else round(v, 3),
                f">= {FLOOR_GOAL:g}x the ASGI floor's req/s",
                None if v is None else v >= FLOOR_GOAL and errs == 0,
                ""
                if v is None
                else f"{v - FLOOR_GOAL:+.2f}x" + (f" ({errs} errors)" if errs else ""),
            )
        )

    floor("chat", "non-streaming chat: router req/s vs floor")
    share("chat", "non-streaming chat: router req/s vs nginx", NGINX_GOAL["chat"])
    floor("stream", "streaming 64 chunks: router req/s vs floor")
    share("stream", "streaming 64 chunks: router req/s vs nginx", NGINX_GOAL["stream"])

    for kind, key, limit, label in (
        ("chat", "added_p99_ms", ADDED_P99_LIMIT_MS, "c=1 non-streaming: router added p99"),
        (
            "stream",
            "added_ttfc_p99_ms",
            ADDED_TTFC_P99_LIMIT_MS,
            "c=1 stream: router added TTFC p99",
        ),
    ):
        v = _get(sc, "overhead", "ratios", kind, "router", key)
        errs = _get(sc, "overhead", kind, "router", "errors") or 0
        out.append(
            Target(
                f"{label} (ms)",
                v,
                f"<= {limit:g} ms",
                None if v is None else v <= limit and errs == 0,
                ""
                if v is None
                else f"{limit - v:+.3f} ms headroom" + (f" ({errs} errors)" if errs else ""),
            )
        )

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
            f">= {100 * TRITON_GOAL:.0f}% of direct",
            None if v is None else v >= TRITON_GOAL and errs == 0,
            ""
            if v is None
            else f"{100 * (v - TRITON_GOAL):+.1f} pts" + (f" ({errs} errors)" if errs else ""),
        )
    )
    goal = triton_cost.GOAL
    for pacing in triton_cost.PACING:
        v, errs = triton_cost.target(sc.get("triton_cost"), pacing)
        out.append(
            Target(
                f"Triton cost ({pacing}): router CPU per streamed token vs bare "
                "tritonclient.grpc.aio",
                None if v is None else round(v, 3),
                f"<= {goal:g}x",
                None if v is None else v <= goal and errs == 0,
                "" if v is None else f"{goal - v:+.2f}x" + (f" ({errs} errors)" if errs else ""),
            )
        )
    v, errs = limits.target(sc)
    out.append(
        Target(
            "limits through Redis: non-streaming req/s vs limits off",
            None if v is None else round(100 * v, 2),
            f">= {100 * limits.GOAL:.0f}% of limits off",
            None if v is None else v >= limits.GOAL and errs == 0,
            ""
            if v is None
            else f"{100 * (v - limits.GOAL):+.1f} pts" + (f" ({errs} errors)" if errs else ""),
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
            f"  {'path':13}{'req/s':>10}{'p50 ms':>9}{'p90 ms':>9}{'p99 ms':>9}{'p99.9':>9}"
            f"{'errors':>8}{'CPU us/req':>12}{'vs nginx':>10}{'vs direct':>11}{'vs floor':>10}"
        )
        fl = _get(s, "floor", "rps")
        for who in paths(s):
            r = s[who]
            add(
                f"  {LABEL[who]:13}{_fmt(r['rps']):>10}{r['p50_ms']:>9.2f}{r['p90_ms']:>9.2f}"
                f"{r['p99_ms']:>9.2f}{r['p999_ms']:>9.2f}{r['errors']:>8}"
                f"{_fmt(r.get('cpu_us_per_req'), ',.1f'):>12}"
                f"{_fmt(_ratio(r['rps'], s['nginx']['rps']), '.1%'):>10}"
                f"{_fmt(_ratio(r['rps'], s['direct']['rps']), '.1%'):>11}"
                f"{_fmt(_ratio(r['rps'], fl), '.2f'):>9}x"
            )
        ra = s["ratios"]
        add(
            f"  router / floor ASGI = {_fmt(ra.get('router_vs_floor_rps'), '.2f')}x, "
            f"router / floor RSGI = {_fmt(ra.get('router_vs_floor_rsgi_rps'), '.2f')}x, "
            f"router / nginx = {_fmt(ra.get('router_vs_nginx_rps'), '.1%')}, "
            f"router ASGI / floor ASGI = {_fmt(ra.get('router_asgi_vs_floor_rps'), '.2f')}x"
            + (
                f", router / baseline = {_fmt(ra.get('router_vs_baseline_rps'), '.3f')}x "
                f"(CPU per request: baseline's / router's = "
                f"{_fmt(ra.get('router_vs_baseline_cpu_efficiency'), '.3f')}x)"
                if "baseline" in s
                else ""
            )
        )
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
    s = sc.get("overhead")
    if s:
        add("")
        add(
            f"(5) overhead at concurrency 1: one keep-alive connection, {s['seconds']:g} s per "
            "path; added = path - direct"
        )
        add(
            f"  {'':7}{'path':13}{'req':>7}{'p50 ms':>9}{'p99 ms':>9}{'+p50':>8}{'+p99':>8}"
            f"{'TTFC p50':>10}{'TTFC p99':>10}{'+TTFC p99':>10}{'errors':>8}"
        )
        for kind in ("chat", "stream"):
            o = s.get(kind)
            if not o:
                continue
            ra = s["ratios"][kind]
            for who in paths(o):
                r = o[who]
                a = ra.get(who, {})
                add(
                    f"  {kind:7}{LABEL[who]:13}{r['requests']:>7}{r['p50_ms']:>9.3f}"
                    f"{r['p99_ms']:>9.3f}{_fmt(a.get('added_p50_ms'), '+.3f'):>8}"
                    f"{_fmt(a.get('added_p99_ms'), '+.3f'):>8}{r['ttfc_p50_ms']:>10.3f}"
                    f"{r['ttfc_p99_ms']:>10.3f}{_fmt(a.get('added_ttfc_p99_ms'), '+.3f'):>10}"
                    f"{r['errors']:>8}"
                )
    s = sc.get("scale")
    if s:
        add("")
        for kind in ("chat", "stream"):
            r = s.get(kind)
            if not r:
                continue
            x1 = _get(sc, kind, "router", "rps")
            add(
                f"(6) scaling, {kind}: router --workers 2 on cores {s['cores']}, wrk on the same "
                f"cores: {_fmt(r['rps'])} req/s, p99 {r['p99_ms']:.2f} ms, errors {r['errors']}; "
                + (
                    f"{_fmt(s['ratios'].get(f'{kind}_x2_vs_x1_rps'), '.2f')}x the 1-worker run"
                    if x1
                    else "(no 1-worker run to compare)"
                )
            )
    s = sc.get("paced")
    if s:
        add("")
        add(
            f"(3) paced streams: {s['streams']} concurrent, {s['tokens_per_stream']} tokens at "
            f"{s['interval_ms']:g} ms, {s['seconds']:g} s measured"
        )
        add(
            f"  {'path':13}{'streams':>8}{'tok/s':>9}{'TTFT p50':>10}{'TTFT p99':>10}"
            f"{'ITL p50':>9}{'ITL p99':>9}{'p99.9':>8}{'max':>8}{'errors':>8}{'CPU s':>7}"
            f"{'us/tok':>8}{'maxRSS MB':>10}"
        )
        for who in ("direct", "nginx", *PACED_FLOORS, "router"):
            if who not in s:
                continue
            r = s[who]
            add(
                f"  {LABEL.get(who, who):13}{r['streams']:>8}{_fmt(r['tokens_per_s']):>9}"
                f"{r['ttft_p50_ms']:>10.2f}"
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
            f"(nginx: {ra['nginx_added_itl_p99_ms']:+.2f} ms"
            + "".join(f", {LABEL[who]}: {ra[f'{who}_added_itl_p99_ms']:+.2f} ms"
                      for who in PACED_FLOORS if f"{who}_added_itl_p99_ms" in ra)
            + ")"
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
    s = sc.get("triton_cost")
    if s:
        add("")
        lines.extend(triton_cost.table(s))
    s = sc.get("limits")
    if s:
        add("")
        lines.extend(limits.table(s))
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
    ] + [(n, "router", s["profile"]) for n, s in sc.items()
         if isinstance(s, dict) and s.get("profile")]
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

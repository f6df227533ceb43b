"""The PNG: one panel per scenario that ran, nothing for those that did not."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import limits
from bench.report import LABEL, _fmt, _ratio, paths

COLORS = {
    "direct": "#7f7f7f",
    "nginx": "#2ca02c",
    "floor": "#ff7f0e",
    "floor_rsgi": "#bcbd22",
    "floor_rsgi_aiohttp": "#e377c2",
    "baseline": "#9467bd",
    "router_asgi": "#17becf",
    "router": "#1f77b4",
}
WRK = {"chat": "non-stream", "stream": "stream 64 chunks"}


def _bars(ax: Any, groups: list[str], rows: list[str], value: Callable[[str, str], float]) -> Any:
    """Grouped bars: one group per x label, one bar per row (path) present in it."""
    width = 0.8 / max(len(rows), 1)
    for i, who in enumerate(rows):
        xs = [j + (i - (len(rows) - 1) / 2) * width for j in range(len(groups))]
        ax.bar(
            xs,
            [value(g, who) for g in groups],
            width,
            label=LABEL.get(who, who),
            color=COLORS.get(who, "#333333"),
        )
    ax.set_xticks(range(len(groups)), groups)
    return width


def _throughput(ax: Any, sc: dict[str, Any]) -> None:
    names = [n for n in WRK if n in sc]
    rows = [w for w in paths(sc[names[0]])]
    width = 0.8 / len(rows)
    for i, who in enumerate(rows):
        for j, n in enumerate(names):
            if who not in sc[n]:
                continue
            x = j + (i - (len(rows) - 1) / 2) * width
            rps = sc[n][who]["rps"]
            ax.bar(x, rps, width, color=COLORS[who], label=LABEL[who] if j == 0 else None)
            fl = _ratio(rps, sc[n].get("floor", {}).get("rps"))
            ax.annotate(
                f"{rps:,.0f}\n{_fmt(_ratio(rps, sc[n]['nginx']['rps']), '.0%')} ngx"
                + (f"\n{fl:.2f}x floor" if fl is not None else ""),
                (x, rps),
                ha="center",
                va="bottom",
                fontsize=6,
            )
    ax.set_xticks(range(len(names)), [WRK[n] for n in names])
    ax.set_ylim(0, ax.get_ylim()[1] * 1.2)
    ax.set_ylabel("requests/s (64 connections)")
    ax.set_title("Throughput, router on 1 core")
    ax.legend(fontsize=7)


def _latency(ax: Any, sc: dict[str, Any]) -> None:
    names = [n for n in WRK if n in sc]
    groups = [(n, w) for n in names for w in paths(sc[n])]
    xs = list(range(len(groups)))
    for k, (q, hatch) in enumerate((("p50_ms", ""), ("p99_ms", "//"))):
        ax.bar(
            [x + (k - 0.5) * 0.4 for x in xs],
            [sc[n][w][q] for n, w in groups],
            0.4,
            color=[COLORS[w] for _, w in groups],
            hatch=hatch,
            edgecolor="black",
            linewidth=0.3,
            label=q.replace("_ms", ""),
        )
    ax.set_xticks(xs, [f"{n}\n{LABEL[w]}" for n, w in groups], fontsize=6)
    ax.set_yscale("log")
    ax.set_ylabel("latency ms (log)")
    ax.set_title("wrk latency at 64 connections (plain p50, hatched p99)")
    ax.legend(fontsize=7)


def _overhead(ax: Any, sc: dict[str, Any]) -> None:
    o = sc["overhead"]
    kinds = [k for k in ("chat", "stream") if k in o]
    rows = [w for w in paths(o[kinds[0]]) if w != "direct"]
    groups = [
        ("chat", "added_p50_ms", "non-stream +p50"),
        ("chat", "added_p99_ms", "non-stream +p99"),
        ("stream", "added_ttfc_p50_ms", "stream +TTFC p50"),
        ("stream", "added_ttfc_p99_ms", "stream +TTFC p99"),
    ]
    groups = [g for g in groups if g[0] in kinds]
    _bars(
        ax,
        [g[2] for g in groups],
        rows,
        lambda label, who: next(o["ratios"][k][who][key] for k, key, lbl in groups if lbl == label),
    )
    ax.axhline(0, color="black", linewidth=0.5)
    ax.set_ylabel("ms added over direct")
    ax.set_title("Overhead at concurrency 1")
    ax.tick_params(axis="x", labelsize=7)
    ax.legend(fontsize=7)


def _scale(ax: Any, sc: dict[str, Any]) -> None:
    s = sc["scale"]
    kinds = [k for k in WRK if k in s]
    x1 = [_get_rps(sc, k) for k in kinds]
    x2 = [s[k]["rps"] for k in kinds]
    xs = range(len(kinds))
    ax.bar([x - 0.2 for x in xs], x1, 0.4, label="1 worker, 1 core", color=COLORS["router"])
    ax.bar([x + 0.2 for x in xs], x2, 0.4, label="2 workers, 2 cores", color="#17becf")
    for x, a, b in zip(xs, x1, x2, strict=True):
        ax.annotate(f"{_fmt(_ratio(b, a), '.2f')}x", (x + 0.2, b), ha="center", va="bottom")
    ax.set_xticks(list(xs), [WRK[k] for k in kinds])
    ax.set_ylabel("router requests/s")
    ax.set_title("Scaling: --workers 2 (wrk on the same cores)")
    ax.legend(fontsize=7)


def _get_rps(sc: dict[str, Any], kind: str) -> float:
    return float(sc.get(kind, {}).get("router", {}).get("rps", 0.0))


def _paced(ax: Any, sc: dict[str, Any]) -> None:
    p = sc["paced"]
    qs = (
        ("ttft_p50_ms", "TTFT p50"),
        ("ttft_p99_ms", "TTFT p99"),
        ("itl_p99_ms", "ITL p99 - pace"),
        ("itl_p999_ms", "ITL p99.9 - pace"),
    )
    keys = {label: key for key, label in qs}

    def value(label: str, who: str) -> float:
        v = float(p[who][keys[label]])
        return max(v - p["interval_ms"], 0.01) if label.startswith("ITL") else v

    _bars(ax, [label for _, label in qs], [w for w in paths(p)], value)
    ax.set_yscale("log")
    ax.set_ylabel("ms (log); ITL shown as excess over the pace")
    ax.set_title(f"Paced: {p['streams']} streams at {1000 / p['interval_ms']:g} tokens/s")
    ax.legend(fontsize=7)


def _triton(ax: Any, sc: dict[str, Any]) -> None:
    t = sc["triton"]
    who = [w for w in ("direct", "direct_core0", "router") if w in t]
    bars = ax.bar(
        who,
        [t[w]["tokens_per_s"] for w in who],
        color=[COLORS["router"] if w == "router" else COLORS["direct"] for w in who],
    )
    for b, w in zip(bars, who, strict=True):
        ax.annotate(
            f"{t[w]['tokens_per_s']:,.0f}",
            (b.get_x() + b.get_width() / 2, b.get_height()),
            ha="center",
            va="bottom",
            fontsize=8,
        )
    ax.set_ylabel("tokens/s")
    ax.set_title(f"Triton gRPC stream ({t['model']}), {t['concurrency']} concurrent")


def _limits(ax: Any, sc: dict[str, Any]) -> None:
    s = sc["limits"]
    kinds = [k for k in WRK if k in s]
    colors = {"off": COLORS["router"], "local": "#17becf", "redis": "#d62728", "unix": "#ff9896"}
    width = 0.8 / len(limits.MODES)
    for i, m in enumerate(limits.MODES):
        for j, k in enumerate(kinds):
            e = s[k][m]
            x = j + (i - (len(limits.MODES) - 1) / 2) * width
            ax.bar(x, e["rps"], width, color=colors[m], label=limits.LABEL[m] if j == 0 else None)
            ax.annotate(
                f"{e['rps']:,.0f}\n{_fmt(e['vs_off_rps'], '.0%')}\n{e['cpu_us_per_req']:.0f} us",
                (x, e["rps"]),
                ha="center",
                va="bottom",
                fontsize=6,
            )
    if "chat" in kinds:
        goal = limits.GOAL * s["chat"]["off"]["rps"]
        j = kinds.index("chat")
        ax.hlines(goal, j - 0.45, j + 0.45, colors="black", linestyles="dashed", linewidth=0.8)
    ax.set_xticks(range(len(kinds)), [WRK[k] for k in kinds])
    ax.set_ylim(0, ax.get_ylim()[1] * 1.25)
    ax.set_ylabel("router requests/s (64 connections)")
    ax.set_title(
        f"Limits: off, in process, Redis over TCP and its socket (dashed: {limits.GOAL:.0%} of "
        "off, the goal)"
    )
    ax.legend(fontsize=7)


def chart(results: dict[str, Any], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    sc = results["scenarios"]
    has_wrk = any(n in sc for n in WRK)
    panels = [
        fn
        for fn, ran in (
            (_throughput, has_wrk),
            (_latency, has_wrk),
            (_overhead, "overhead" in sc),
            (_scale, "scale" in sc),
            (_paced, "paced" in sc),
            (_triton, "triton" in sc),
            (_limits, "limits" in sc),
        )
        if ran
    ]
    if not panels:
        return False
    cols = 1 if len(panels) == 1 else 2
    rows = (len(panels) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(6.5 * cols, 4.5 * rows), squeeze=False)
    fig.suptitle(
        f"airouter bench {results['meta']['timestamp']}"
        f"{' (quick)' if results['meta']['quick'] else ''}"
    )
    flat = [ax for row in axes for ax in row]
    for fn, ax in zip(panels, flat, strict=False):
        fn(ax, sc)
    for ax in flat[len(panels) :]:
        ax.remove()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True

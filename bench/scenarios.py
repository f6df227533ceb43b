"""The four scenarios; each compares direct, nginx (where it applies) and the router."""

from __future__ import annotations

import contextlib
import json
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import bodies, nginx, overhead, paced, profile, router, triton, triton_cost, wrk
from bench.procs import HOST, LOAD_CORE, ROUTER_CORE, ProcStats, core_busy_s, group_stats


@dataclass(frozen=True)
class Settings:
    quick: bool
    wrk_seconds: float
    wrk_warmup: float
    connections: int
    paced_streams: int
    paced_tokens: int
    paced_interval: float
    paced_ramp: float
    paced_seconds: float
    triton_concurrency: int
    triton_seconds: float
    triton_warmup: float
    profile: bool
    prelude: str = ""
    triton_rounds: int = 3
    # triton_cost: rounds, and long generations a consumer completes in each (5x as many short)
    cost_rounds: int = 4
    cost_requests: int = 96
    overhead_seconds: float = 10
    rounds: int = 3  # chat, stream, limits: paths take turns in this many slices of wrk_seconds
    baseline: str = ""  # another checkout whose router runs beside this one (A/B)

    @classmethod
    def make(
        cls,
        quick: bool,
        prof: bool,
        streams: int | None = None,
        prelude: str = "",
        baseline: str = "",
        rounds: int = 3,
    ) -> Settings:
        if quick:
            return cls(
                True,
                4,
                1,
                64,
                streams or 500,
                40,
                0.05,
                1.0,
                4,
                32,
                6,
                1,
                prof,
                prelude,
                triton_rounds=3,
                cost_rounds=2,
                cost_requests=48,
                overhead_seconds=3,
                baseline=baseline,
                rounds=rounds,
            )
        return cls(
            False,
            15,
            3,
            64,
            streams or 1000,
            40,
            0.05,
            3.0,
            15,
            32,
            15,
            2,
            prof,
            prelude,
            triton_rounds=5,
            overhead_seconds=10,
            baseline=baseline,
            rounds=rounds,
        )


@dataclass
class Env:
    """The long-lived pieces every scenario shares."""

    tmp: Path
    results: Path  # where profiles go
    stamp: str
    upstream: nginx.Nginx  # static JSON/SSE upstream
    proxy: nginx.Nginx  # reverse proxy: /up/ -> upstream, /paced/ -> paced upstream
    paced_port: int
    # Same-stack pass-throughs on the router's core: "floor" (ASGI + aiohttp), "floor_rsgi"
    floors: dict[str, router.Router]


def floor_routes(upstream_url: str, paced_port: int) -> dict[str, str]:
    return {
        bodies.ALIAS_JSON: upstream_url + nginx.JSON_PATH,
        bodies.ALIAS_SSE: upstream_url + nginx.SSE_PATH,
        bodies.ALIAS_PACED: f"http://{HOST}:{paced_port}/v1/chat/completions",
    }


def _say(msg: str) -> None:
    print(f">> {msg}", flush=True)


def _post(url: str, body: bytes, key: str | None = None) -> tuple[int, bytes]:
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    req = urllib.request.Request(url, data=body, headers=headers, method="POST")
    with urllib.request.urlopen(req, timeout=30) as r:
        return r.status, r.read()


def check(url: str, body: bytes, key: str | None, *, stream: bool, model: str) -> None:
    """One request before the load: the path must answer what a client expects, or the
    numbers would measure error pages."""
    status, data = _post(url, body, key)
    if stream:
        events = data.count(b"data: ")
        ok = (
            status == 200
            and events == bodies.SSE_CHUNKS + 1
            and data.endswith(b"data: [DONE]\n\n")
            and f'"model":"{model}"'.encode() in data
        )
    else:
        ok = status == 200 and json.loads(data).get("model") == model
    if not ok:
        raise RuntimeError(f"{url} answered {status} with an unexpected body: {data[:300]!r}")


def _delta(before: ProcStats, after: ProcStats) -> dict[str, Any]:
    return {
        "cpu_s": round(after.cpu_s - before.cpu_s, 3),
        "rss_mb": round(after.rss_kb / 1024, 1),
        "max_rss_mb": round(after.hwm_kb / 1024, 1),
    }


def profiled(env: Env, s: Settings, rt: router.Router, name: str, seconds: float) -> Any:
    pid = (rt.workers() or [rt.pid])[0]
    return profile.record(pid, env.results / f"{env.stamp}-profile-{name}.txt", seconds, s.profile)


def wrk_scenario(env: Env, s: Settings, name: str, *, stream: bool) -> dict[str, Any]:
    """Scenarios 1 and 2: wrk at 64 connections, the same body to each path."""
    alias = bodies.ALIAS_SSE if stream else bodies.ALIAS_JSON
    path = nginx.SSE_PATH if stream else nginx.JSON_PATH
    up = env.upstream.url
    cfg = router.openai_config(up + "/json/v1", up + "/sse/v1", None)
    out: dict[str, Any] = {"connections": s.connections, "seconds": s.wrk_seconds}
    with contextlib.ExitStack() as stack:
        rt = stack.enter_context(router.run(env.tmp, name, cfg, ROUTER_CORE, s.prelude))
        # The same router on its ASGI interface (Starlette), on the same core, in turn.
        rt_asgi = stack.enter_context(router.run(env.tmp, f"{name}-asgi", cfg, ROUTER_CORE,
                                                 s.prelude, interface="asgi"))
        base = _baseline(stack, env, s, name, cfg)
        paths = {
            "direct": (
                up + path,
                bodies.chat_request(bodies.UPSTREAM_MODEL, stream=stream),
                None,
                bodies.UPSTREAM_MODEL,
            ),
            "nginx": (
                env.proxy.url + "/up" + path,
                bodies.chat_request(bodies.UPSTREAM_MODEL, stream=stream),
                None,
                bodies.UPSTREAM_MODEL,
            ),
            **{
                who: (
                    f.url + "/v1/chat/completions",
                    bodies.chat_request(alias, stream=stream),
                    None,
                    bodies.UPSTREAM_MODEL,
                )
                for who, f in env.floors.items()
            },
            "router": (
                rt.url + "/v1/chat/completions",
                bodies.chat_request(alias, stream=stream),
                bodies.CLIENT_KEY,
                alias,
            ),
        }
        paths["router_asgi"] = (paths["router"][0].replace(rt.url, rt_asgi.url),
                                *paths["router"][1:])
        if base is not None:
            paths["baseline"] = (paths["router"][0].replace(rt.url, base.url), *paths["router"][1:])
        pids = {
            "nginx": env.proxy.pid,
            "router": rt.pid,
            "router_asgi": rt_asgi.pid,
            **{w: f.pid for w, f in env.floors.items()},
        }
        if base is not None:
            pids["baseline"] = base.pid
        scripts = {}
        for who, (url, body, key, model) in paths.items():
            check(url, body, key, stream=stream, model=model)
            scripts[who] = wrk.lua_script(env.tmp / f"{name}-{who}.lua", body, key)
            if s.wrk_warmup:
                wrk.run(url, scripts[who], seconds=s.wrk_warmup, connections=s.connections)
        watch = {who: [pid] for who, pid in pids.items()}
        with profiled(env, s, rt, name, s.wrk_seconds * len(paths)) as prof:
            runs, cpus, _ = take_turns({w: p[0] for w, p in paths.items()}, scripts, watch, s)
        cpu = {who: sum(c) for who, c in cpus.items()}
        for who in paths:
            res = wrk.merge(runs[who])
            entry = res.as_dict()
            watched = pids.get(who)
            if watched:
                st = group_stats(watched)
                entry.update(
                    cpu_s=round(cpu[who], 3),
                    rss_mb=round(st.rss_kb / 1024, 1),
                    max_rss_mb=round(st.hwm_kb / 1024, 1),
                    cpu_us_per_req=round(cpu[who] / max(res.requests, 1) * 1e6, 1),
                )
            if prof and who == "router":
                entry["profile"] = profile_dict(prof[0])
            out[who] = entry
            _say(
                f"{name:7} {who:10} {res.rps:>10,.0f} req/s  p50 {res.p50_ms:7.2f} ms  "
                f"p99 {res.p99_ms:7.2f} ms  errors {res.errors}"
                + (f"  CPU {entry['cpu_us_per_req']:.0f} us/req" if watched else "")
            )
    return out


def take_turns(
    urls: dict[str, str], scripts: dict[str, Path], watch: dict[str, list[int]], s: Settings
) -> tuple[dict[str, list[wrk.WrkResult]], dict[str, list[float]], dict[str, float]]:
    """wrk against each path in `rounds` slices of wrk_seconds, taking turns: drift in what
    else runs on the machine then hits every path alike, and the ratios within the run hold.
    Returns each path's slices, the CPU seconds each of its `watch` pids used in them, and
    the seconds the load core was busy during them."""
    runs: dict[str, list[wrk.WrkResult]] = {who: [] for who in urls}
    cpu = {who: [0.0] * len(watch.get(who, [])) for who in urls}
    load = dict.fromkeys(urls, 0.0)
    for i in range(s.rounds):
        # Every other round backwards: no path always runs right after another.
        order = list(urls.items()) if i % 2 == 0 else list(reversed(urls.items()))
        for who, url in order:
            pids = watch.get(who, [])
            before = [group_stats(p).cpu_s for p in pids]
            load_before = core_busy_s(LOAD_CORE)
            runs[who].append(
                wrk.run(
                    url, scripts[who], seconds=s.wrk_seconds / s.rounds, connections=s.connections
                )
            )
            for j, p in enumerate(pids):
                cpu[who][j] += group_stats(p).cpu_s - before[j]
            load[who] += core_busy_s(LOAD_CORE) - load_before
    return runs, cpu, load


def profile_dict(p: profile.Profile) -> dict[str, Any]:
    return {
        "file": str(p.path),
        "samples": p.samples,
        "self_top": p.self_top,
        "inclusive_top": p.incl_top,
        "self_by_package": p.by_package,
    }


def paced_scenario(env: Env, s: Settings) -> dict[str, Any]:
    """Scenario 3: N concurrent streams of paced tokens; TTFT and inter-token gaps."""
    up = env.upstream.url
    paced_url = f"http://{HOST}:{env.paced_port}/v1"
    cfg = router.openai_config(up + "/json/v1", up + "/sse/v1", paced_url)
    out: dict[str, Any] = {
        "streams": s.paced_streams,
        "tokens_per_stream": s.paced_tokens,
        "interval_ms": s.paced_interval * 1e3,
        "seconds": s.paced_seconds,
    }
    with router.run(env.tmp, "paced", cfg, ROUTER_CORE, s.prelude) as rt:
        idle = rt.stats()
        out["router_idle_rss_mb"] = round(idle.rss_kb / 1024, 1)
        paths = {
            "direct": (env.paced_port, "/v1/chat/completions", bodies.UPSTREAM_MODEL, None),
            "nginx": (env.proxy.port, "/paced/v1/chat/completions", bodies.UPSTREAM_MODEL, None),
            # The same-stack pass-throughs: what the server and the client alone cost a token.
            **{who: (f.port, "/v1/chat/completions", bodies.ALIAS_PACED, None)
               for who, f in env.floors.items()},
            "router": (rt.port, "/v1/chat/completions", bodies.ALIAS_PACED, bodies.CLIENT_KEY),
        }
        pids = {"router": rt.pid, "nginx": env.proxy.pid,
                **{who: f.pid for who, f in env.floors.items()}}
        for who, (port, path, model, key) in paths.items():
            watched = pids.get(who)
            before = group_stats(watched) if watched else None
            length = s.paced_ramp + s.paced_seconds + s.paced_tokens * s.paced_interval
            with (
                profiled(env, s, rt, "paced", length)
                if who == "router"
                else contextlib.nullcontext([])
            ) as prof:
                res = paced.run(
                    port,
                    path,
                    model,
                    key,
                    connections=s.paced_streams,
                    tokens=s.paced_tokens,
                    interval=s.paced_interval,
                    ramp_s=s.paced_ramp,
                    seconds=s.paced_seconds,
                )
            entry = res.as_dict()
            if watched and before:
                d = _delta(before, group_stats(watched))
                d["cpu_us_per_token"] = round(d["cpu_s"] / max(res.all_tokens, 1) * 1e6, 1)
                entry.update(d)
            if prof:
                entry["profile"] = profile_dict(prof[0])
            out[who] = entry
            _say(
                f"paced   {who:7} {res.streams:>6} streams  TTFT p50 {res.ttft_p50_ms:7.2f} "
                f"p99 {res.ttft_p99_ms:7.2f} ms  ITL p50 {res.itl_p50_ms:6.2f} "
                f"p99 {res.itl_p99_ms:6.2f} ms  errors {res.errors + res.short_streams}"
            )
    return out


def triton_scenario(env: Env, s: Settings) -> dict[str, Any]:
    """Scenario 4: streaming chat through the router to Triton vs a direct gRPC client.

    The mock's throughput drifts by tens of percent from one run to the next, so the paths
    take turns in short rounds and each adds up its rounds: drift hits them all alike."""
    out: dict[str, Any] = {
        "concurrency": s.triton_concurrency,
        "seconds": s.triton_seconds,
        "rounds": s.triton_rounds,
        "model": triton.MODEL,
    }
    t0 = time.monotonic()
    per_round = s.triton_seconds / s.triton_rounds
    with triton.server(env.tmp) as srv:
        out["triton_startup_s"] = round(time.monotonic() - t0, 1)
        cfg = router.triton_config(srv.grpc_url)
        with router.run(env.tmp, "triton", cfg, ROUTER_CORE, s.prelude) as rt:
            tallies = {
                "direct": triton.Tally(),
                "direct_core0": triton.Tally(),
                "router": triton.Tally(),
            }
            cpu_s = 0.0
            conc = s.triton_concurrency
            length = 3 * (s.triton_seconds + s.triton_warmup + s.triton_rounds) + 30
            with profiled(env, s, rt, "triton", length) as prof:
                for i in range(s.triton_rounds):
                    warm = s.triton_warmup if i == 0 else 0.5
                    tallies["direct"].add(
                        triton.run_direct(
                            srv.grpc_url, concurrency=conc, seconds=per_round, warmup_s=warm
                        )
                    )
                    # The same client on the idle router core: Triton has core 1 to itself.
                    tallies["direct_core0"].add(
                        triton.run_direct_on(
                            ROUTER_CORE,
                            srv.grpc_url,
                            concurrency=conc,
                            seconds=per_round,
                            warmup_s=warm,
                        )
                    )
                    before = rt.stats()
                    tallies["router"].add(
                        triton.run_routed(
                            rt.url, concurrency=conc, seconds=per_round, warmup_s=warm
                        )
                    )
                    cpu_s += rt.stats().cpu_s - before.cpu_s
            for who, tally in tallies.items():
                res = tally.result(s.triton_concurrency)
                entry = res.as_dict()
                if who == "router":
                    entry["cpu_s"] = round(cpu_s, 2)
                    # Warm-up requests count too: CPU per token over all the router served.
                    served = res.tokens_per_s * (
                        s.triton_seconds + s.triton_warmup + 0.5 * (s.triton_rounds - 1)
                    )
                    entry["cpu_us_per_token"] = round(cpu_s / max(served, 1) * 1e6, 1)
                    entry["max_rss_mb"] = round(rt.stats().hwm_kb / 1024, 1)
                    if prof:
                        entry["profile"] = profile_dict(prof[0])
                out[who] = entry
                _say(
                    f"triton  {who:12} {res.tokens_per_s:>8,.0f} tokens/s  "
                    f"p50 {res.p50_ms:7.2f} ms  errors {res.errors}"
                )
    return out


def triton_cost_scenario(env: Env, s: Settings) -> dict[str, Any]:
    """Scenario 4b: CPU per streamed Triton token and per request, the router against bare
    gRPC clients, each alone on the router's core (see bench/triton_cost.py), with the mock's
    pieces back to back and on decode-step ticks. The consumers take turns in rounds, so
    drift on the machine hits them alike."""
    tc = triton_cost
    conc = 16
    out: dict[str, Any] = {"concurrency": conc, "rounds": s.cost_rounds, "model": tc.MODEL,
                           "long_tokens": tc.LONG, "short_tokens": tc.SHORT}
    lengths = ((tc.LONG, s.cost_requests), (tc.SHORT, 5 * s.cost_requests))
    with triton.server(env.tmp) as srv, contextlib.ExitStack() as stack:
        cfg = router.triton_config(srv.grpc_url)
        routers = {"router": stack.enter_context(
            router.run(env.tmp, "triton-cost", cfg, ROUTER_CORE, s.prelude))}
        base = _baseline(stack, env, s, "triton-cost", cfg)
        if base is not None:
            routers["baseline"] = base
        sides = [*routers, *tc.CLIENTS]
        runs = [(p, m, n, count) for p, m in tc.PACING.items() for n, count in lengths]
        samples = {(p, who, n): tc.Sample(n) for p, _, n, _ in runs for who in sides}
        for rt in routers.values():  # warm: connections, the plan, the first allocations
            tc.routed(rt.url, rt.pid, tc.LONG, tc.PACING["back_to_back"], conc, conc)
        length = s.cost_rounds * len(sides) * 30 + 30
        with profiled(env, s, routers["router"], "triton-cost", length) as prof:
            for i in range(s.cost_rounds):
                for who in sides if i % 2 == 0 else reversed(sides):
                    for pacing, marker, n, count in runs:
                        if who in routers:
                            rt = routers[who]
                            got = tc.routed(rt.url, rt.pid, n, marker, conc, count)
                        else:
                            got = tc.client_on(ROUTER_CORE, who, srv.grpc_url, n, marker, conc,
                                               count, conc)
                        samples[(pacing, who, n)].add(got)
        for pacing in tc.PACING:
            res = out[pacing] = {}
            for who in sides:
                entry = res[who] = tc.summary(samples[(pacing, who, tc.LONG)],
                                              samples[(pacing, who, tc.SHORT)])
                _say(
                    f"triton cost {pacing:12} {who:12} {entry['cpu_us_per_token']:7.1f} us "
                    f"CPU/token {entry['cpu_us_per_request']:8.1f} us CPU/request "
                    f"{entry['tokens_per_s']:>8,.0f} tokens/s  errors "
                    f"{entry['long']['errors'] + entry['short']['errors']}"
                )
        if prof:
            out["profile"] = profile_dict(prof[0])
    return out


def _baseline(
    stack: contextlib.ExitStack, env: Env, s: Settings, name: str, cfg: str
) -> router.Router | None:
    if not s.baseline:
        return None
    return stack.enter_context(
        router.run(env.tmp, f"{name}-baseline", cfg, ROUTER_CORE, s.prelude, cwd=Path(s.baseline))
    )


def overhead_scenario(env: Env, s: Settings) -> dict[str, Any]:
    """Scenario 5: one request at a time; added latency and time to first chunk vs direct."""
    up = env.upstream.url
    cfg = router.openai_config(up + "/json/v1", up + "/sse/v1", None)
    out: dict[str, Any] = {"concurrency": 1, "seconds": s.overhead_seconds}
    with contextlib.ExitStack() as stack:
        rt = stack.enter_context(router.run(env.tmp, "overhead", cfg, ROUTER_CORE, s.prelude))
        base = _baseline(stack, env, s, "overhead", cfg)
        for kind, stream in (("chat", False), ("stream", True)):
            alias = bodies.ALIAS_SSE if stream else bodies.ALIAS_JSON
            path = nginx.SSE_PATH if stream else nginx.JSON_PATH
            plain = bodies.chat_request(bodies.UPSTREAM_MODEL, stream=stream)
            routed = bodies.chat_request(alias, stream=stream)
            paths: dict[str, tuple[str, bytes, str | None]] = {
                "direct": (up + path, plain, None),
                "nginx": (env.proxy.url + "/up" + path, plain, None),
                **{
                    w: (f.url + "/v1/chat/completions", routed, None) for w, f in env.floors.items()
                },
                "router": (rt.url + "/v1/chat/completions", routed, bodies.CLIENT_KEY),
            }
            if base is not None:
                paths["baseline"] = (base.url + "/v1/chat/completions", routed, bodies.CLIENT_KEY)
            res: dict[str, Any] = {}
            for who, (url, body, key) in paths.items():
                r = overhead.run(url, body, key, seconds=s.overhead_seconds, warmup=0.5)
                res[who] = r.as_dict()
                _say(
                    f"c=1 {kind:6} {who:10} {r.requests:>6} req  p50 {r.p50_ms:6.3f} "
                    f"p99 {r.p99_ms:6.3f} ms  TTFC p50 {r.ttfc_p50_ms:6.3f} "
                    f"p99 {r.ttfc_p99_ms:6.3f} ms  errors {r.errors}"
                )
            out[kind] = res
    return out


def scale_scenario(env: Env, s: Settings) -> dict[str, Any]:
    """Scenario 6: the router with 2 workers on both cores, wrk on the same cores: how far
    a second worker carries it (the upstream nginx stays on the load core)."""
    up = env.upstream.url
    cfg = router.openai_config(up + "/json/v1", up + "/sse/v1", None)
    both = f"{ROUTER_CORE},{LOAD_CORE}"
    out: dict[str, Any] = {"workers": 2, "cores": both, "connections": s.connections}
    with router.run(env.tmp, "scale", cfg, both, s.prelude, workers=2) as rt:
        for kind, stream in (("chat", False), ("stream", True)):
            alias = bodies.ALIAS_SSE if stream else bodies.ALIAS_JSON
            url = rt.url + "/v1/chat/completions"
            body = bodies.chat_request(alias, stream=stream)
            check(url, body, bodies.CLIENT_KEY, stream=stream, model=alias)
            script = wrk.lua_script(env.tmp / f"scale-{kind}.lua", body, bodies.CLIENT_KEY)
            kw: dict[str, Any] = {"connections": s.connections, "threads": 2, "cores": both}
            if s.wrk_warmup:
                wrk.run(url, script, seconds=s.wrk_warmup, **kw)
            res = wrk.run(url, script, seconds=s.wrk_seconds, **kw)
            out[kind] = res.as_dict()
            _say(
                f"scale {kind:6} router x2 {res.rps:>10,.0f} req/s  p50 {res.p50_ms:7.2f} ms  "
                f"p99 {res.p99_ms:7.2f} ms  errors {res.errors}"
            )
    return out


def python_version() -> str:
    return sys.version.split()[0]

"""Scenario 7: what per-key and per-model limits cost the router's hot path.

The same wrk loads as scenarios 1 and 2 (non-streaming, 64-chunk streaming) against four
routers taking turns in one run: no limits configured, limits counted in the router's main
process (the worker reaches it over a unix socket), and the same limits counted in a
redis-server on the load core, reached over loopback TCP (the target's row) and over its unix
socket. Every limit is generous, so every request passes every check
and the rows measure the checks, not refusals. After each load the admin key's
`GET /v1/usage` must count the requests wrk sent, so a router that skipped its limits cannot
pass for a cheap one."""

from __future__ import annotations

import contextlib
import json
import socket
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench import bodies, deps, router, scenarios, wrk
from bench.procs import HOST, LOAD_CORE, ROUTER_CORE, free_port, pinned, spawn

ADMIN_KEY = "sk-bench-admin"
KEY_NAME = "bench"
GOAL = 0.9  # Redis-backed limits keep >= 90% of the non-streaming req/s without limits
MODES = ("off", "local", "redis", "unix")
LABEL = {"off": "limits off", "local": "in process", "redis": "Redis", "unix": "Redis, sock",
         "base": "Redis, base"}
REDIS_MODES = ("redis", "unix", "base")  # the routers that count in redis-server
# High enough that a minute of the fastest load passes every check with room to spare.
KEY_LIMITS = """
[keys.{name}]
key = "{key}"
rpm = 100000000
tpm = 10000000000
max_concurrent = 10000
budget_tokens = 1000000000000
budget_period = "month"

[keys.bench-admin]
key = "{admin}"
admin = true
"""
MODEL_LIMITS = "rpm = 200000000"
USAGE_SETTLE_S = 2.5  # workers send their usage totals once a second


def _say(msg: str) -> None:
    print(f">> {msg}", flush=True)


def _redis_call(port: int, *args: str) -> bytes:
    """One command in RESP over a fresh connection: a simple reply's line or a bulk
    reply's payload."""
    cmd = f"*{len(args)}\r\n" + "".join(f"${len(a)}\r\n{a}\r\n" for a in args)
    with socket.create_connection((HOST, port), 2) as s:
        s.sendall(cmd.encode())
        s.settimeout(2)
        data = b""
        while True:
            head, sep, rest = data.partition(b"\r\n")
            if sep and not head.startswith(b"$"):
                return head
            if sep and len(rest) >= int(head[1:]) + 2:
                return rest[: int(head[1:])]
            chunk = s.recv(65536)
            if not chunk:
                raise ConnectionError(f"redis-server closed the connection: {data[:200]!r}")
            data += chunk


def _redis_evals(port: int) -> int:
    """Script calls redis-server has run so far (EVAL and EVALSHA)."""
    info = _redis_call(port, "INFO", "commandstats").decode(errors="replace")
    calls = 0
    for line in info.splitlines():
        if line.startswith(("cmdstat_evalsha:", "cmdstat_eval:")):
            fields = dict(f.split("=", 1) for f in line.split(":", 1)[1].split(","))
            calls += int(fields["calls"])
    return calls


@contextlib.contextmanager
def run_redis(tmp: Path) -> Iterator[tuple[int, int]]:
    """redis-server on the load core, nothing written to disk, on a port and the unix socket
    tmp/redis.sock: (port, pid)."""
    exe = deps.redis_bin()
    if exe is None:
        raise RuntimeError("redis-server is not installed: apt-get install -y redis-server")
    port = free_port()
    args = [exe, "--port", str(port), "--bind", HOST, "--save", "", "--appendonly", "no",
            "--unixsocket", str(tmp / "redis.sock"), "--unixsocketperm", "700"]
    with spawn(pinned(LOAD_CORE, args), log=tmp / "redis.log") as proc:
        deadline = time.monotonic() + 10
        while True:
            with contextlib.suppress(OSError):
                if _redis_call(port, "PING").startswith(b"+PONG"):
                    break
            if proc.poll() is not None or time.monotonic() > deadline:
                text = (tmp / "redis.log").read_text(errors="replace")
                raise RuntimeError(f"redis-server failed to start:\n{text[-2000:]}")
            time.sleep(0.05)
        yield port, proc.pid


def config(up: str, redis_url: str | None) -> str:
    server = 'limits_on_redis_failure = "deny"'  # a Redis away must show, not skip limits
    if redis_url is not None:
        server += f'\nredis_url = "{redis_url}"'
    keys = KEY_LIMITS.format(name=KEY_NAME, key=bodies.CLIENT_KEY, admin=ADMIN_KEY)
    return router.openai_config(
        up + "/json/v1", up + "/sse/v1", None, limits=(server, keys, MODEL_LIMITS)
    )


def _get(url: str, key: str) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {key}"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return r.status, dict(r.headers), r.read()


def _check_limited(url: str, body: bytes, *, stream: bool) -> None:
    """One request before the load: answered, and with the rate-limit headers that only a
    router enforcing limits sends."""
    req = urllib.request.Request(
        url,
        data=body,
        headers={
            "Content-Type": "application/json",
            "Authorization": f"Bearer {bodies.CLIENT_KEY}",
        },
        method="POST",
    )
    with urllib.request.urlopen(req, timeout=30) as r:
        status, headers, data = r.status, r.headers, r.read()
    limit = headers.get("x-ratelimit-limit-requests")
    if status != 200 or not limit or int(limit) < 1_000_000:
        raise RuntimeError(f"{url}: no generous x-ratelimit-limit-requests ({status}, {limit!r})")
    if stream and not data.endswith(b"data: [DONE]\n\n"):
        raise RuntimeError(f"{url}: incomplete stream {data[-200:]!r}")


def _usage_requests(base: str) -> int:
    """The bench key's request count from the admin's view of GET /v1/usage."""
    status, _, data = _get(base + "/v1/usage", ADMIN_KEY)
    doc = json.loads(data)
    entry = next((k for k in doc.get("keys", []) if k.get("key") == KEY_NAME), None)
    if status != 200 or entry is None or "usage" not in entry:
        raise RuntimeError(f"{base}/v1/usage: no usage for key {KEY_NAME}: {data[:300]!r}")
    return int(entry["usage"]["requests"])


def _verify(base: str, sent: int, slack: int) -> dict[str, Any]:
    """The router counted every request wrk completed, and on top at most `slack`: one per
    connection per wrk run (in flight when it stopped; wrk drops those, the router admitted
    them) and one per wrk error."""
    time.sleep(USAGE_SETTLE_S)
    counted = _usage_requests(base)
    ok = sent <= counted <= sent + slack
    if not ok:
        raise RuntimeError(
            f"{base}: GET /v1/usage counted {counted} requests, wrk completed {sent} "
            f"(expected {sent}..{sent + slack}): limits were not enforced on every request"
        )
    return {"counted": counted, "sent": sent, "slack": slack, "ok": ok}


def _worker(rt: router.Router) -> int:
    ws = rt.workers()
    if not ws:
        raise RuntimeError(f"router on port {rt.port} has no worker process")
    return ws[0]


def limits_scenario(env: scenarios.Env, s: scenarios.Settings) -> dict[str, Any]:
    up = env.upstream.url
    out: dict[str, Any] = {
        "connections": s.connections,
        "seconds": s.wrk_seconds,
        "rounds": s.rounds,
        "goal": GOAL,
    }
    with contextlib.ExitStack() as stack:
        rport, rpid = stack.enter_context(run_redis(env.tmp))
        rts = {
            "off": stack.enter_context(
                router.run(
                    env.tmp,
                    "limits-off",
                    router.openai_config(up + "/json/v1", up + "/sse/v1", None),
                    ROUTER_CORE,
                    s.prelude,
                )
            ),
            "local": stack.enter_context(
                router.run(env.tmp, "limits-local", config(up, None), ROUTER_CORE, s.prelude)
            ),
            "redis": stack.enter_context(
                router.run(env.tmp, "limits-redis", config(up, f"redis://{HOST}:{rport}/0"),
                           ROUTER_CORE, s.prelude)
            ),
            # The same Redis over its unix socket (a Redis on the router's own host), its own
            # database: what loopback TCP costs.
            "unix": stack.enter_context(
                router.run(env.tmp, "limits-unix",
                           config(up, f"unix://{env.tmp / 'redis.sock'}?db=2"),
                           ROUTER_CORE, s.prelude)
            ),
        }
        # --baseline: the same Redis limits from another checkout (its own database), an A/B.
        modes = (*MODES, "base") if s.baseline else MODES
        if s.baseline:
            rts["base"] = stack.enter_context(
                router.run(env.tmp, "limits-base", config(up, f"redis://{HOST}:{rport}/1"),
                           ROUTER_CORE, s.prelude, cwd=Path(s.baseline))
            )
        # Requests every limited router has admitted so far: the check, warm-ups and rounds.
        sent = dict.fromkeys(modes[1:], 0)
        slack = dict.fromkeys(modes[1:], 0)
        evals_before = _redis_evals(rport)
        for kind, stream in (("chat", False), ("stream", True)):
            alias = bodies.ALIAS_SSE if stream else bodies.ALIAS_JSON
            body = bodies.chat_request(alias, stream=stream)
            urls = {m: rts[m].url + "/v1/chat/completions" for m in modes}
            script = wrk.lua_script(env.tmp / f"limits-{kind}.lua", body, bodies.CLIENT_KEY)
            for m in modes:
                if m == "off":
                    scenarios.check(urls[m], body, bodies.CLIENT_KEY, stream=stream, model=alias)
                else:
                    _check_limited(urls[m], body, stream=stream)
                    sent[m] += 1
                if s.wrk_warmup:
                    w = wrk.run(urls[m], script, seconds=s.wrk_warmup, connections=s.connections)
                    if m != "off":
                        sent[m] += w.requests
                        slack[m] += s.connections + w.errors
            evals0 = _redis_evals(rport)
            # The router's group, its worker alone (the rest is the main process, where the
            # in-process counters live), and redis-server.
            watch = {m: [rts[m].pid, _worker(rts[m])] for m in modes}
            watch["redis"].append(rpid)
            # --profile: py-spy on the Redis router's worker (its turns; idle time is not sampled).
            with scenarios.profiled(env, s, rts["redis"], f"limits-{kind}",
                                    s.wrk_seconds * len(modes)) as prof:
                runs, cpu, load = scenarios.take_turns(
                    urls, dict.fromkeys(modes, script), watch, s
                )
            evals = _redis_evals(rport) - evals0
            # Over every Redis router's requests (they take turns on one redis-server).
            every = sum(x.requests for k in REDIS_MODES for x in runs.get(k, []))
            res: dict[str, Any] = {}
            for m in modes:
                r = wrk.merge(runs[m])
                entry = r.as_dict()
                entry["cpu_s"] = round(cpu[m][0], 3)
                n = max(r.requests, 1)
                entry["cpu_us_per_req"] = round(cpu[m][0] / n * 1e6, 1)
                entry["main_cpu_us_per_req"] = max(0.0, round((cpu[m][0] - cpu[m][1]) / n * 1e6, 1))
                if m == "redis" and prof:
                    entry["profile"] = scenarios.profile_dict(prof[0])
                if m == "redis":
                    entry["redis_cpu_us_per_req"] = round(cpu[m][2] / n * 1e6, 1)
                if m in REDIS_MODES:
                    entry["redis_calls_per_req"] = round(evals / max(every, 1), 3)
                if m != "off":
                    sent[m] += sum(x.requests for x in runs[m])
                    slack[m] += sum(s.connections + x.errors for x in runs[m])
                    entry["usage_check"] = _verify(rts[m].url, sent[m], slack[m])
                res[m] = entry
            off = res["off"]
            for m in modes:
                e = res[m]
                e["vs_off_rps"] = round(e["rps"] / off["rps"], 4) if off["rps"] else None
                e["added_cpu_us_per_req"] = round(e["cpu_us_per_req"] - off["cpu_us_per_req"], 1)
                # Off's CPU per request over this row's: what req/s would keep were the
                # router's core the only limit; it moves less than req/s with other work.
                e["vs_off_cpu_efficiency"] = round(off["cpu_us_per_req"] / e["cpu_us_per_req"], 4)
                # Below ~90% the router's core was not the limit: latency (Redis round
                # trips, a busy load core) or other work on core 0 held req/s down.
                e["router_core_busy_pct"] = round(100 * e["cpu_s"] / max(e["seconds"], 1e-9), 1)
                # The load core (wrk, the upstream, redis-server): near 100%, it held req/s down.
                e["load_core_busy_pct"] = round(100 * load[m] / max(e["seconds"], 1e-9), 1)
                _say(
                    f"limits {kind:6} {LABEL[m]:10} {e['rps']:>10,.0f} req/s  p50 "
                    f"{e['p50_ms']:7.2f} ms  p99 {e['p99_ms']:7.2f} ms  errors {e['errors']}  "
                    f"CPU {e['cpu_us_per_req']:.0f} us/req  cores {e['router_core_busy_pct']:.0f}%/"
                    f"{e['load_core_busy_pct']:.0f}%  {e['vs_off_rps']:.1%} of off"
                    + (
                        f"  usage {e['usage_check']['counted']:,}/{e['usage_check']['sent']:,}"
                        if "usage_check" in e
                        else ""
                    )
                )
            out[kind] = res
        out["redis_script_calls"] = _redis_evals(rport) - evals_before
        out["redis_keys"] = int(_redis_call(rport, "DBSIZE")[1:])
        if out["redis_keys"] == 0:
            raise RuntimeError("redis-server holds no keys: the Redis router never used it")
    return out


def target(sc: dict[str, Any]) -> tuple[float | None, int]:
    """Redis-backed non-streaming req/s over limits off, and the errors behind them."""
    chat = sc.get("limits", {}).get("chat")
    if not chat:
        return None, 0
    return chat["redis"]["vs_off_rps"], chat["redis"]["errors"] + chat["off"]["errors"]


def table(s: dict[str, Any]) -> list[str]:
    lines = [
        f"(7) limits on the hot path: wrk, {s['connections']} connections, {s['seconds']:g} s "
        f"in {s['rounds']} round(s); key rpm, tpm, max_concurrent, budget + model rpm, all "
        "generous",
        f"  {'load':7}{'path':12}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}"
        f"{'CPU us/req':>12}{'main':>7}{'+CPU us':>9}{'core %':>8}{'load %':>8}{'vs off':>9}"
        f"{'CPU vs off':>12}"
        f"{'redis us/req':>14}{'calls/req':>11}"
        f"{'usage/wrk':>18}",
    ]
    for kind in ("chat", "stream"):
        res = s.get(kind)
        if not res:
            continue
        for m in (*MODES, "base"):
            e = res.get(m)
            if e is None:
                continue
            u = e.get("usage_check")
            usage = f"{u['counted']:,}/{u['sent']:,}" if u else "-"
            lines.append(
                f"  {kind:7}{LABEL[m]:12}{e['rps']:>10,.0f}{e['p50_ms']:>9.2f}{e['p99_ms']:>9.2f}"
                f"{e['errors']:>8}{e['cpu_us_per_req']:>12,.1f}{e['main_cpu_us_per_req']:>7.1f}"
                f"{e['added_cpu_us_per_req']:>+9.1f}{e['router_core_busy_pct']:>8.0f}"
                f"{_opt(e.get('load_core_busy_pct'), '.0f'):>8}"
                f"{e['vs_off_rps']:>9.1%}{e['vs_off_cpu_efficiency']:>12.1%}"
                f"{_opt(e.get('redis_cpu_us_per_req'), '.1f'):>14}"
                f"{_opt(e.get('redis_calls_per_req'), '.3f'):>11}"
                f"{usage:>18}"
            )
    lines += [
        "  CPU us/req: the router's main process and worker (core 0), main: the main process's "
        "share; core %: their CPU over the wall time; load %: the load core's",
        "  (well below 100%: latency or other work on core 0, not the router's CPU, held req/s "
        "down); CPU vs off: off's CPU/req over the row's",
        "  redis us/req: redis-server's CPU (load core); calls/req: Lua script calls per "
        "request; usage/wrk: GET /v1/usage's request count",
        "  over the requests wrk completed (the excess: requests in flight when each wrk run "
        f"stopped); {s['redis_keys']} keys in Redis after the run",
    ]
    return lines


def _opt(x: Any, spec: str) -> str:
    return "-" if x is None else format(x, spec)

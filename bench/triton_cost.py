"""Triton cost: CPU per streamed token and per request, the router against bare gRPC clients.

Each consumer runs alone on the router's core and does the same work: `concurrency`
concurrent generations of the TensorRT-LLM ensemble mock (the `[[cycle]]` prompt: as many
pieces as max_tokens), one ModelStreamInfer call each, read to the end. The figure is the
consumer's own CPU time (all its threads, kernel included) over the requests it completed, so
a slow mock Triton cannot hide the cost: it only stretches the wall clock.

Two lengths split the cost: per request (the intercept) and per token (the slope between a
long and a short generation). The consumers:
- router: the router's process (its worker), fed streaming chats by an aiohttp client on the
  load core; it reads Triton, rewrites the pieces into OpenAI chunks and streams them out;
- tritonclient: a bare `tritonclient.grpc.aio` consumer (stream_infer, `InferResult.as_numpy`
  per response), the target's yardstick;
- grpc: raw `grpc.aio` on tritonclient's protobuf stubs, the BYTES tensor decoded by hand
  (what no Python consumer of the gRPC API gets much below).
"""

from __future__ import annotations

import asyncio
import json
import resource
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import asdict, dataclass
from typing import Any

import aiohttp
import numpy as np
import uvloop

from airouter.templates import load_template
from bench import bodies
from bench.procs import ROOT, group_stats, pinned
from tests.support.triton import build_request

MODEL = "trtllm_ensemble"
# How the mock paces the pieces: back to back, as fast as it sends them, or on the shared
# ticks of an inflight-batching engine's decode steps (every stream's next piece at once).
PACING = {"back_to_back": "[[cycle]]", "decode_steps": "[[decode]]"}
LONG = 200  # pieces a request, as an LLM answer of a few paragraphs
SHORT = 1
CLIENTS = ("tritonclient", "grpc")


def messages(marker: str) -> list[dict[str, str]]:
    user = bodies.MESSAGES[-1]["content"] + " " + marker
    return [*bodies.MESSAGES[:-1], {"role": "user", "content": user}]


def prompt(marker: str) -> bytes:
    """What the router sends for the bench chat (its chatml rendering)."""
    return load_template(format="chatml").render(messages(marker)).encode()


def chat_body(max_tokens: int, marker: str) -> bytes:
    body = {
        "model": bodies.ALIAS_TRITON,
        "messages": messages(marker),
        "max_tokens": max_tokens,
        "temperature": 0.7,
        "stream": True,
    }
    return json.dumps(body, separators=(",", ":")).encode()


def _inputs(max_tokens: int, marker: str) -> dict[str, Any]:
    """The inputs the router sends this model for the bench chat."""
    flag = np.array([[True]], dtype=np.bool_)
    return {
        "text_input": np.array([[prompt(marker)]], dtype=np.object_),
        "max_tokens": np.array([[max_tokens]], dtype=np.int32),
        "stream": flag,
        "exclude_input_in_output": flag,
        "return_num_input_tokens": flag,
        "return_num_output_tokens": flag,
        "temperature": np.array([[0.7]], dtype=np.float32),
    }


@dataclass
class Sample:
    """One consumer's batch of requests at one length."""

    tokens: int  # pieces a request
    requests: int = 0  # completed with every piece
    errors: int = 0
    cpu_s: float = 0.0
    wall_s: float = 0.0

    def add(self, other: Sample) -> None:
        self.requests += other.requests
        self.errors += other.errors
        self.cpu_s += other.cpu_s
        self.wall_s += other.wall_s


async def _batch(one: Callable[[], Awaitable[bool]], concurrency: int, requests: int) -> Sample:
    """`requests` calls of `one` (True: a whole answer), `concurrency` at a time."""
    left = requests
    sample = Sample(0)

    async def worker() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            try:
                ok = await one()
            except Exception:  # noqa: BLE001 - counted, the batch goes on
                ok = False
            if ok:
                sample.requests += 1
            else:
                sample.errors += 1

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return sample


def _cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


async def _measured(
    one: Callable[[], Awaitable[bool]], concurrency: int, requests: int, warm: int
) -> Sample:
    if warm:
        await _batch(one, concurrency, warm)
    cpu, t0 = _cpu_s(), time.perf_counter()
    sample = await _batch(one, concurrency, requests)
    sample.cpu_s, sample.wall_s = _cpu_s() - cpu, time.perf_counter() - t0
    return sample


async def _tritonclient(
    url: str, max_tokens: int, marker: str, concurrency: int, requests: int, warm: int
) -> Sample:
    from tritonclient.grpc import InferInput
    from tritonclient.grpc.aio import InferenceServerClient
    from tritonclient.utils import np_to_triton_dtype

    inputs = []
    for name, arr in _inputs(max_tokens, marker).items():
        t = InferInput(name, list(arr.shape), np_to_triton_dtype(arr.dtype))
        t.set_data_from_numpy(arr)
        inputs.append(t)
    client = InferenceServerClient(url)

    async def one() -> bool:
        async def request() -> AsyncIterator[dict[str, Any]]:
            yield {"model_name": MODEL, "inputs": inputs, "request_id": "bench-tc"}

        pieces = 0
        async for result, error in client.stream_infer(request(), stream_timeout=60):
            if error is not None:
                return False
            text = result.as_numpy("text_output")
            if text is not None and text.size and text.item():
                pieces += 1
        return pieces == max_tokens

    try:
        return await _measured(one, concurrency, requests, warm)
    finally:
        await client.close()


async def _grpc(
    url: str, max_tokens: int, marker: str, concurrency: int, requests: int, warm: int
) -> Sample:
    import grpc
    from tritonclient.grpc import service_pb2_grpc

    from airouter.backends.triton.models import first_bytes

    req = build_request(MODEL, _inputs(max_tokens, marker), request_id="bench-grpc")
    async with grpc.aio.insecure_channel(url) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)

        async def one() -> bool:
            call = stub.ModelStreamInfer(iter((req,)), timeout=60)
            pieces = 0
            while (msg := await call.read()) is not grpc.aio.EOF:
                if msg.error_message:
                    return False
                ir = msg.infer_response
                for i, out in enumerate(ir.outputs):
                    if out.name == "text_output" and first_bytes(ir.raw_output_contents[i]):
                        pieces += 1
            return pieces == max_tokens

        return await _measured(one, concurrency, requests, warm)


def client_on(
    core: int, kind: str, grpc_url: str, max_tokens: int, marker: str, concurrency: int,
    requests: int, warm: int,
) -> Sample:
    """A bare client in its own process pinned to `core`; its CPU over the measured batch."""
    args = [sys.executable, "-m", "bench.triton_cost", kind, grpc_url, marker,
            *(str(x) for x in (max_tokens, concurrency, requests, warm))]
    r = subprocess.run(pinned(core, args), capture_output=True, text=True, cwd=ROOT,
                       timeout=600)
    if r.returncode != 0:
        raise RuntimeError(f"the {kind} client failed:\n{r.stderr[-2000:]}")
    return Sample(**json.loads(r.stdout.strip().splitlines()[-1]))


async def _routed(
    url: str, max_tokens: int, marker: str, concurrency: int, requests: int
) -> Sample:
    body = chat_body(max_tokens, marker)
    headers = {"Authorization": f"Bearer {bodies.CLIENT_KEY}", "Content-Type": "application/json"}
    conn = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(
        connector=conn, headers=headers, timeout=aiohttp.ClientTimeout(total=120)
    ) as session:

        async def one() -> bool:
            async with session.post(url + "/v1/chat/completions", data=body) as resp:
                data = await resp.read()
            return (
                resp.status == 200
                and data.endswith(b"data: [DONE]\n\n")
                and b'"finish_reason":"length"' in data
            )

        t0 = time.perf_counter()
        sample = await _batch(one, concurrency, requests)
        sample.wall_s = time.perf_counter() - t0
        return sample


def routed(
    url: str, pid: int, max_tokens: int, marker: str, concurrency: int, requests: int
) -> Sample:
    """`requests` streaming chats through the router; the CPU of `pid` and its workers."""
    before = group_stats(pid).cpu_s
    sample = uvloop.run(_routed(url, max_tokens, marker, concurrency, requests))
    sample.cpu_s = group_stats(pid).cpu_s - before
    sample.tokens = max_tokens
    return sample


def summary(long: Sample, short: Sample) -> dict[str, Any]:
    """CPU per token (the slope) and per request (the intercept), from the two lengths."""
    per_long = long.cpu_s / max(long.requests, 1)
    per_short = short.cpu_s / max(short.requests, 1)
    per_token = (per_long - per_short) / max(long.tokens - short.tokens, 1)
    per_request = per_short - per_token * short.tokens
    return {
        "cpu_us_per_token": round(per_token * 1e6, 1),
        "cpu_us_per_request": round(per_request * 1e6, 1),
        # All of a long request's CPU over its tokens (the request's share included).
        "cpu_us_per_token_all": round(per_long / max(long.tokens, 1) * 1e6, 1),
        "tokens_per_s": round(long.requests * long.tokens / max(long.wall_s, 1e-9), 1),
        "long": asdict(long),
        "short": asdict(short),
    }


GOAL = 0.8  # router CPU per token over the bare tritonclient consumer's, at most
DECODE_STEP_S = 0.01  # the mock's decode-step tick (tests/triton_models/_mock_common.py)


def add_ratios(sc: dict[str, Any]) -> None:
    def ratio(a: float, b: float) -> float | None:
        return round(a / b, 4) if b > 0 else None

    for pacing in PACING:
        res = sc[pacing]
        r, t, g = res["router"], res["tritonclient"], res["grpc"]
        res["ratios"] = {
            "router_vs_tritonclient_cpu_per_token": ratio(r["cpu_us_per_token"],
                                                          t["cpu_us_per_token"]),
            "router_vs_tritonclient_cpu_per_request": ratio(r["cpu_us_per_request"],
                                                            t["cpu_us_per_request"]),
            "router_vs_grpc_cpu_per_token": ratio(r["cpu_us_per_token"], g["cpu_us_per_token"]),
            # Wall clock, which the mock Triton bounds: informative only.
            "router_vs_tritonclient_tokens_per_s": ratio(r["tokens_per_s"], t["tokens_per_s"]),
        }
        if "baseline" in res:
            res["ratios"]["router_vs_baseline_cpu_per_token"] = ratio(
                r["cpu_us_per_token"], res["baseline"]["cpu_us_per_token"])


def target(sc: dict[str, Any] | None, pacing: str) -> tuple[float | None, int]:
    """The router's CPU per token over tritonclient's, and the router's errors."""
    if not sc:
        return None, 0
    r = sc[pacing]["router"]
    return sc[pacing]["ratios"]["router_vs_tritonclient_cpu_per_token"], (
        r["long"]["errors"] + r["short"]["errors"])


def table(sc: dict[str, Any]) -> list[str]:
    lines = [
        f"(4b) Triton cost ({sc['model']}, {sc['long_tokens']} and {sc['short_tokens']} "
        f"pieces/request, {sc['concurrency']} concurrent, {sc['rounds']} rounds): CPU of each "
        "consumer alone on the router's core",
        f"  {'pieces':14}{'consumer':14}{'us/token':>10}{'us/request':>12}{'us/tok all':>12}"
        f"{'tokens/s':>10}{'errors':>8}{'vs tritonclient':>17}",
    ]
    for pacing in PACING:
        res = sc[pacing]
        base = res["tritonclient"]["cpu_us_per_token"]
        for who in ("tritonclient", "grpc", "baseline", "router"):
            r = res.get(who)
            if r is None:
                continue
            errs = r["long"]["errors"] + r["short"]["errors"]
            vs = f"{r['cpu_us_per_token'] / base:.2f}x" if base > 0 else "-"
            lines.append(
                f"  {pacing:14}{who:14}{r['cpu_us_per_token']:>10.1f}"
                f"{r['cpu_us_per_request']:>12.1f}{r['cpu_us_per_token_all']:>12.1f}"
                f"{r['tokens_per_s']:>10,.0f}{errs:>8}{vs:>17}"
            )
    lines.append(
        "  us/token: the slope between the two lengths; us/request: the rest of a request; "
        "us/tok all: a long request's CPU over its tokens"
    )
    lines.append(
        f"  back_to_back: each request's pieces as fast as the mock sends them; decode_steps: "
        f"every stream's next piece on the same {1000 * DECODE_STEP_S:g} ms tick"
    )
    return lines


def main(argv: list[str]) -> None:
    kind, url, marker = argv[0], argv[1], argv[2]
    max_tokens, concurrency, requests, warm = (int(x) for x in argv[3:7])
    run = _tritonclient if kind == "tritonclient" else _grpc
    sample = uvloop.run(run(url, max_tokens, marker, concurrency, requests, warm))
    sample.tokens = max_tokens
    print(json.dumps(asdict(sample)))


if __name__ == "__main__":
    main(sys.argv[1:])

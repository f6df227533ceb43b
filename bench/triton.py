"""Triton gRPC streaming: tokens/s through the router versus a direct gRPC client.

Both sides send the same generation (the chatml prompt of the bench chat, the mock's 13
pieces) with a fixed number of concurrent streams for a fixed time, one ModelStreamInfer
call per request, as the router itself does.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import numpy as np
import numpy.typing as npt
import uvloop
from tritonclient.grpc import service_pb2, service_pb2_grpc

from airouter.templates import load_template
from bench import bodies
from bench.procs import ROOT, pinned
from tests.support.triton import TritonServer, build_request, run_triton

REPO = ROOT / "tests" / "triton_models"
MODEL = "trtllm_ensemble"
PIECES = 13  # what the mock generates for any prompt without [[echo]]
MAX_TOKENS = 64


@contextlib.contextmanager
def server(tmp: Path) -> Iterator[TritonServer]:
    with run_triton(REPO, log=tmp / "triton.log", models=[MODEL], ready_timeout=120) as s:
        yield s


@dataclass
class TritonResult:
    concurrency: int
    requests: int
    tokens: int  # backend pieces delivered (13 per request)
    errors: int
    seconds: float
    rps: float
    tokens_per_s: float
    p50_ms: float  # whole-stream latency
    p99_ms: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Tally:
    """Completions inside measured windows; rounds of one path add up."""

    requests: int = 0
    errors: int = 0
    seconds: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)

    def add(self, other: Tally) -> None:
        self.requests += other.requests
        self.errors += other.errors
        self.seconds += other.seconds
        self.latencies_ms += other.latencies_ms

    def result(self, concurrency: int) -> TritonResult:
        arr = np.array(self.latencies_ms or [float("nan")])
        secs = self.seconds or float("nan")
        return TritonResult(
            concurrency=concurrency,
            requests=self.requests,
            tokens=self.requests * PIECES,
            errors=self.errors,
            seconds=round(self.seconds, 2),
            rps=round(self.requests / secs, 1),
            tokens_per_s=round(self.requests * PIECES / secs, 1),
            p50_ms=round(float(np.percentile(arr, 50)), 3),
            p99_ms=round(float(np.percentile(arr, 99)), 3),
        )


async def _load(
    one: Callable[[], Awaitable[int]], concurrency: int, seconds: float, warmup_s: float
) -> Tally:
    """Run `one` (a whole request; returns pieces seen, 0 on error) in `concurrency` loops;
    count what completes inside the window (throughput = completions / window)."""
    tally = Tally(seconds=seconds)
    t0 = time.perf_counter()
    start, stop = t0 + warmup_s, t0 + warmup_s + seconds

    async def worker() -> None:
        while True:
            t = time.perf_counter()
            if t >= stop:
                return
            try:
                n = await one()
            except (aiohttp.ClientError, grpc.RpcError, TimeoutError):
                n = 0
            done = time.perf_counter()
            if start <= done <= stop:
                if n == PIECES:
                    tally.requests += 1
                    tally.latencies_ms.append((done - t) * 1e3)
                else:
                    tally.errors += 1

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return tally


def _direct_request() -> service_pb2.ModelInferRequest:
    prompt = load_template(format="chatml").render(bodies.MESSAGES).encode()

    def flag(v: bool) -> npt.NDArray[np.bool_]:
        return np.array([[v]], dtype=np.bool_)

    return build_request(
        MODEL,
        {
            "text_input": np.array([[prompt]], dtype=np.object_),
            "max_tokens": np.array([[MAX_TOKENS]], dtype=np.int32),
            "stream": flag(True),
            "exclude_input_in_output": flag(True),
            "return_num_input_tokens": flag(True),
            "return_num_output_tokens": flag(True),
            "temperature": np.array([[0.7]], dtype=np.float32),
        },
        request_id="bench-direct",
    )


async def _direct(grpc_url: str, concurrency: int, seconds: float, warmup_s: float) -> Tally:
    req = _direct_request()
    async with grpc.aio.insecure_channel(grpc_url) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)

        async def one() -> int:
            call = stub.ModelStreamInfer(iter((req,)), timeout=30)
            pieces = 0
            async for msg in call:
                if msg.error_message:
                    return 0
                ir = msg.infer_response
                if ir.raw_output_contents:
                    pieces += 1
                if ir.parameters["triton_final_response"].bool_param:
                    break
            return pieces

        return await _load(one, concurrency, seconds, warmup_s)


async def _routed(url: str, concurrency: int, seconds: float, warmup_s: float) -> Tally:
    body = bodies.chat_request(bodies.ALIAS_TRITON, stream=True, max_tokens=MAX_TOKENS)
    headers = {"Authorization": f"Bearer {bodies.CLIENT_KEY}", "Content-Type": "application/json"}
    conn = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(
        connector=conn, headers=headers, timeout=aiohttp.ClientTimeout(total=30)
    ) as session:

        async def fetch() -> bytes | None:
            async with session.post(url + "/v1/chat/completions", data=body) as resp:
                data = await resp.read()
            ok = resp.status == 200 and data.endswith(b"data: [DONE]\n\n")
            return data if ok else None

        # The router joins split UTF-8 characters, so it sends fewer chunks than the mock's
        # pieces: learn the chunk count of a good answer once, then hold every answer to it.
        probe = await fetch()
        if probe is None or b'"finish_reason":"stop"' not in probe:
            raise RuntimeError(f"the router's Triton path does not work: {probe!r}")
        expect = probe.count(b'"content"')

        async def one() -> int:
            data = await fetch()
            return PIECES if data is not None and data.count(b'"content"') == expect else 0

        return await _load(one, concurrency, seconds, warmup_s)


def run_direct(grpc_url: str, *, concurrency: int, seconds: float, warmup_s: float) -> Tally:
    return uvloop.run(_direct(grpc_url, concurrency, seconds, warmup_s))


def run_routed(url: str, *, concurrency: int, seconds: float, warmup_s: float) -> Tally:
    return uvloop.run(_routed(url, concurrency, seconds, warmup_s))


def run_direct_on(
    core: int, grpc_url: str, *, concurrency: int, seconds: float, warmup_s: float
) -> Tally:
    """The direct client in its own process pinned to `core` (e.g. the idle router core)."""
    args = pinned(
        core,
        [
            sys.executable,
            "-m",
            "bench.triton",
            grpc_url,
            str(concurrency),
            str(seconds),
            str(warmup_s),
        ],
    )
    r = subprocess.run(
        args, capture_output=True, text=True, cwd=ROOT, timeout=seconds + warmup_s + 60
    )
    if r.returncode != 0:
        raise RuntimeError(f"direct Triton client failed:\n{r.stderr[-2000:]}")
    return Tally(**json.loads(r.stdout.strip().splitlines()[-1]))


if __name__ == "__main__":
    url, conc, secs, warm = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
    res = run_direct(url, concurrency=conc, seconds=secs, warmup_s=warm)
    print(json.dumps(asdict(res)))

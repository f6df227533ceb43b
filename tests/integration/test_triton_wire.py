"""The router's own HTTP/2 gRPC client (grpc_wire) against a real Triton: flow control both
ways, many calls on one connection, statuses, deadlines, cancellation, and a restarted server."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import numpy as np
import pytest
from tritonclient.grpc import service_pb2

from airouter.backends.triton import h2frames as h2
from airouter.backends.triton.grpc_wire import STREAM_WINDOW, Channel, RpcError
from tests.support.procs import free_port
from tests.support.router import RouterProc, run_router
from tests.support.triton import TritonServer, build_request, run_triton

pytestmark = pytest.mark.triton

REPO = Path(__file__).resolve().parents[1] / "triton_models"
MODELS = ["trtllm_ensemble", "trtllm_nonstream", "cancel_model"]
INFER = "/inference.GRPCInferenceService/ModelStreamInfer"
FULL = "Hello, world! Café 😀 The end."


@pytest.fixture(scope="module")
def cancel_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cancel") / "cancel.jsonl"


@pytest.fixture(scope="module")
def triton(tmp_path_factory: pytest.TempPathFactory, cancel_log: Path) -> Iterator[TritonServer]:
    tmp = tmp_path_factory.mktemp("triton")
    with run_triton(REPO, log=tmp / "triton.log", models=MODELS,
                    env={"AIROUTER_CANCEL_LOG": str(cancel_log)}) as server:
        yield server


def request(model: str, prompt: bytes, max_tokens: int = 16, *, stream: bool = True,
            exclude: bool = True) -> bytes:
    flag = np.array([[True]], dtype=np.bool_)
    inputs = {
        "text_input": np.array([[prompt]], dtype=np.object_),
        "max_tokens": np.array([[max_tokens]], dtype=np.int32),
        "exclude_input_in_output": np.array([[exclude]], dtype=np.bool_),
    }
    if stream:
        inputs["stream"] = flag
    return build_request(model, inputs, request_id="wire").SerializeToString()


async def answer(ch: Channel, body: bytes) -> tuple[bytes, bool]:
    """The text of a call's responses joined, and whether the last one was flagged final."""
    call = await ch.stream(INFER, body)
    text, final = b"", False
    while batch := await call.read():
        for raw in batch:
            msg = service_pb2.ModelStreamInferResponse.FromString(raw)
            assert not msg.error_message, msg.error_message
            ir = msg.infer_response
            for out, data in zip(ir.outputs, ir.raw_output_contents, strict=True):
                if out.name == "text_output" and data:
                    text += data[4:]
            final = ir.parameters["triton_final_response"].bool_param
    assert call.done()
    return text, final


async def test_a_stream_and_many_calls_on_one_connection(triton: TritonServer) -> None:
    ch = Channel(triton.grpc_url)
    try:
        body = request("trtllm_ensemble", b"Say hello")
        got = await asyncio.gather(*(answer(ch, body) for _ in range(64)))
        assert set(got) == {(FULL.encode(), True)}
        assert ch._conn is not None and not ch._conn.calls
        assert ch._conn._next_id == 2 * 64 + 1  # every call on the one connection
    finally:
        ch.close()


async def test_a_request_larger_than_the_servers_windows(triton: TritonServer) -> None:
    """The request waits for the server's WINDOW_UPDATEs (its initial windows are 64 KiB)."""
    ch = Channel(triton.grpc_url)
    try:
        prompt = b"word " * 100_000 + b"[[echo]]"
        text, _ = await answer(ch, request("trtllm_ensemble", prompt, 4))
        assert text == prompt[:12]
    finally:
        ch.close()


async def test_a_response_larger_than_this_sides_stream_window(triton: TritonServer) -> None:
    """One message larger than the stream window: it is acknowledged while still partial."""
    ch = Channel(triton.grpc_url)
    try:
        prompt = b"x" * (STREAM_WINDOW + 100_000)
        body = request("trtllm_nonstream", prompt, 13, stream=False, exclude=False)
        text, _ = await answer(ch, body)
        assert text == prompt + FULL.encode()
    finally:
        ch.close()


async def test_statuses_and_deadlines(triton: TritonServer) -> None:
    ch = Channel(triton.grpc_url)
    try:
        # A method the server does not know: a trailers-only answer.
        call = await ch.stream("/inference.GRPCInferenceService/NoSuchMethod", b"")
        with pytest.raises(RpcError) as e:
            await call.read()
        assert e.value.code == h2.UNIMPLEMENTED
        # An unknown model: Triton says so in-band, then ends the call with OK.
        call = await ch.stream(INFER, request("no_such_model", b"hi"))
        batch = await call.read()
        assert "no_such_model" in service_pb2.ModelStreamInferResponse.FromString(
            batch[0]).error_message
        # The deadline ends a call that runs past it.
        t0 = time.monotonic()
        call = await ch.stream(INFER, request("cancel_model", b"deadline", 2000), deadline_s=0.3)
        with pytest.raises(RpcError) as e:
            while await call.read():
                pass
        assert e.value.code == h2.DEADLINE_EXCEEDED
        assert time.monotonic() - t0 < 2
        # The connection still serves calls.
        assert (await answer(ch, request("trtllm_ensemble", b"again")))[0] == FULL.encode()
    finally:
        ch.close()


async def test_cancel_reaches_the_model(triton: TritonServer, cancel_log: Path) -> None:
    ch = Channel(triton.grpc_url)
    marker = f"wire-cancel-{time.time()}".encode()
    try:
        call = await ch.stream(INFER, request("cancel_model", marker, 2000))
        seen = 0
        while seen < 3:
            seen += len(await call.read())
        call.cancel()
        cancelled_at = time.time()
        with pytest.raises(RpcError) as e:
            await call.read()
        assert e.value.code == h2.CANCELLED
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            lines = cancel_log.read_text().splitlines()  # noqa: ASYNC240 - tiny local file
            if any(marker.decode() in json.loads(x)["prompt"] and "cancelled_at" in x
                   for x in lines):
                break
            await asyncio.sleep(0.05)
        else:
            pytest.fail("the model never saw the cancellation")
        assert time.time() - cancelled_at < 5
    finally:
        ch.close()


async def test_no_server_is_unavailable() -> None:
    ch = Channel(f"127.0.0.1:{free_port()}", connect_timeout=2)
    with pytest.raises(RpcError) as e:
        await ch.stream(INFER, b"")
    assert e.value.code == h2.UNAVAILABLE


def test_the_router_reconnects_to_a_restarted_server(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    tmp = tmp_path_factory.mktemp("restart")
    port = free_port()
    cfg = f"""
[server]
api_keys = ["sk-t"]

[backends.triton]
type = "triton"
url = "127.0.0.1:{port}"
health_interval = 0

[models.ens]
backend = "triton"
backend_model = "trtllm_ensemble"
prompt_format = "chatml"
"""

    def chat(r: RouterProc) -> tuple[int, str]:
        async def go() -> tuple[int, str]:
            async with aiohttp.ClientSession() as s, s.post(
                r.base_url + "/chat/completions",
                headers={"Authorization": "Bearer sk-t"},
                json={"model": "ens", "max_tokens": 16,
                      "messages": [{"role": "user", "content": "hi"}]},
            ) as resp:
                body = await resp.json()
                if resp.status != 200:
                    return resp.status, ""
                return resp.status, body["choices"][0]["message"]["content"]

        return asyncio.run(go())

    (tmp / "router").mkdir()
    with contextlib.ExitStack() as stack:
        server = contextlib.ExitStack()
        stack.callback(server.close)
        server.enter_context(run_triton(REPO, log=tmp / "t1.log", models=["trtllm_ensemble"],
                                        grpc_port=port))
        r = stack.enter_context(run_router(cfg, tmp / "router"))
        assert chat(r) == (200, FULL)
        server.close()  # the server stops; the router lives on
        assert chat(r)[0] == 502
        with run_triton(REPO, log=tmp / "t2.log", models=["trtllm_ensemble"], grpc_port=port):
            assert chat(r) == (200, FULL)

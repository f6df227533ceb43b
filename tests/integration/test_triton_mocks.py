"""The mock models in tests/triton_models behave as documented (talked to directly over gRPC)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tritonclient.grpc")
pytest.importorskip("pytriton")

from tests.support.triton import (  # noqa: E402
    SHM_DIR,
    SHM_GLOB,
    Response,
    TritonServer,
    build_request,
    bytes_input,
    decode,
    infer,
    open_stream,
    run_triton,
    scalar_input,
    send_stream,
    triton_backend_dir,
)

pytestmark = pytest.mark.triton

REPO = Path(__file__).resolve().parents[1] / "triton_models"
# Written out again here (not imported from the mocks) so the tests pin the behaviour.
PIECES = [
    b"Hello",
    b",",
    b" wor",
    b"ld",
    b"!",
    b" Caf",
    b"\xc3",
    b"\xa9",
    b" \xf0\x9f",
    b"\x98\x80",
    b" The",
    b" end",
    b".",
]
FULL = "Hello, world! Café 😀 The end.".encode()


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("triton")


@pytest.fixture(scope="module")
def triton(workdir: Path) -> Iterator[TritonServer]:
    with run_triton(
        REPO,
        log=workdir / "triton.log",
        backend_dir=triton_backend_dir(workdir / "backends"),
        env={"AIROUTER_CANCEL_LOG": str(workdir / "cancel.jsonl")},
    ) as server:
        print(f"tritonserver ready in {server.startup_s:.2f}s")
        yield server


def ens(
    prompt: str | bytes = "hi there", max_tokens: int = 13, **flags: object
) -> dict[str, np.ndarray]:
    """Inputs for the ensemble-interface mocks (batch dimension: shape [1, 1])."""
    inputs = {"text_input": bytes_input(prompt), "max_tokens": scalar_input(max_tokens, np.int32)}
    for name, value in flags.items():
        dtype = {float: np.float32, bool: np.bool_, int: np.int32}[type(value)]
        inputs[name] = scalar_input(value, dtype)
    return inputs


def vllm(
    prompt: str, params: dict[str, object] | None = None, **flags: bool
) -> dict[str, np.ndarray]:
    inputs = {"text_input": bytes_input(prompt, batched=False)}
    if params is not None:
        inputs["sampling_parameters"] = bytes_input(json.dumps(params), batched=False)
    for name, value in flags.items():
        inputs[name] = scalar_input(value, np.bool_, batched=False)
    return inputs


def data(responses: list[Response]) -> list[Response]:
    return [r for r in responses if r.outputs]


# ---- trtllm_ensemble ----


def test_ensemble_streams_deltas_then_empty_final(triton: TritonServer) -> None:
    rs = send_stream(
        triton.grpc_url,
        "trtllm_ensemble",
        ens(stream=True, return_num_input_tokens=True, return_num_output_tokens=True),
    )
    assert [r.text for r in rs[:-1]] == PIECES
    assert b"".join(r.text for r in rs) == FULL
    assert not any(r.final for r in rs[:-1])
    assert rs[-1].final and rs[-1].outputs == {} and rs[-1].error is None
    assert all(r.scalar("num_output_tokens") == 1 for r in rs[:-1])
    assert all(r.scalar("num_input_tokens") == 2 for r in rs[:-1])
    assert all(r.request_id == "req-1" for r in rs)
    with pytest.raises(UnicodeDecodeError):
        rs[6].text.decode()  # é arrives split across two responses


def test_ensemble_max_tokens_and_no_counts_unless_asked(triton: TritonServer) -> None:
    rs = send_stream(triton.grpc_url, "trtllm_ensemble", ens(max_tokens=5, stream=True))
    assert b"".join(r.text for r in rs) == b"Hello, world!"
    assert all(set(r.outputs) == {"text_output"} for r in data(rs))


def test_ensemble_without_empty_final_ends_with_stream(triton: TritonServer) -> None:
    rs = send_stream(triton.grpc_url, "trtllm_ensemble", ens(stream=True), empty_final=False)
    assert [r.text for r in rs] == PIECES
    assert not any(r.final for r in rs)


def test_ensemble_non_streaming_echoes_prompt(triton: TritonServer) -> None:
    rs = send_stream(
        triton.grpc_url, "trtllm_ensemble", ens("hi there", return_num_output_tokens=True)
    )
    assert len(rs) == 2 and rs[1].final and rs[1].outputs == {}
    assert rs[0].text == b"hi there" + FULL
    assert rs[0].scalar("num_output_tokens") == 13
    rs = send_stream(
        triton.grpc_url,
        "trtllm_ensemble",
        ens(max_tokens=2, stream=False, exclude_input_in_output=True),
    )
    assert rs[0].text == b"Hello,"


def test_echo_marker_returns_prompt_in_three_byte_pieces(triton: TritonServer) -> None:
    prompt = "[[echo]] <|im_start|>user\nCafé<|im_end|>"
    rs = send_stream(triton.grpc_url, "trtllm_ensemble", ens(prompt, max_tokens=500, stream=True))
    assert b"".join(r.text for r in rs) == prompt.encode()
    assert all(len(r.text) == 3 for r in data(rs)[:-1])
    rs = send_stream(triton.grpc_url, "trtllm_ensemble", ens(prompt, max_tokens=2, stream=True))
    assert b"".join(r.text for r in rs) == prompt.encode()[:6]


def test_ensemble_accepts_all_optional_inputs(triton: TritonServer) -> None:
    inputs = ens(
        max_tokens=3,
        stream=True,
        temperature=0.5,
        top_p=0.9,
        top_k=5,
        presence_penalty=0.1,
        frequency_penalty=0.2,
        end_id=2,
        pad_id=2,
    )
    inputs["seed"] = scalar_input(7, np.uint64)
    inputs["stop_words"] = bytes_input("wor", "!")
    rs = send_stream(triton.grpc_url, "trtllm_ensemble", inputs)
    # stop_words are ignored on purpose: the router must enforce stops itself.
    assert b"".join(r.text for r in rs) == b"Hello, wor"


def test_ensemble_temperature_too_high_is_in_band_error(triton: TritonServer) -> None:
    rs = send_stream(triton.grpc_url, "trtllm_ensemble", ens(stream=True, temperature=2.0))
    assert len(rs) == 1 and rs[0].error is not None and "temperature too high" in rs[0].error
    assert rs[0].request_id == "req-1"


def test_missing_required_input_is_rejected_by_triton(triton: TritonServer) -> None:
    rs = send_stream(triton.grpc_url, "trtllm_ensemble", {"text_input": bytes_input("x")})
    assert rs[0].error is not None and "max_tokens" in rs[0].error


# ---- trtllm_bls ----


def test_bls_streams_cumulative_text(triton: TritonServer) -> None:
    rs = send_stream(triton.grpc_url, "trtllm_bls", ens(stream=True))
    texts = [r.text for r in data(rs)]
    assert texts == [b"".join(PIECES[: i + 1]) for i in range(13)]
    assert rs[-1].final and rs[-1].outputs == {}


def test_bls_non_streaming_matches_ensemble(triton: TritonServer) -> None:
    rs = send_stream(triton.grpc_url, "trtllm_bls", ens("p", exclude_input_in_output=False))
    assert rs[0].text == b"p" + FULL


# ---- vllm_model ----


def test_vllm_stream_final_on_last_data_response(triton: TritonServer) -> None:
    rs = send_stream(
        triton.grpc_url,
        "vllm_model",
        vllm(
            "a b c",
            {"max_tokens": 5},
            stream=True,
            return_finish_reason=True,
            return_num_input_tokens=True,
            return_num_output_tokens=True,
        ),
    )
    assert [r.text for r in rs] == PIECES[:5]
    assert [r.final for r in rs] == [False] * 4 + [True]
    assert [r.scalar("finish_reason") for r in rs] == [b"None"] * 4 + [b"length"]
    assert all(r.scalar("num_input_tokens") == 3 for r in rs)
    assert all(r.scalar("num_output_tokens") == 1 for r in rs)
    assert rs[0].outputs["num_input_tokens"].dtype == np.uint32
    assert rs[0].outputs["text_output"].shape == (1,)


def test_vllm_stream_finish_reason_stop_and_default_max_tokens(triton: TritonServer) -> None:
    rs = send_stream(
        triton.grpc_url,
        "vllm_model",
        vllm("x", {"max_tokens": 50}, stream=True, return_finish_reason=True),
    )
    assert b"".join(r.text for r in rs) == FULL and rs[-1].scalar("finish_reason") == b"stop"
    rs = send_stream(triton.grpc_url, "vllm_model", vllm("[[echo]]" + "z" * 100, stream=True))
    assert len(rs) == 16 and rs[-1].final  # default max_tokens is 16


def test_vllm_non_streaming(triton: TritonServer) -> None:
    rs = send_stream(
        triton.grpc_url, "vllm_model", vllm("hi", {"max_tokens": 2}, return_num_output_tokens=True)
    )
    assert len(rs) == 1 and rs[0].final and rs[0].text == b"Hello,"
    assert rs[0].scalar("num_output_tokens") == 2
    rs = send_stream(
        triton.grpc_url, "vllm_model", vllm("hi ", {"max_tokens": 1}, exclude_input_in_output=False)
    )
    assert rs[0].text == b"hi Hello"
    rs = send_stream(
        triton.grpc_url, "vllm_model", vllm("hi ", {"max_tokens": 1}, exclude_input_in_output=True)
    )
    assert rs[0].text == b"Hello"


def test_vllm_errors_in_band(triton: TritonServer) -> None:
    rs = send_stream(triton.grpc_url, "vllm_model", vllm("x", {"temperature": 3}, stream=True))
    assert rs[0].error is not None and "temperature too high" in rs[0].error
    bad = vllm("x", stream=True)
    bad["sampling_parameters"] = bytes_input("{not json", batched=False)
    rs = send_stream(triton.grpc_url, "vllm_model", bad)
    assert len(rs) == 1 and rs[0].error


# ---- embed_model ----


def expected_embedding(text: bytes) -> list[float]:
    return [(sum(text) * (i + 1)) % 97 / 97.0 for i in range(8)]


def test_embed_batch(triton: TritonServer) -> None:
    texts = [b"hello", "Café".encode()]
    r = infer(
        triton.grpc_url, "embed_model", {"text": np.array([[t] for t in texts], dtype=object)}
    )
    assert r.error is None
    emb = r.outputs["embedding"]
    assert emb.shape == (2, 8) and emb.dtype == np.float32
    for row, text in zip(emb, texts, strict=True):
        np.testing.assert_allclose(row, expected_embedding(text), rtol=1e-6)


# ---- trtllm_nonstream ----


def test_nonstream_unary(triton: TritonServer) -> None:
    r = infer(
        triton.grpc_url, "trtllm_nonstream", ens("q ", max_tokens=5, return_num_output_tokens=True)
    )
    assert r.error is None and r.text == b"q Hello, world!"
    assert r.scalar("num_output_tokens") == 5


def test_nonstream_over_stream_ignores_stream_flag(triton: TritonServer) -> None:
    rs = send_stream(
        triton.grpc_url, "trtllm_nonstream", ens(stream=True, exclude_input_in_output=True)
    )
    assert len(rs) == 1 and rs[0].final and rs[0].text == FULL


# ---- error models ----


def test_error_model_in_band(triton: TritonServer) -> None:
    rs = send_stream(triton.grpc_url, "error_model", ens(stream=True), request_id="e1")
    assert len(rs) == 1 and rs[0].request_id == "e1"
    assert rs[0].error is not None and "mock failure: invalid input" in rs[0].error


def test_error_mid_stream_after_three_pieces(triton: TritonServer) -> None:
    rs = send_stream(triton.grpc_url, "error_mid_stream", ens(stream=True))
    assert [r.text for r in rs[:3]] == PIECES[:3] and not any(r.final for r in rs[:3])
    assert len(rs) == 4 and rs[3].error is not None and "mock failure mid-stream" in rs[3].error


def test_failed_request_does_not_kill_the_stream(triton: TritonServer) -> None:
    reqs = [
        build_request("error_model", ens(stream=True), request_id="bad"),
        build_request("trtllm_ensemble", ens(max_tokens=2, stream=True), request_id="good"),
    ]
    seen: dict[str, list[Response]] = {"bad": [], "good": []}
    with open_stream(triton.grpc_url, reqs, timeout=30) as call:
        for msg in call:
            r = decode(msg)
            seen[r.request_id].append(r)
    assert seen["bad"][0].error
    assert b"".join(r.text for r in seen["good"]) == b"Hello," and seen["good"][-1].final


# ---- slow_model / cancel_model ----


def test_slow_model_requests_overlap(triton: TritonServer) -> None:
    reqs = [
        build_request("slow_model", ens(max_tokens=3, stream=True), request_id=f"s{i}")
        for i in range(3)
    ]
    start = time.monotonic()
    finals = 0
    with open_stream(triton.grpc_url, reqs, timeout=30) as call:
        for msg in call:
            finals += decode(msg).final
            if finals == 3:
                break
    elapsed = time.monotonic() - start
    # Each request takes 0.4 s (two 0.2 s gaps); run one after another they would take 1.2 s.
    assert 0.39 < elapsed < 1.0


def read_cancel_log(path: Path) -> list[dict[str, object]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line]


def test_cancel_model_logs_client_cancellation(triton: TritonServer, workdir: Path) -> None:
    log = workdir / "cancel.jsonl"
    req = build_request(
        "cancel_model", ens("cancel me", max_tokens=2000, stream=True), request_id="c1"
    )
    with open_stream(triton.grpc_url, [req], timeout=30) as call:
        got = [decode(next(call)) for _ in range(3)]
        cancelled_at = time.time()
    assert [r.text for r in got] == PIECES[:3]
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        lines = [x for x in read_cancel_log(log) if x["request_id"] == "c1"]
        if any("cancelled_at" in x for x in lines):
            break
        time.sleep(0.02)
    started = [x for x in lines if "started_at" in x]
    cancelled = [x for x in lines if "cancelled_at" in x]
    assert len(started) == 1 and len(cancelled) == 1
    assert started[0]["prompt"] == cancelled[0]["prompt"] == "cancel me"
    assert 0 <= float(cancelled[0]["cancelled_at"]) - cancelled_at < 1.0  # type: ignore[arg-type]


def test_cancel_model_finishes_when_not_cancelled(triton: TritonServer) -> None:
    rs = send_stream(triton.grpc_url, "cancel_model", ens(max_tokens=15, stream=True))
    assert [r.text for r in data(rs)] == PIECES + PIECES[:2] and rs[-1].final


def test_deadline_bounds_a_stream_read(triton: TritonServer) -> None:
    import grpc

    with pytest.raises(grpc.RpcError) as exc:
        send_stream(triton.grpc_url, "slow_model", ens(stream=True), timeout=0.5)
    assert exc.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED


# ---- smollm2 (a real LLM) ----


@pytest.mark.llm
def test_smollm2_streams_real_text(triton: TritonServer) -> None:
    prompt = "<|im_start|>user\nSay hello.<|im_end|>\n<|im_start|>assistant\n"
    rs = send_stream(
        triton.grpc_url,
        "smollm2",
        ens(
            prompt,
            max_tokens=8,
            stream=True,
            return_num_input_tokens=True,
            return_num_output_tokens=True,
        ),
        timeout=60,
    )
    assert rs[-1].final and rs[-1].error is None and rs[-1].outputs == {}
    pieces = data(rs)
    assert 1 <= len(pieces) <= 8
    assert b"".join(r.text for r in pieces).decode().strip()
    assert all(r.scalar("num_input_tokens") == pieces[0].scalar("num_input_tokens") for r in pieces)
    assert int(pieces[0].scalar("num_input_tokens")) > 5  # type: ignore[call-overload]
    again = send_stream(
        triton.grpc_url, "smollm2", ens(prompt, max_tokens=8, stream=True), timeout=60
    )
    assert [r.text for r in again] == [r.text for r in rs]  # temperature 0: greedy


@pytest.mark.llm
def test_smollm2_non_streaming_echoes_prompt(triton: TritonServer) -> None:
    prompt = "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    rs = send_stream(
        triton.grpc_url,
        "smollm2",
        ens(prompt, max_tokens=4, return_num_output_tokens=True),
        timeout=60,
    )
    assert len(rs) == 2 and rs[1].final
    assert rs[0].text.startswith(prompt.encode()) and len(rs[0].text) > len(prompt)
    assert 1 <= int(rs[0].scalar("num_output_tokens")) <= 4  # type: ignore[call-overload]


# ---- run_triton itself ----


def test_run_triton_loads_only_named_models_and_cleans_shm(tmp_path: Path) -> None:
    import urllib.error
    import urllib.request

    before = set(SHM_DIR.glob(SHM_GLOB))
    with run_triton(REPO, log=tmp_path / "t.log", models=["embed_model"]) as server:
        assert set(SHM_DIR.glob(SHM_GLOB)) - before  # the python backend made its region
        with urllib.request.urlopen(f"{server.http_url}/v2/models/embed_model/ready") as r:
            assert r.status == 200
        with pytest.raises(urllib.error.HTTPError):
            urllib.request.urlopen(f"{server.http_url}/v2/models/trtllm_ensemble/ready")
    assert server.proc.poll() is not None
    assert not (set(SHM_DIR.glob(SHM_GLOB)) - before)

"""Run a real Triton Inference Server (from the nvidia-pytriton wheel) for tests, and talk to it.

See shared/recipes/triton.md for why the server is started this way.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np
from tritonclient.grpc import InferResult, service_pb2, service_pb2_grpc
from tritonclient.utils import np_to_triton_dtype, serialize_byte_tensor

from tests.support.procs import free_port, spawn, wait_http

SHM_DIR = Path("/dev/shm")
SHM_GLOB = "triton_python_backend_shm_region_*"


def pytriton_dir() -> Path:
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("nvidia-pytriton is not installed in this environment")
    return Path(spec.submodule_search_locations[0])


def tritonserver_bin() -> Path:
    return pytriton_dir() / "tritonserver" / "bin" / "tritonserver"


def triton_backend_dir(dest: Path) -> Path:
    """Build the backend folder Triton wants: python backend library, its utils and the stub."""
    ts = pytriton_dir() / "tritonserver"
    python = dest / "python"
    python.mkdir(parents=True, exist_ok=True)
    for src in (
        ts / "backends" / "python" / "libtriton_python.so",
        ts / "backends" / "python" / "triton_python_backend_utils.py",
        ts
        / "python_backend_stubs"
        / f"{sys.version_info.major}.{sys.version_info.minor}"
        / "triton_python_backend_stub",
    ):
        shutil.copy2(src, python / src.name)
    return dest


@dataclass
class TritonServer:
    http_port: int
    grpc_port: int
    proc: subprocess.Popen[bytes]
    startup_s: float = 0.0
    log: Path | None = None

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"


def model_names(repo: Path) -> list[str]:
    return sorted(p.parent.name for p in repo.glob("*/config.pbtxt"))


def _shm_files() -> set[Path]:
    return set(SHM_DIR.glob(SHM_GLOB))


def _mapped_by_live_process(path: Path) -> bool:
    # Another Triton started meanwhile (a parallel test run) may own a new region: keep those.
    needle = str(path)
    for maps in Path("/proc").glob("[0-9]*/maps"):
        with contextlib.suppress(OSError):
            if needle in maps.read_text(errors="replace"):
                return True
    return False


def _log_tail(log: Path | None, n: int = 4000) -> str:
    if log is None or not log.exists():
        return "(no log)"
    return log.read_text(errors="replace")[-n:]


@contextlib.contextmanager
def run_triton(
    repo: Path,
    *,
    log: Path | None = None,
    models: list[str] | None = None,
    extra_args: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    backend_dir: Path | None = None,
    ready_timeout: float = 60.0,
    grpc_port: int | None = None,
    http_port: int | None = None,
) -> Iterator[TritonServer]:
    """Start tritonserver on 127.0.0.1 with `repo`, wait until ready, stop it on exit.

    `models` limits which models load (default: every folder with a config.pbtxt; explicit
    mode either way, so stray folders such as __pycache__ are never taken for models).
    `env` adds environment variables for the server and its python-backend stubs.
    """
    with contextlib.ExitStack() as stack:
        if backend_dir is None:
            tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="triton-be-")))
            backend_dir = triton_backend_dir(tmp)
        http_port = http_port or free_port()
        grpc_port = grpc_port or free_port()
        args = [
            str(tritonserver_bin()),
            f"--model-repository={repo}",
            f"--backend-directory={backend_dir}",
            "--http-address=127.0.0.1",
            f"--http-port={http_port}",
            "--grpc-address=127.0.0.1",
            f"--grpc-port={grpc_port}",
            "--allow-metrics=false",
            "--exit-timeout-secs=2",
            "--model-control-mode=explicit",
            *(f"--load-model={m}" for m in (models if models is not None else model_names(repo))),
            *extra_args,
        ]
        venv_bin = str(Path(sys.executable).parent)
        libs = str(pytriton_dir().parent / "nvidia_pytriton.libs")
        full_env = {
            # The stub takes its Python from the first python3 on PATH: the test venv's.
            "PATH": os.pathsep.join([venv_bin, os.environ.get("PATH", "")]),
            "LD_LIBRARY_PATH": os.pathsep.join(
                p for p in [libs, os.environ.get("LD_LIBRARY_PATH", "")] if p
            ),
            **(env or {}),
        }
        shm_before = _shm_files()
        pgid: int | None = None
        try:
            start = time.monotonic()
            with spawn(args, env=full_env, log=log) as proc:
                pgid = proc.pid  # spawn starts a new session: the server leads its group
                try:
                    wait_http(
                        f"http://127.0.0.1:{http_port}/v2/health/ready",
                        timeout=ready_timeout,
                        proc=proc,
                    )
                except (TimeoutError, RuntimeError) as e:
                    raise RuntimeError(
                        f"tritonserver did not become ready: {e}\n{_log_tail(log)}"
                    ) from e
                yield TritonServer(
                    http_port=http_port,
                    grpc_port=grpc_port,
                    proc=proc,
                    startup_s=time.monotonic() - start,
                    log=log,
                )
        finally:
            if pgid is not None:
                _wait_group_gone(pgid)
            _remove_new_shm(shm_before)


def _group_alive(pgid: int) -> bool:
    """Whether any non-zombie process is in group `pgid` (zombies hold no shm mappings)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if fields[0] != "Z" and int(fields[2]) == pgid:
                return True
    return False


def _wait_group_gone(pgid: int, grace: float = 10.0) -> None:
    """Wait for the stub processes too: they outlive the server briefly, holding their shm."""
    deadline = time.monotonic() + grace
    while _group_alive(pgid):
        if time.monotonic() > deadline:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)
            time.sleep(0.1)
            return
        time.sleep(0.02)


def _remove_new_shm(before: set[Path]) -> None:
    for path in _shm_files() - before:
        if not _mapped_by_live_process(path):
            path.unlink(missing_ok=True)


# ---- gRPC client helpers (raw ModelStreamInfer, as the router does it) ----


@dataclass
class Response:
    """One response of a stream (or of a unary call), decoded."""

    request_id: str
    final: bool
    error: str | None = None
    outputs: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def text(self) -> bytes:
        """All text_output elements joined (b"" when absent)."""
        arr = self.outputs.get("text_output")
        return b"" if arr is None else b"".join(arr.reshape(-1).tolist())

    def scalar(self, name: str) -> object:
        arr = self.outputs.get(name)
        return None if arr is None else arr.reshape(-1)[0]


def build_request(
    model: str,
    inputs: Mapping[str, np.ndarray],
    *,
    request_id: str = "",
    empty_final: bool = True,
) -> service_pb2.ModelInferRequest:
    req = service_pb2.ModelInferRequest(model_name=model, id=request_id)
    for name, arr in inputs.items():
        dtype = np_to_triton_dtype(arr.dtype)
        tensor = req.inputs.add()
        tensor.name, tensor.datatype = name, dtype
        tensor.shape.extend(arr.shape)
        if dtype == "BYTES":
            serialized = serialize_byte_tensor(arr)
            req.raw_input_contents.append(serialized.item() if serialized.size else b"")
        else:
            req.raw_input_contents.append(np.ascontiguousarray(arr).tobytes())
    if empty_final:
        # Reserved name the tritonclient API refuses, hence the hand-built request.
        req.parameters["triton_enable_empty_final_response"].bool_param = True
    return req


def decode(msg: service_pb2.ModelStreamInferResponse) -> Response:
    infer = msg.infer_response
    final = infer.parameters["triton_final_response"].bool_param
    if msg.error_message:
        return Response(request_id=infer.id, final=True, error=msg.error_message)
    result = InferResult(infer)
    outputs = {o.name: result.as_numpy(o.name) for o in infer.outputs}
    return Response(request_id=infer.id, final=final, outputs=outputs)


@contextlib.contextmanager
def open_stream(
    grpc_url: str, requests: Sequence[service_pb2.ModelInferRequest], *, timeout: float = 30
) -> Iterator[Iterator[service_pb2.ModelStreamInferResponse]]:
    """A ModelStreamInfer call carrying `requests`; the deadline bounds every read.

    Leaving the block cancels the call, which Triton passes on to the models as cancellation.
    """
    channel = grpc.insecure_channel(grpc_url)
    try:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        call = stub.ModelStreamInfer(iter(list(requests)), timeout=timeout)
        try:
            yield call
        finally:
            call.cancel()
    finally:
        channel.close()


def send_stream(
    grpc_url: str,
    model: str,
    inputs: Mapping[str, np.ndarray],
    *,
    timeout: float = 30,
    empty_final: bool = True,
    request_id: str = "req-1",
) -> list[Response]:
    """Send one request over ModelStreamInfer and collect responses up to FINAL or an error."""
    out: list[Response] = []
    req = build_request(model, inputs, request_id=request_id, empty_final=empty_final)
    with open_stream(grpc_url, [req], timeout=timeout) as call:
        for msg in call:
            out.append(decode(msg))
            if out[-1].final or out[-1].error:
                break
    return out


def infer(
    grpc_url: str, model: str, inputs: Mapping[str, np.ndarray], *, timeout: float = 30
) -> Response:
    """A unary ModelInfer call (non-decoupled models); RPC errors become Response.error."""
    req = build_request(model, inputs, request_id="unary-1", empty_final=False)
    with grpc.insecure_channel(grpc_url) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        try:
            resp = stub.ModelInfer(req, timeout=timeout)
        except grpc.RpcError as e:
            return Response(request_id=req.id, final=True, error=e.details())
    result = InferResult(resp)
    return Response(
        request_id=resp.id,
        final=True,
        outputs={o.name: result.as_numpy(o.name) for o in resp.outputs},
    )


def bytes_input(*values: bytes | str, batched: bool = True) -> np.ndarray:
    """A BYTES tensor of one row: shape [1, N] (batched models) or [N]."""
    arr = np.array([v.encode() if isinstance(v, str) else v for v in values], dtype=np.object_)
    return arr.reshape(1, -1) if batched else arr


def scalar_input(value: object, dtype: type | np.dtype, *, batched: bool = True) -> np.ndarray:
    """A one-element tensor of `dtype`: shape [1, 1] (batched models) or [1]."""
    arr = np.array([value], dtype=dtype)
    return arr.reshape(1, 1) if batched else arr

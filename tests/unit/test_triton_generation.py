"""A Triton generation's stream, fed by a scripted call: one batch per response (a client sees
each token as it came), however the reads grouped them, in order, the end in a batch of its
own; nothing after the final response or a stop sequence."""

from __future__ import annotations

import asyncio
import json
import struct
from typing import Any

from tritonclient.grpc import service_pb2

from airouter.backends.base import Stats
from airouter.backends.triton.generation import Generation, Plan
from airouter.backends.triton.models import GenParams, ModelInfo
from airouter.config import ModelConfig
from airouter.output.choice import ChoiceStream
from airouter.output.chunks import ChunkWriter
from airouter.output.textfix import TextPipeline
from airouter.protocol.endpoints import Endpoint


def response(text: str, final: bool = False) -> bytes:
    """A decoupled model's response: one `text_output` BYTES element."""
    ir = service_pb2.ModelInferResponse(model_name="m")
    ir.outputs.add(name="text_output", datatype="BYTES", shape=[1])
    data = text.encode()
    ir.raw_output_contents.append(struct.pack("<I", len(data)) + data)
    ir.parameters["triton_final_response"].bool_param = final
    data = service_pb2.ModelStreamInferResponse(infer_response=ir).SerializeToString()
    return bytes(data)


class ScriptedCall:
    """The gRPC call's read side: each read hands over the responses of one network read."""

    def __init__(self, reads: list[list[bytes]]) -> None:
        self.reads = reads

    async def read(self) -> list[bytes]:
        return self.reads.pop(0) if self.reads else []

    def done(self) -> bool:
        return not self.reads

    def cancel(self) -> None:
        self.reads = []


def generation(reads: list[list[bytes]], stop: tuple[str, ...] = ()) -> Generation:
    info = ModelInfo("m", "trtllm", {}, {}, 0, True)
    writer = ChunkWriter(Endpoint.CHAT, "alias", False)
    return Generation(
        ScriptedCall(reads),  # type: ignore[arg-type]
        Plan(info, None, ModelConfig(backend="b")),
        writer,
        ChoiceStream(writer),
        TextPipeline(stops=stop),
        GenParams(max_tokens=100, stop=list(stop)),
        True,
        False,
        "node",
        5.0,
        5.0,
        Stats(),
        b"prompt",
    )


def batches(reads: list[list[bytes]], stop: tuple[str, ...] = ()) -> list[list[dict[str, Any]]]:
    async def run() -> list[list[dict[str, Any]]]:
        gen = generation(reads, stop)
        out = [[json.loads(c) for c in batch] async for batch in gen.stream(await gen.first())]
        await gen.aclose()
        return out

    return asyncio.run(run())


def content(batch: list[dict[str, Any]]) -> str:
    return "".join(c["choices"][0]["delta"].get("content") or "" for c in batch)


def test_one_batch_per_response_in_order_however_the_reads_group_them() -> None:
    out = batches([
        [response("He")],
        [response("l"), response("l"), response("o")],
        [response(",")],
        [response(" wor"), response("ld", final=True)],
    ])
    # The role with the first response, then one batch per response, then the end.
    assert [content(b) for b in out] == ["He", "l", "l", "o", ",", " wor", "ld", ""]
    assert out[0][0]["choices"][0]["delta"]["role"] == "assistant"
    assert all(len(b) == 1 for b in out[1:])
    reasons = [c["choices"][0]["finish_reason"] for b in out for c in b]
    assert reasons == [None] * 8 + ["stop"]


def test_a_read_that_brings_the_final_response_stops_there() -> None:
    # Responses after the final one (none should come) are not relayed.
    out = batches([[response("a"), response("b", final=True), response("c")]])
    assert "".join(content(b) for b in out) == "ab"
    assert out[-1][-1]["choices"][0]["finish_reason"] == "stop"


def test_a_stop_sequence_ends_the_stream_at_it() -> None:
    out = batches([[response("x")], [response("y"), response("STOP"), response("z")]],
                  stop=("STOP",))
    assert "".join(content(b) for b in out) == "xy"
    assert out[-1][-1]["choices"][0]["finish_reason"] == "stop"

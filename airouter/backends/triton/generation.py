"""One Triton generation: the plan fixed per model, and the state machine that reads a
decoupled model's responses and turns them into chunk batches."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from tritonclient.grpc import service_pb2

from airouter.backends.base import Stats
from airouter.backends.triton.embed import embed_problem
from airouter.backends.triton.errors import map_error, map_status
from airouter.backends.triton.grpc_wire import Call, RpcError
from airouter.backends.triton.logprobs import LOGPROB_OUTPUTS, read_logprobs
from airouter.backends.triton.models import GenParams, ModelInfo, first_bytes, scalar
from airouter.config import ModelConfig
from airouter.errors import GatewayTimeout
from airouter.output.choice import ChoiceStream
from airouter.output.chunks import ChunkWriter
from airouter.output.textfix import TextPipeline
from airouter.templates import ChatTemplate
from airouter.tokenizers import count_async, for_model

_RESPONSE = service_pb2.ModelStreamInferResponse


class Plan:
    """Everything about one (alias, backend model) pair that is fixed after start-up."""

    __slots__ = ("info", "template", "special", "model", "embed_problem")

    def __init__(self, info: ModelInfo, template: ChatTemplate | None, model: ModelConfig) -> None:
        self.info = info
        self.template = template
        self.special: tuple[str, ...] = template.stop_tokens if template else ()
        self.model = model
        # Why the model's tensors cannot serve embeddings (checked once, here), or None.
        self.embed_problem = embed_problem(info, model) if info.embed_interface else None


class Generation:
    """One streamed generation: reads Triton responses, yields chunk batches."""

    __slots__ = (
        "call",
        "plan",
        "writer",
        "out",
        "pipe",
        "params",
        "chat",
        "want_usage",
        "url",
        "idle",
        "prompt_tokens",
        "output_tokens",
        "_timer",
        "_loop",
        "_rest",
        "_last",
        "_idle_fired",
        "finished",
        "vllm_finish",
        "stats",
        "_limit",
        "_started",
        "final_seen",
        "texts",
        "counted",
        "prompt",
        "reused",
    )

    def __init__(
        self,
        call: Call,
        plan: Plan,
        writer: ChunkWriter,
        out: ChoiceStream,
        pipe: TextPipeline,
        params: GenParams,
        chat: bool,
        want_usage: bool,
        url: str,
        first_timeout: float,
        idle: float,
        stats: Stats,
        prompt: bytes,
    ) -> None:
        self.call = call
        self.plan = plan
        self.writer = writer
        self.out = out
        self.pipe = pipe
        self.params = params
        self.chat = chat
        self.want_usage = want_usage
        self.url = url
        self.idle = idle
        self.prompt_tokens = 0
        self.output_tokens = 0
        self.finished = False
        self.vllm_finish: str | None = None
        self.final_seen = False
        # With a tokenizer, what the client got, to count when Triton sends no counts.
        self.texts: list[str] | None = [] if for_model(plan.model) is not None else None
        self.counted = [False, False]  # num_input_tokens, num_output_tokens seen
        self.prompt = prompt
        # KV cache blocks the engine reused for the prompt (return_perf_metrics); -1: not told.
        self.reused = -1
        self.stats = stats
        # Kept: asyncio.get_running_loop() is a getpid() system call on Python 3.11.
        self._loop = loop = asyncio.get_running_loop()
        self._rest: list[bytes] = []  # responses a read brought and not taken yet, reversed
        self._last = loop.time()
        self._idle_fired = False
        self._limit = first_timeout
        self._started = False  # a response came: idle_timeout, not first_token_timeout, runs
        self._timer = loop.call_later(first_timeout, self._check_idle)

    def _check_idle(self) -> None:
        # One timer per request rather than one per token: each response only stamps _last.
        loop = self._loop
        due = self._last + self._limit
        if loop.time() >= due:
            self._idle_fired = True
            self.call.cancel()
        else:
            self._timer = loop.call_at(due, self._check_idle)

    async def next_batch(self) -> list[bytes] | None:
        """The responses (serialized) that arrived since the last call; None at the end."""
        try:
            batch = await self.call.read()
        except RpcError as e:
            if self._idle_fired:
                which = "idle_timeout" if self._started else "first_token_timeout"
                raise GatewayTimeout(
                    f"The Triton server at {self.url} sent nothing for {self._limit:g}s "
                    f"({which})."
                ) from None
            raise map_status(e.code, e.details, self.url, self.plan.info.name) from None
        if not batch:
            return None
        self._last = self._loop.time()
        self._limit = self.idle
        self._started = True
        return batch

    def absorb(self, resp: service_pb2.ModelStreamInferResponse) -> tuple[str, bool]:
        """Text to send for one response, and whether the backend said it was final."""
        if resp.error_message:
            raise map_error(resp.error_message, self.plan.info.name)
        ir = resp.infer_response
        raw = b""
        counted = False
        lp = -1
        outputs = ir.outputs
        contents = ir.raw_output_contents
        for i in range(len(outputs)):
            name = outputs[i].name
            if name == "text_output":
                raw = first_bytes(contents[i])
            elif name == "num_output_tokens":
                self.output_tokens += scalar(contents[i], outputs[i].datatype)
                counted = self.counted[1] = True
            elif name == "num_input_tokens":
                self.prompt_tokens = scalar(contents[i], outputs[i].datatype)
                self.counted[0] = True
            elif name == "finish_reason":
                reason = first_bytes(contents[i])
                if reason:
                    self.vllm_finish = reason.decode("utf-8", "replace")
            elif name in LOGPROB_OUTPUTS:
                lp = i
            elif name == self.plan.info.reuse_output:
                self.reused = max(self.reused, scalar(contents[i], outputs[i].datatype))
        if lp >= 0:
            self.out.logprobs(read_logprobs(outputs[lp].name, contents[lp], raw, self.out.top))
        if raw and not counted:
            self.output_tokens += 1
        final = ir.parameters["triton_final_response"].bool_param
        if final:
            self.final_seen = True
        text = self.pipe.feed(raw) if raw else ""
        if text and self.texts is not None:
            self.texts.append(text)
        return text, final

    def finish_reason(self) -> str:
        if self.pipe.finished:
            return "stop"
        if self.vllm_finish in ("length", "stop"):
            return self.vllm_finish
        return "length" if self.output_tokens >= self.params.max_tokens else "stop"

    def take(self, raw: bytes, out: list[bytes]) -> bool:
        """Absorb one response into `out`; True once no more may be read (the final
        response, or a stop sequence)."""
        text, final = self.absorb(_RESPONSE.FromString(raw))
        if text:
            out += self.out.text(text)
        if final:
            self.finished = True
            return True
        return self.pipe.finished

    async def next_response(self) -> bytes | None:
        """The next response (serialized), from what the last read brought if any is left."""
        rest = self._rest
        if not rest:
            batch = await self.next_batch()
            if batch is None:
                return None
            if len(batch) == 1:
                return batch[0]
            rest.extend(reversed(batch))
        return rest.pop()

    async def first(self) -> list[bytes]:
        """Wait for the first response, so errors before any output get a proper HTTP status."""
        out = [self.writer.role()] if self.chat else []
        start = len(out)
        while True:
            raw = await self.next_response()
            if raw is None:
                self.finished = True
                return out
            if self.take(raw, out) or len(out) > start:
                return out

    async def stream(self, first: list[bytes]) -> AsyncIterator[list[bytes]]:
        """One batch of chunks per response: a client sees each token as it came."""
        writer = self.writer
        if first:
            yield first
        while not self.pipe.finished and not self.finished:
            raw = await self.next_response()
            if raw is None:
                break
            out: list[bytes] = []
            ended = self.take(raw, out)
            if out:
                yield out
            if ended:
                break
        self.finished = True
        # A stop sequence may have ended it (pipe.finished): aclose() winds the call down.
        tail = self.pipe.flush()
        out = self.out.text(tail) if tail else []
        out += self.out.finish(self.finish_reason(), self.pipe.matched_stop)
        if self.texts is not None:
            await self._count(tail)
        stats = self.stats
        stats.prompt_tokens, stats.completion_tokens = self.prompt_tokens, self.output_tokens
        stats.finish_reason = self.out.reason
        if self.want_usage:
            out.append(writer.usage(self.prompt_tokens, self.output_tokens))
        yield out

    async def _count(self, tail: str) -> None:
        """Exact usage from the model's tokenizer for what Triton did not count."""
        model = self.plan.model
        if not self.counted[0]:
            self.prompt_tokens = await count_async(model, self.prompt.decode()) or 0
        if not self.counted[1]:
            assert self.texts is not None
            self.output_tokens = await count_async(model, "".join(self.texts) + tail) or 0

    async def aclose(self) -> None:
        """End the gRPC call. Cancelling is kept for calls that must stop now (the client left,
        an error): cancelling one that is about to end anyway races inside Triton (a known
        server-side crash on cancellation, fixed in releases after 2.51). A call that sent its
        final response is read to its end; one cut short by a stop sequence is drained briefly
        (models given `stop_words` end on their own) and cancelled only if it goes on."""
        self._timer.cancel()
        call = self.call
        if call.done():
            return
        ended = False
        try:
            if self.final_seen or (self.finished and self.pipe.finished):
                async with asyncio.timeout(0.5 if self.final_seen else 2.0):
                    while await call.read():
                        pass
                ended = True
        except (TimeoutError, RpcError):
            pass
        finally:
            # Whatever interrupted the drain (a cancellation too), the call must not live on.
            if not ended:
                call.cancel()

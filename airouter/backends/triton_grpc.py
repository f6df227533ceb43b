"""NVIDIA Triton over gRPC: one channel per node, one ModelStreamInfer call per request."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator, Awaitable
from typing import Any

import grpc
import msgspec
from tritonclient.grpc import service_pb2, service_pb2_grpc

from airouter.backends.base import Backend, Call, Reply, Stats, Target
from airouter.backends.fanout import fan_out, summed
from airouter.backends.nodes import Node, NodePool, NodeSpec, with_failover
from airouter.backends.observer import QUIET, NodeObserver
from airouter.backends.triton_embed import embed_problem, inputs_of, tensor_embed, vllm_embed
from airouter.backends.triton_features import (
    build_requests,
    choice_stream,
    read_features,
    render_prompt,
)
from airouter.backends.triton_logprobs import LOGPROB_OUTPUTS, read_logprobs
from airouter.backends.triton_lookup import ConfigLookup
from airouter.backends.triton_models import (
    GenParams,
    ModelInfo,
    first_bytes,
    gen_params,
    parse_config,
    scalar,
)
from airouter.bounds import bounded
from airouter.config import ModelConfig, TritonBackendConfig
from airouter.errors import (
    BadGateway,
    GatewayTimeout,
    InvalidRequest,
    RouterError,
    ServiceUnavailable,
)
from airouter.protocol.endpoints import Endpoint
from airouter.streaming.choice import ChoiceStream
from airouter.streaming.chunks import ChunkWriter
from airouter.streaming.textfix import TextPipeline
from airouter.templates import ChatTemplate, load_template
from airouter.tokenizers import count_async, for_model

log = logging.getLogger("airouter.triton")
_encode = msgspec.json.Encoder().encode

DEFAULT_CHAT_MAX_TOKENS = 512
DEFAULT_COMPLETION_MAX_TOKENS = 16  # OpenAI's default for /v1/completions


# Decoupled streams report failures as bare text. Words that only an engine or server fault
# uses win; then words that say the request itself was wrong; anything else is the backend's
# fault (502, retried on another node before the first byte, counted against the node).
_ENGINE_FAULT = re.compile(
    r"out of memory|\boom\b|cuda|cudnn|cublas|nccl|segmentation fault|core dumped|"
    r"engine (?:is )?(?:dead|stopped|failed)|executor|internal error|assertion",
    re.IGNORECASE,
)
_CLIENT_FAULT = re.compile(
    r"invalid (?:argument|input|value|parameter|request)|"
    r"too (?:long|large|high|low|many|big)|exceeds?|max(?:imum)?[ _](?:length|input|seq)|"
    r"input length|prompt length|context length|"
    r"unexpected (?:inference )?input|missing (?:required )?input|expected \d+ inputs?|"
    r"shape|data ?type|dtype|must be|out of range|not supported|unsupported",
    re.IGNORECASE,
)


def map_error(message: str, model: str) -> RouterError:
    """Triton's in-band error text to the status a client should see."""
    low = message.lower()
    if "unknown model" in low or ("is not found" in low and "model" in low):
        # Retryable: another node may serve it (a stopping server unloads its models first).
        return BadGateway(
            f"The Triton server does not serve the model '{model}'.",
            code="backend_model_not_found",
            retryable=True,
        )
    if "unavailable" in low or "not ready" in low:
        return ServiceUnavailable(f"The model '{model}' is unavailable: {message}")
    if _CLIENT_FAULT.search(message) and not _ENGINE_FAULT.search(message):
        return InvalidRequest(f"The model rejected the request: {message}",
                              code="backend_rejected")
    log.warning("model %s failed: %s", model,
                message[:500].encode("unicode_escape", "backslashreplace").decode("ascii"))
    return BadGateway(f"The model '{model}' failed on the backend.", code="backend_failed",
                      retryable=True)


def map_rpc_error(e: grpc.aio.AioRpcError, url: str, model: str) -> RouterError:
    code = e.code()
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return GatewayTimeout(f"The Triton server at {url} did not answer in time.")
    if code == grpc.StatusCode.UNAVAILABLE:
        return BadGateway(f"Could not reach the Triton server at {url}.", retryable=True)
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        return ServiceUnavailable(f"The Triton server at {url} is overloaded.")
    if code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.OUT_OF_RANGE,
                grpc.StatusCode.FAILED_PRECONDITION):
        return InvalidRequest(f"The model rejected the request: {e.details()}",
                              code="backend_rejected")
    return map_error(e.details() or str(code), model)


class _Plan:
    """Everything about one (alias, backend model) pair that is fixed after start-up."""

    __slots__ = ("info", "template", "special", "model", "embed_problem")

    def __init__(self, info: ModelInfo, template: ChatTemplate | None, model: ModelConfig) -> None:
        self.info = info
        self.template = template
        self.special: tuple[str, ...] = template.stop_tokens if template else ()
        self.model = model
        # Why the model's tensors cannot serve embeddings (checked once, here), or None.
        self.embed_problem = embed_problem(info, model) if info.embed_interface else None


class _Generation:
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
        "responses",
        "_timer",
        "_last",
        "_idle_fired",
        "finished",
        "vllm_finish",
        "stats",
        "_limit",
        "final_seen",
        "texts",
        "counted",
        "prompt",
    )

    def __init__(
        self,
        call: Any,
        plan: _Plan,
        writer: ChunkWriter,
        out: ChoiceStream,
        pipe: TextPipeline,
        params: GenParams,
        chat: bool,
        want_usage: bool,
        url: str,
        first_timeout: float,
        idle: float,
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
        self.responses = 0
        self.finished = False
        self.vllm_finish: str | None = None
        self.final_seen = False
        # With a tokenizer, what the client got, to count when Triton sends no counts.
        self.texts: list[str] | None = [] if for_model(plan.model) is not None else None
        self.counted = [False, False]  # num_input_tokens, num_output_tokens seen
        self.prompt = b""
        self.stats = Stats()
        loop = asyncio.get_running_loop()
        self._last = loop.time()
        self._idle_fired = False
        self._limit = first_timeout
        self._timer = loop.call_later(first_timeout, self._check_idle)

    def _check_idle(self) -> None:
        # One timer per request rather than one per token: each response only stamps _last.
        loop = asyncio.get_running_loop()
        due = self._last + self._limit
        if loop.time() >= due:
            self._idle_fired = True
            self.call.cancel()
        else:
            self._timer = loop.call_at(due, self._check_idle)

    async def next_response(self) -> service_pb2.ModelStreamInferResponse | None:
        try:
            resp = await self.call.read()
        except asyncio.CancelledError:
            if self._idle_fired:
                raise GatewayTimeout(
                    f"The Triton server at {self.url} sent nothing for {self._limit:g}s."
                ) from None
            raise
        except grpc.aio.AioRpcError as e:
            raise map_rpc_error(e, self.url, self.plan.info.name) from None
        if resp is grpc.aio.EOF:
            return None
        self._last = asyncio.get_running_loop().time()
        self._limit = self.idle
        return resp

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
        if lp >= 0:
            self.out.logprobs(read_logprobs(outputs[lp].name, contents[lp], raw, self.out.top))
        if raw:
            self.responses += 1
            if not counted:
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

    async def stream(self, first: list[bytes]) -> AsyncIterator[list[bytes]]:
        writer = self.writer
        if first:
            yield first
        while not self.pipe.finished and not self.finished:
            resp = await self.next_response()
            if resp is None:
                break
            text, final = self.absorb(resp)
            if text:
                yield self.out.text(text)
            if final:
                break
        self.finished = True
        if self.pipe.finished:
            pass  # a stop sequence ended it: aclose() winds the backend call down
        tail = self.pipe.flush()
        out = self.out.text(tail) if tail else []
        out += self.out.finish(self.finish_reason())
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
                    while await call.read() is not grpc.aio.EOF:
                        pass
                ended = True
        except (TimeoutError, grpc.aio.AioRpcError):
            pass
        finally:
            # Whatever interrupted the drain (a cancellation too), the call must not live on.
            if not ended:
                call.cancel()


class TritonGrpcBackend(Backend):
    provider = "triton"

    """Formats chat prompts, maps OpenAI fields onto declared model inputs, fixes up streams."""

    def __init__(
        self, name: str, cfg: TritonBackendConfig, observer: NodeObserver = QUIET
    ) -> None:
        self.name = name
        self.cfg = cfg
        self.pool = NodePool.from_config(
            name, cfg, [NodeSpec(n.url, n.weight) for n in cfg.node_urls()], observer
        )
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._stubs: dict[str, service_pb2_grpc.GRPCInferenceServiceStub] = {}
        self._infos: dict[tuple[str, str, str], ModelInfo] = {}
        self._plans: dict[tuple[int, str], _Plan] = {}
        self._templates: dict[int, ChatTemplate | None] = {}
        self._lookup = ConfigLookup(self.pool, self._stubs, cfg.health_timeout)

    async def start(self) -> None:
        for node in self.pool.nodes:
            # One long-lived HTTP/2 channel per node; every request is a stream on it.
            channel = grpc.aio.insecure_channel(
                node.url,
                options=[
                    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
                    ("grpc.max_send_message_length", 64 * 1024 * 1024),
                    ("grpc.keepalive_time_ms", 30_000),
                    ("grpc.http2.max_pings_without_data", 0),
                    # Reconnect quickly once a restarted node is back.
                    ("grpc.initial_reconnect_backoff_ms", 200),
                    ("grpc.max_reconnect_backoff_ms", 2_000),
                ],
            )
            self._channels[node.url] = channel
            self._stubs[node.url] = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        self.pool.start_checks(self._check, self.cfg.health_interval)

    async def aclose(self) -> None:
        self.pool.stop_checks()
        for channel in self._channels.values():
            await channel.close(grace=None)

    async def _check(self, node: Node) -> bool | None:
        """Active health check: the server is ready, and so is every model we use on it.
        None when it did not answer in time: the pool decides whether that counts."""
        stub = self._stubs[node.url]
        timeout = self.cfg.health_timeout
        try:
            ready = await stub.ServerReady(service_pb2.ServerReadyRequest(), timeout=timeout)
            if not ready.ready:
                return False
            for model in {k[0] for k in self._infos}:
                r = await stub.ModelReady(
                    service_pb2.ModelReadyRequest(name=model), timeout=timeout
                )
                if not r.ready:
                    return False
        except grpc.aio.AioRpcError as e:
            return None if e.code() == grpc.StatusCode.DEADLINE_EXCEEDED else False
        return True

    def health(self) -> dict[str, Any]:
        return {
            "status": "ok" if self.pool.routable else "unavailable",
            "nodes": self.pool.status(),
        }

    def check(self, model: ModelConfig) -> None:
        self.template_for(model)

    def template_for(self, model: ModelConfig) -> ChatTemplate | None:
        """Compile a model's chat template (start-up work; raises TemplateConfigError)."""
        key = id(model)
        if key not in self._templates:
            if model.prompt_format or model.tokenizer_config or model.template_file:
                self._templates[key] = load_template(
                    format=model.prompt_format,
                    tokenizer_config=model.tokenizer_config,
                    template_file=model.template_file,
                )
            else:
                self._templates[key] = None
        return self._templates[key]

    async def prepare(self, target: Target) -> None:
        try:
            plan = await self._plan(target)
            if plan.embed_problem:
                log.warning(
                    "backend %s: model %s cannot serve embeddings: %s",
                    self.name,
                    plan.info.name,
                    plan.embed_problem,
                )
        except RouterError as e:
            log.warning(
                "backend %s: model %s not ready yet: %s",
                self.name,
                bounded(target.backend_model),
                bounded(e.message),
            )

    async def _info(self, model: str, mc: ModelConfig) -> ModelInfo:
        key = (model, mc.interface, mc.embedding_input)
        info = self._infos.get(key)
        if info is not None:
            return info
        cfg = await self._lookup.get(model)
        info = self._infos.get(key)
        if info is None:
            try:
                info = parse_config(cfg, mc.interface, mc.embedding_input)
            except ValueError as e:
                raise BadGateway(str(e)) from None
            self._infos[key] = info
        return info

    async def _plan(self, target: Target) -> _Plan:
        key = (id(target.model), target.backend_model)
        plan = self._plans.get(key)
        if plan is None:
            info = await self._info(target.backend_model, target.model)
            plan = self._plans[key] = _Plan(info, self.template_for(target.model), target.model)
        return plan

    async def open(self, call: Call) -> Reply:
        plan = await self._plan(call.target)
        if call.endpoint is Endpoint.EMBEDDINGS:
            if not plan.info.embed_interface:
                raise InvalidRequest(
                    f"The model '{call.target.alias}' does not serve embeddings.",
                    param="model",
                    code="wrong_endpoint",
                )
            return await self._embed(call, plan)
        if plan.info.kind == "embedding":
            raise InvalidRequest(
                f"The model '{call.target.alias}' only serves embeddings.",
                param="model",
                code="wrong_endpoint",
            )
        return await self._generate(call, plan)

    async def _generate(self, call: Call, plan: _Plan) -> Reply:
        chat = call.endpoint is Endpoint.CHAT
        default_max = plan.model.max_tokens or (
            DEFAULT_CHAT_MAX_TOKENS if chat else DEFAULT_COMPLETION_MAX_TOKENS
        )
        info, alias = plan.info, call.target.alias
        feats = read_features(call.body, chat, alias, info, plan.template, plan.model)
        params = gen_params(call.body, default_max)
        prompt_text = render_prompt(call.body, chat, alias, plan.template, feats)
        prompt = prompt_text.encode()
        # Completions `echo`: the prompt comes first, as its own text chunk when streamed.
        echo = not chat and call.body.get("echo") is True and bool(prompt_text)
        writer = ChunkWriter(call.endpoint, alias, call.include_usage)
        n = feats.n
        try:
            reqs = build_requests(info, prompt, params, writer.id, plan.model, feats)
        except (ValueError, TypeError, OverflowError) as e:
            # A value the model's declared tensor type cannot hold (a negative UINT64 seed...).
            raise InvalidRequest(f"A parameter does not fit this model's inputs: {e}",
                                 code="invalid_value") from None
        cumulative = info.cumulative if plan.model.cumulative is None else plan.model.cumulative
        call.stats.response_model = info.name
        metadata = tuple(call.headers.items()) if call.headers else None

        want_usage = (call.include_usage or not call.stream) and n == 1
        stats = [call.stats] if n == 1 else [Stats() for _ in range(n)]
        writers = [writer] + [writer.sibling(i) for i in range(1, n)]

        async def attempt(node: Node, i: int) -> Reply:
            w = writers[i]
            # Fresh per attempt: a failed node may have fed the previous one part of a stream.
            pipe = TextPipeline(
                cumulative=cumulative,
                echo_prompt=None if info.has("exclude_input_in_output") else prompt,
                special_tokens=plan.special,
                stops=params.stop,
            )
            grpc_call = self._stubs[node.url].ModelStreamInfer(
                iter((reqs[i],)), timeout=self.cfg.request_timeout, metadata=metadata
            )
            call.stats.node = node.label
            gen = _Generation(
                grpc_call,
                plan,
                w,
                choice_stream(w, plan.model, feats, chat),
                pipe,
                params,
                chat,
                want_usage,
                node.url,
                self.cfg.first_token_timeout,
                self.cfg.idle_timeout,
            )
            gen.stats = stats[i]
            gen.prompt = prompt
            try:
                first = await self._first(gen)
            except BaseException:
                await gen.aclose()
                raise
            if echo:
                first[0:0] = gen.out.text(prompt_text)
            return Reply(chunks=gen.stream(first), aclose=gen.aclose)

        def choice(i: int) -> Awaitable[Reply]:
            return with_failover(self.pool, self.cfg.retries, lambda node: attempt(node, i))

        if n == 1:
            return await choice(0)
        usage = writer if call.include_usage or not call.stream else None
        return await fan_out([choice(i) for i in range(n)], summed(call.stats, stats, usage))

    async def _first(self, gen: _Generation) -> list[bytes]:
        """Wait for the first response, so errors before any output get a proper HTTP status."""
        out = [gen.writer.role()] if gen.chat else []
        while True:
            resp = await gen.next_response()
            if resp is None:
                gen.finished = True
                return out
            text, final = gen.absorb(resp)
            if text:
                out += gen.out.text(text)
            if final:
                gen.finished = True
            if text or final or gen.pipe.finished:
                return out

    async def _embed(self, call: Call, plan: _Plan) -> Reply:
        info = plan.info
        if plan.embed_problem:
            raise BadGateway(
                f"The model '{info.name}' cannot serve embeddings: {plan.embed_problem}.",
                code="unsupported_model",
            )
        vllm = info.embed_interface == "vllm"
        items = inputs_of(call.body, vllm)
        call.stats.response_model = info.name
        timeout = self.cfg.request_timeout

        async def attempt(node: Node) -> Reply:
            call.stats.node = node.label
            stub = self._stubs[node.url]
            if vllm:
                return await vllm_embed(stub, node.url, call, info, items, timeout)
            texts = [t for t in items if isinstance(t, str)]
            return await tensor_embed(stub, node.url, call, info, plan.model, texts, timeout)

        return await with_failover(self.pool, self.cfg.retries, attempt)

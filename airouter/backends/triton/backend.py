"""NVIDIA Triton over gRPC: one channel per node, one ModelStreamInfer call per request."""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable
from typing import Any

import grpc
from tritonclient.grpc import service_pb2, service_pb2_grpc

from airouter.backends.base import Backend, Call, Reply, Stats, Target
from airouter.backends.engine_scrape import EngineScraper
from airouter.backends.failover import with_failover
from airouter.backends.node import Node, NodeSpec
from airouter.backends.nodes import NodePool
from airouter.backends.observer import QUIET, NodeObserver
from airouter.backends.prefix import RouteKey
from airouter.backends.prefix_policy import session_of, settle
from airouter.backends.triton.embed import Limit, inputs_of, tensor_embed, vllm_embed
from airouter.backends.triton.errors import map_status
from airouter.backends.triton.fanout import fan_out, summed
from airouter.backends.triton.features import (
    build_requests,
    choice_stream,
    read_features,
    render_prompt,
)
from airouter.backends.triton.generation import Generation, Plan
from airouter.backends.triton.grpc_wire import Channel, RpcError
from airouter.backends.triton.lookup import ConfigLookup
from airouter.backends.triton.models import (
    ModelInfo,
    gen_params,
    parse_config,
)
from airouter.bounds import bounded
from airouter.config import ModelConfig, TritonBackendConfig
from airouter.errors import (
    BadGateway,
    GatewayTimeout,
    InvalidRequest,
    RouterError,
)
from airouter.output.chunks import ChunkWriter
from airouter.output.textfix import TextPipeline
from airouter.protocol.endpoints import Endpoint
from airouter.templates import ChatTemplate, load_template

log = logging.getLogger("airouter.triton")
STREAM_INFER = "/inference.GRPCInferenceService/ModelStreamInfer"


class TritonGrpcBackend(Backend):
    provider = "triton"
    # A generation needs a bound; /v1/completions' is OpenAI's default.
    default_max_tokens = {Endpoint.CHAT: 512, Endpoint.COMPLETIONS: 16}

    """Formats chat prompts, maps OpenAI fields onto declared model inputs, fixes up streams."""

    def __init__(
        self, name: str, cfg: TritonBackendConfig, observer: NodeObserver = QUIET
    ) -> None:
        self.name = name
        self.cfg = cfg
        self.pool = NodePool.from_config(
            name, cfg, [NodeSpec(n.url, n.weight) for n in cfg.node_urls()], observer
        )
        self._scraper = EngineScraper.for_nodes(self.pool, "triton", cfg.node_urls(),
                                                cfg.metrics_interval, cfg.health_timeout)
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._stubs: dict[str, service_pb2_grpc.GRPCInferenceServiceStub] = {}
        # Generations: their own HTTP/2 connection per node (grpc_wire), read on the loop.
        self._wires: dict[str, Channel] = {}
        self._infos: dict[tuple[str, str, str], ModelInfo] = {}
        self._plans: dict[tuple[int, str], Plan] = {}
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
            self._wires[node.url] = Channel(node.url, self.cfg.connect_timeout)
        self.pool.start_checks(self._check, self.cfg.health_interval)
        self._scraper.start()

    async def aclose(self) -> None:
        self.pool.stop_checks()
        self._scraper.stop()
        for channel in self._channels.values():
            await channel.close(grace=None)
        for wire in self._wires.values():
            wire.close()

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
            if self.pool.prefix is None:
                info.reuse_output = ""  # only a prefix balancer reads it: not asked for
            self._infos[key] = info
        return info

    async def _plan(self, target: Target) -> Plan:
        key = (id(target.model), target.backend_model)
        plan = self._plans.get(key)
        if plan is None:
            info = await self._info(target.backend_model, target.model)
            plan = self._plans[key] = Plan(info, self.template_for(target.model), target.model)
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

    async def _generate(self, call: Call, plan: Plan) -> Reply:
        chat = call.endpoint is Endpoint.CHAT
        # routing.request_for put the default in the body; this only guards a direct caller.
        default_max = self.default_max_tokens[call.endpoint]
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
        metadata = tuple(call.headers.items())
        bodies = [r.SerializeToString() for r in reqs]

        prefix = self.pool.prefix
        # The rendered prompt is what the node caches: its prefix picks the node.
        key = None if prefix is None else prefix.key(prompt, call.target.backend_model,
                                                     session_of(call.body))
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
            try:
                grpc_call = await self._wires[node.url].stream(
                    STREAM_INFER, bodies[i], deadline_s=self.cfg.request_timeout, metadata=metadata
                )
            except RpcError as e:
                raise map_status(e.code, e.details, node.label, info.name) from None
            call.stats.node = node.label
            gen = Generation(
                grpc_call,
                plan,
                w,
                choice_stream(w, plan.model, feats, chat),
                pipe,
                params,
                chat,
                want_usage,
                node.label,
                self.cfg.first_token_timeout,
                self.cfg.idle_timeout,
                stats[i],
                prompt,
            )
            t0 = time.perf_counter()
            try:
                first = await gen.first()
            except BaseException:
                await gen.aclose()
                raise
            if log.isEnabledFor(logging.DEBUG):
                log.debug("backend %s: node %s model %s answered in %.1f ms", self.name,
                          node.label, info.name, (time.perf_counter() - t0) * 1000)
            if echo:
                first[0:0] = gen.out.text(prompt_text)
            reply = Reply(chunks=gen.stream(first), aclose=gen.aclose)
            if key is not None and n == 1 and info.reuse_output:
                reply.on_close(functools.partial(self._reused, key, gen))
            return reply

        def choice(i: int) -> Awaitable[Reply]:
            return with_failover(self.pool, self.cfg.retries, lambda node: attempt(node, i), key)

        if n == 1:
            return await choice(0)
        usage = writer if call.include_usage or not call.stream else None
        return await fan_out([choice(i) for i in range(n)], summed(call.stats, stats, usage))

    def _reused(self, key: RouteKey, gen: Generation) -> None:
        """The engine's count of reused KV blocks, as cached prompt tokens (blocks x the
        engine's block size when its metrics said, else blocks: only > 0 counts), checked
        against the prefix index's prediction."""
        if gen.reused < 0 or key.pos < 0 or self.pool.prefix is None:
            return
        engine = self.pool.prefix.engine[key.pos]
        per = engine.tokens_per_block if engine is not None and engine.tokens_per_block else 1
        gen.stats.cached_tokens = gen.reused * per
        settle(self.pool, key, gen.stats)

    async def _embed(self, call: Call, plan: Plan) -> Reply:
        info = plan.info
        if plan.embed_problem:
            raise BadGateway(
                f"The model '{info.name}' cannot serve embeddings: {plan.embed_problem}.",
                code="unsupported_model",
            )
        vllm = info.embed_interface == "vllm"
        items = inputs_of(call.body, vllm)
        call.stats.response_model = info.name
        # One answer per call: its start is its end, so first_token_timeout bounds all of it
        # (every batch, every vLLM item), as request_timeout does. Each gRPC call carries the
        # deadline too, so the server learns of it.
        limit = Limit.of(self.cfg.first_token_timeout, self.cfg.request_timeout)

        async def attempt(node: Node) -> Reply:
            call.stats.node = node.label
            stub = self._stubs[node.url]
            try:
                async with asyncio.timeout(limit.seconds):
                    if vllm:
                        return await vllm_embed(stub, node.label, call, info, items, limit)
                    texts = [t for t in items if isinstance(t, str)]
                    return await tensor_embed(stub, node.label, call, info, plan.model, texts,
                                              limit)
            except TimeoutError:
                raise GatewayTimeout(
                    f"The Triton server at {node.label} did not answer within {limit.words}."
                ) from None

        return await with_failover(self.pool, self.cfg.retries, attempt)

"""Triton model configs, looked up once per model however many requests wait for one."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
from google.protobuf import json_format
from tritonclient.grpc import service_pb2, service_pb2_grpc

from airouter.backends.node import Node
from airouter.backends.nodes import NodePool
from airouter.backends.triton.errors import map_error
from airouter.bounds import bounded
from airouter.errors import BadGateway, RouterError

# Seconds a failed look-up is answered from memory: a burst against a dead node gets the
# answer at once instead of a queue of timeouts, and a node that is back is asked soon after.
RETRY_AFTER = 1.0


class ConfigLookup:
    """Single-flight per model, every available node asked at once, bounded by `timeout`
    (the backend's health_timeout), a failure remembered for RETRY_AFTER seconds."""

    def __init__(
        self,
        pool: NodePool,
        stubs: dict[str, service_pb2_grpc.GRPCInferenceServiceStub],
        timeout: float,
    ) -> None:
        self.pool = pool
        self.stubs = stubs
        self.timeout = timeout
        self._flights: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._failed: dict[str, tuple[float, RouterError]] = {}

    async def get(self, model: str) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        failed = self._failed.get(model)
        if failed is not None:
            if loop.time() < failed[0]:
                raise failed[1]
            del self._failed[model]
        fut = self._flights.get(model)
        if fut is None:
            fut = self._flights[model] = asyncio.ensure_future(self._fetch(model))

            def done(f: asyncio.Future[dict[str, Any]]) -> None:
                self._flights.pop(model, None)
                if f.cancelled():
                    return
                e = f.exception()
                if isinstance(e, RouterError):
                    self._failed[model] = (loop.time() + RETRY_AFTER, e)

            fut.add_done_callback(done)
        # Shielded: one waiter giving up (its client left) must not cancel the others' look-up.
        return await asyncio.shield(fut)

    async def _fetch(self, model: str) -> dict[str, Any]:

        nodes = [n for n in self.pool.nodes if n.available(0)] or self.pool.nodes
        timeout = self.timeout
        request = service_pb2.ModelConfigRequest(name=model)

        async def ask(node: Node) -> tuple[Node, Any]:
            try:
                return node, await self.stubs[node.url].ModelConfig(request, timeout=timeout)
            except grpc.aio.AioRpcError as e:
                return node, e

        tasks = [asyncio.ensure_future(ask(n)) for n in nodes]
        last: RouterError | None = None
        try:
            for next_done in asyncio.as_completed(tasks, timeout=timeout + 0.5):
                node, resp = await next_done
                if not isinstance(resp, grpc.aio.AioRpcError):
                    cfg: dict[str, Any] = json_format.MessageToDict(
                        resp.config, preserving_proto_field_name=True
                    )
                    return cfg
                if resp.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                    last = last or BadGateway(
                        f"Could not reach the Triton server at {node.label} to look up the model "
                        f"'{bounded(model)}'.",
                        retryable=True,
                    )
                else:
                    last = map_error(resp.details() or "", bounded(model))
        except TimeoutError:
            pass
        finally:
            for t in tasks:
                t.cancel()
        raise last or BadGateway(
            f"No Triton server answered a look-up of the model '{bounded(model)}' "
            f"within {timeout:g}s.",
            retryable=True,
        )

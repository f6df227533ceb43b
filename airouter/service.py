"""The router as a service, whichever interface serves it: its state, its routes, and the
worker's start-up and shut-down (backends opened and closed, in-flight requests drained)."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
from typing import TYPE_CHECKING

from airouter import reloading
from airouter.config import Config
from airouter.lifecycle import Holder
from airouter.observability import metrics
from airouter.observability.nodes import NodeGauge
from airouter.observability.record import Observer
from airouter.routes import Route, table
from airouter.state import State

if TYPE_CHECKING:
    from airouter.observability.tracing import Tracer

log = logging.getLogger("airouter")


def _tracer(cfg: Config) -> Tracer | None:
    endpoint = os.environ.get("OTLP_ENDPOINT") or cfg.server.otlp_endpoint
    if not endpoint:
        return None
    from airouter.observability.tracing import Tracer

    return Tracer(endpoint, os.environ.get("OTEL_SERVICE_NAME", "airouter"))


# On a reload, how long an old worker goes on accepting and answering with
# `Connection: close` before its listener closes: keep-alive connections in use end at a
# request boundary, and their clients reconnect to the new workers, instead of finding the
# connection closed under a request they are sending.
RELOAD_CLOSE_S = 1.0


def _drain_on_sigterm(holder: Holder, cfg: Config, generation: str | None) -> None:
    """SIGTERM: granian stops accepting and waits for in-flight requests; we bound the wait.

    The server installs its own SIGTERM/SIGINT handlers before the worker starts: ours
    replaces the SIGTERM one, arms the grace timer, and hands over through SIGINT.

    A reload (the main process's marker names a newer config generation than the one this
    worker started with) is not a shutdown: answers carry `Connection: close` for
    RELOAD_CLOSE_S before the listener closes, and in-flight requests get `reload_grace`.
    A SIGTERM that follows (the router stopping while this worker drains) cuts the grace
    down to `shutdown_grace`."""
    loop = asyncio.get_running_loop()
    deadline: asyncio.TimerHandle | None = None
    stopping = False

    def arm(grace: float) -> None:
        nonlocal deadline
        when = loop.time() + grace
        if deadline is not None:
            if deadline.when() <= when:
                return
            deadline.cancel()
        deadline = loop.call_at(when, holder.end_all)

    def stop_accepting() -> None:
        nonlocal stopping
        if not stopping:
            stopping = True
            os.kill(os.getpid(), signal.SIGINT)

    def on_term() -> None:
        marker = reloading.read_marker()
        holder.closing = True
        tasks = len(holder.tasks)
        if deadline is None and generation is not None and marker not in (None, generation,
                                                                             reloading.STOP):
            grace = cfg.server.reload_grace
            log.info("reload: draining %d in-flight requests (grace %gs)", tasks, grace)
            arm(RELOAD_CLOSE_S + grace)
            loop.call_later(RELOAD_CLOSE_S, stop_accepting)
            return
        grace = cfg.server.shutdown_grace
        log.info("SIGTERM: draining %d in-flight requests (grace %gs)", tasks, grace)
        arm(grace)
        stop_accepting()

    try:
        loop.add_signal_handler(signal.SIGTERM, on_term)
    except (NotImplementedError, RuntimeError):  # not the main thread (an embedded app)
        pass


class Service:
    """One worker's router: `start` in the event loop that serves it, `stop` when it ends.
    `signals`: install the SIGTERM drain (the server is airouter's own; a host server such
    as uvicorn drains on its own signals)."""

    def __init__(self, cfg: Config, signals: bool = True) -> None:
        self.cfg = cfg
        self.signals = signals
        self.generation = reloading.read_marker()
        self.holder = holder = Holder()
        holder.state = State.build(cfg, NodeGauge())
        self.observer = Observer(None, cfg.server.access_log)
        self.routes: list[Route] = table(holder, self.observer)

    async def start(self) -> None:
        self.observer.tracer = _tracer(self.cfg)
        if self.signals:
            _drain_on_sigterm(self.holder, self.cfg, self.generation)
        await self.holder.state.start()
        # What start-up built lives as long as the worker: out of the collector's sight, a
        # full collection walks only what requests allocate.
        gc.freeze()

    async def stop(self) -> None:
        # The server stops once every response is sent; requests may still be cleaning up
        # (draining a finished Triton call, closing an upstream). Let them end, within the
        # grace period's reach, before their connections close under them.
        holder = self.holder
        if holder.tasks:
            done, pending = await asyncio.wait(list(holder.tasks),
                                               timeout=self.cfg.server.shutdown_grace + 1)
            if pending:
                holder.end_all()
                await asyncio.wait(pending, timeout=1)
        await holder.state.aclose()
        metrics.PENDING.flush()
        if self.observer.tracer is not None:
            self.observer.tracer.shutdown()

"""Nodes of a backend: balancing, per-node concurrency limits with a bounded queue, passive
ejection after consecutive failures, and active health state."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence

from airouter.backends.node import Node, NodeSpec
from airouter.backends.node_queue import take_shared, wait_here
from airouter.backends.node_slots import GRANTED, SlotStore, unchecked
from airouter.backends.observer import QUIET, NodeObserver
from airouter.backends.prefix import RouteKey
from airouter.backends.prefix_policy import PrefixBalancer, policy_for
from airouter.config import NodesConfig
from airouter.fairness.claim import claim_var

log = logging.getLogger("airouter.nodes")


class NodePool:
    """Picks a node per attempt, holds a concurrency slot while the call runs, and learns
    from the outcome. All of it runs on the event loop: no locks needed."""

    def __init__(
        self,
        backend: str,
        specs: Sequence[NodeSpec],
        *,
        balance: str = "least_inflight",
        max_concurrent: int = 0,
        max_queue: int = 100,
        queue_timeout: float = 30.0,
        queue_timeouts: tuple[float, float, float] | None = None,
        eject_after: int = 3,
        cooldown: float = 10.0,
        unhealthy_after: int = 2,
        healthy_after: int = 1,
        panic_threshold: float = 0.5,
        observer: NodeObserver = QUIET,
    ) -> None:
        self.backend = backend
        self.observer = observer
        self.nodes = [Node(backend, s) for s in specs]
        self.balance = balance
        self.max_concurrent = max_concurrent
        self.max_queue = max_queue
        self.queue_timeout = queue_timeout
        # Per priority (high, normal, low): how long a request may wait for a slot.
        self.queue_timeouts = queue_timeouts or (queue_timeout,) * 3
        self.eject_after = eject_after
        self.cooldown = cooldown
        self.unhealthy_after = unhealthy_after
        self.healthy_after = healthy_after
        self.panic_threshold = panic_threshold
        self._rr_credit = [0.0] * len(self.nodes)
        self._checks: asyncio.Task[None] | None = None
        # Set when slots are counted across workers or replicas (State._share_slots).
        self.slots: SlotStore | None = None
        # balance = "prefix" | "prefix_load" (from_config): the prefix-aware choice.
        self.prefix: PrefixBalancer | None = None

    @classmethod
    def from_config(
        cls,
        backend: str,
        cfg: NodesConfig,
        specs: Sequence[NodeSpec],
        observer: NodeObserver = QUIET,
    ) -> NodePool:
        pool = cls(
            backend,
            specs,
            observer=observer,
            balance=cfg.balance,
            max_concurrent=cfg.max_concurrent,
            max_queue=cfg.max_queue,
            queue_timeout=cfg.queue_timeout,
            queue_timeouts=cfg.queue_timeouts.per_priority(cfg.queue_timeout),
            eject_after=cfg.eject_after,
            cooldown=cfg.cooldown,
            unhealthy_after=cfg.unhealthy_after,
            healthy_after=cfg.healthy_after,
            panic_threshold=cfg.panic_threshold,
        )
        pool.prefix = policy_for(pool.nodes, cfg)
        return pool

    @property
    def any_available(self) -> bool:
        now = time.monotonic()  # asked once per request: a list, not a generator's frame
        return any([n.healthy and now >= n.ejected_until for n in self.nodes])

    @property
    def routable(self) -> bool:
        """Requests can be served: a node is available, or (panic routing) a node that is only
        ejected, not failing its health checks, will be tried anyway."""
        return self.any_available or (
            self.panic_threshold > 0 and any(n.healthy for n in self.nodes)
        )

    def panicking(self, now: float) -> bool:
        """Fewer than `panic_threshold` of the nodes are available: as Envoy does, route to
        all of them rather than pile everything on the few left, or refuse everything when
        none is (a node ejected for a client's mistakes, a health endpoint too busy to answer
        while the node serves)."""
        up = sum(1 for n in self.nodes if n.available(now))
        return up < self.panic_threshold * len(self.nodes)

    def pick(self, exclude: Sequence[Node] = (), key: RouteKey | None = None) -> Node | None:
        now = time.monotonic()
        nodes = self.nodes
        if len(nodes) == 1:
            n = nodes[0]
            if n in exclude:
                return None
            return n if n.available(now) or self.panicking(now) else None
        if self.panicking(now):
            candidates = [n for n in nodes if n not in exclude]
        else:
            candidates = [n for n in nodes if n.available(now) and n not in exclude]
        if not candidates:
            return None
        limit = self.max_concurrent
        if limit:
            # A node with a free slot beats queueing behind a full one.
            candidates = [n for n in candidates if n.in_flight < limit] or candidates
        if self.prefix is not None and key is not None:
            return self.prefix.choose(candidates, key)
        if self.balance == "round_robin":
            return self._weighted_rr(candidates)
        # Least in-flight relative to weight; ties go to the node that served fewer.
        return min(candidates, key=lambda n: ((n.in_flight + 1) / n.weight, n.served))

    def _weighted_rr(self, candidates: list[Node]) -> Node:
        # Smooth weighted round-robin (as nginx does): even spread, proportional to weight.
        total = 0.0
        best: Node | None = None
        best_credit = 0.0
        for i, n in enumerate(self.nodes):
            if n not in candidates:
                continue
            self._rr_credit[i] += n.weight
            total += n.weight
            if best is None or self._rr_credit[i] > best_credit:
                best, best_credit = n, self._rr_credit[i]
        assert best is not None
        self._rr_credit[self.nodes.index(best)] -= total
        return best

    def take_free(self, node: Node) -> bool:
        """A slot on a node without a limit (the common case): counted here, at once."""
        if self.max_concurrent:
            return False
        node.in_flight += 1
        node.served += 1
        return True

    async def acquire(self, node: Node) -> str:
        """Take a concurrency slot on `node`, queueing (bounded, in the order of
        fairness.scheduler for the request's claim) when it is full. Answers the lease to give
        back to `release` ("" for a slot counted in this process only)."""
        if self.take_free(node):
            return ""
        store = self.slots
        if store is not None:
            lease = await take_shared(self, node, store, claim_var.get())
            if lease is not None:
                return lease
            if not store.allow_on_failure:
                raise unchecked()
        if node.in_flight >= self.max_concurrent or node.waiters:
            await wait_here(self, node, claim_var.get())
            return ""  # the releaser handed its slot over: in_flight already counts it
        node.in_flight += 1
        node.served += 1
        return ""

    def release(self, node: Node, lease: str = "") -> None:
        if lease and self.slots is not None:
            self.slots.give(node.key, lease)
        # A request counted here alone (the store was unreachable) may wait for this slot.
        waiters = node.waiters
        while waiters:
            fut = waiters.pop()
            if fut is not None and not fut.done():
                node.served += 1
                fut.set_result(GRANTED)  # hand the slot over; in_flight stays the same
                return
        node.in_flight -= 1

    def answering(self, node: Node) -> None:
        """The node began an answer."""
        node.answering += 1

    def succeeded(self, node: Node) -> None:
        """The node finished an answer: its failures in a row are over."""
        if node.failures:
            node.failures = 0
            node.ejected_until = 0.0
            self._publish(node)

    def failed(self, node: Node, why: str) -> None:
        """A connect error or 5xx: after `eject_after` in a row, rest the node for `cooldown`."""
        node.failures += 1
        if node.failures >= self.eject_after:
            node.ejected_until = time.monotonic() + self.cooldown
            log.warning(
                "backend %s: node %s ejected for %gs after %d failures (%s)",
                self.backend,
                node.label,
                self.cooldown,
                node.failures,
                why,
            )
            self._forget(node)
            self._publish(node)

    def checked(self, node: Node, ok: bool | None) -> None:
        """The active health check's result for `node`: None when it timed out."""
        answered = node.completed != node.checked_at or node.answering > 0
        node.checked_at = node.completed
        if ok is None:
            if answered:
                return  # busy, not dead: it answered requests since the last check
            ok = False
        if ok:
            node.checks_bad = 0
            node.checks_ok += 1
            if not node.healthy and node.checks_ok >= self.healthy_after:
                node.healthy = True
                node.failures = 0
                node.ejected_until = 0.0
                self._forget(node)  # it may have restarted: a cold cache
                log.warning("backend %s: node %s is healthy again", self.backend, node.label)
        else:
            node.checks_ok = 0
            node.checks_bad += 1
            if node.healthy and node.checks_bad >= self.unhealthy_after:
                node.healthy = False
                self._forget(node)
                log.warning(
                    "backend %s: node %s failed %d health checks",
                    self.backend,
                    node.label,
                    node.checks_bad,
                )
        self._publish(node)

    def _forget(self, node: Node) -> None:
        if self.prefix is not None:
            self.prefix.forget(node)

    def _publish(self, node: Node) -> None:
        self.observer.node_state(self.backend, node.label, node.available(time.monotonic()))

    def start_checks(
        self, check: Callable[[Node], Awaitable[bool | None]], interval: float
    ) -> None:
        """Active health checks in the background; interval 0 means none."""
        # Only serving processes publish: the main process also builds nodes to validate the
        # config, and a value of its own would pin a max-across-processes gauge at 1.
        for node in self.nodes:
            self._publish(node)
        if interval > 0:
            self._checks = asyncio.create_task(self.run_checks(check, interval))

    def stop_checks(self) -> None:
        if self._checks is not None:
            self._checks.cancel()

    async def run_checks(
        self, check: Callable[[Node], Awaitable[bool | None]], interval: float
    ) -> None:
        """Check every node every `interval` seconds, forever (cancel to stop). A check
        answers True (passed), False (failed: refused, an error status) or None (timed out)."""
        while True:
            results = await asyncio.gather(*(check(n) for n in self.nodes), return_exceptions=True)
            for node, ok in zip(self.nodes, results, strict=True):
                self.checked(node, ok if ok is None or isinstance(ok, bool) else False)
            await asyncio.sleep(interval)

    def status(self) -> list[dict[str, object]]:
        if self.prefix is None:
            return [n.status() for n in self.nodes]
        return [{**n.status(), **self.prefix.detail(n)} for n in self.nodes]

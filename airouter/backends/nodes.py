"""Nodes of a backend: balancing, per-node concurrency limits with a bounded queue, passive
ejection after consecutive failures, and active health state."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence

from airouter.backends.engine_metrics import EngineLoad
from airouter.backends.node import Node, NodeSpec
from airouter.backends.node_queue import Waiter, take_shared, wait_here
from airouter.backends.node_slots import SlotStore, unchecked
from airouter.backends.observer import QUIET, NodeObserver
from airouter.backends.prefix import RouteKey
from airouter.backends.prefix_policy import PrefixBalancer, policy_for
from airouter.config import NodesConfig
from airouter.fairness.claim import Claim, claim_var
from airouter.fairness.scheduler import FairQueue

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
        saturation_waiting: int | None = None,
        saturation_kv: float | None = None,
        observer: NodeObserver = QUIET,
    ) -> None:
        self.backend = backend
        self.observer = observer
        self.nodes = [Node(backend, s) for s in specs]
        self.balance = balance
        self.max_concurrent = max_concurrent
        self.max_queue = max_queue
        # One queue for the backend: as many waiters as max_queue per node.
        self.queue_cap = max_queue * len(self.nodes)
        self.queue_timeout = queue_timeout
        # Per priority (high, normal, low): how long a request may wait for a slot.
        self.queue_timeouts = queue_timeouts or (queue_timeout,) * 3
        self.eject_after = eject_after
        self.cooldown = cooldown
        self.unhealthy_after = unhealthy_after
        self.healthy_after = healthy_after
        self.panic_threshold = panic_threshold
        # Hold requests in the router while a node's engine queues or fills its KV cache.
        self.saturation_waiting = saturation_waiting
        self.saturation_kv = saturation_kv
        self.saturation = saturation_waiting is not None or saturation_kv is not None
        # Some request may have to wait: a node limit or an engine's saturation.
        self.gated = bool(max_concurrent) or self.saturation
        # Requests of this process waiting for a slot of any node (fairness.scheduler); with a
        # shared store, only those held while every node they may use is saturated.
        self.waiters: FairQueue[Waiter] = FairQueue()
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
            saturation_waiting=cfg.saturation_waiting,
            saturation_kv=cfg.saturation_kv,
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
        return self._panics(sum(1 for n in self.nodes if n.available(now)))

    def _panics(self, up: int) -> bool:
        """With `up` nodes available, the pool is panicking."""
        return up < self.panic_threshold * len(self.nodes)

    def pick(self, exclude: Sequence[Node] = (), key: RouteKey | None = None) -> Node | None:
        now = time.monotonic()
        nodes = self.nodes
        if len(nodes) == 1:
            n = nodes[0]
            if n in exclude:
                return None
            return n if n.available(now) or self.panicking(now) else None
        up = [n for n in nodes if n.available(now)]
        candidates = nodes if self._panics(len(up)) else up
        if exclude:
            candidates = [n for n in candidates if n not in exclude]
        if not candidates:
            return None
        if self.gated:
            # A node with a free slot beats queueing behind a full one.
            candidates = [n for n in candidates if not self.full(n)] or candidates
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

    def full(self, node: Node) -> bool:
        """No request may start on `node` now: its slots are taken (as counted here) or its
        engine is saturated."""
        limit = self.max_concurrent
        return bool(limit and node.in_flight >= limit) or not node.room

    def take_free(self, node: Node) -> bool:
        """A slot on a node without a limit (the common case): counted here, at once."""
        if self.gated:
            return False
        node.in_flight += 1
        node.served += 1
        return True

    def granted(self, node: Node) -> None:
        node.in_flight += 1
        node.served += 1
        if node.room > 0:
            node.room -= 1

    async def acquire(self, node: Node, exclude: Sequence[Node] = ()) -> tuple[Node, str]:
        """Take a concurrency slot on `node`, else on another node the request may use (none
        of `exclude`), queueing (bounded, in the order of fairness.scheduler for the request's
        claim) for the first freed on any of them when all are full. Answers the node and the
        lease to give back to `release` ("" for a slot counted in this process only)."""
        store = self.slots
        if store is None or not self.max_concurrent:
            # Counted here. A free slot is one no waiter may use (each freed slot goes to one
            # that may): take it.
            if not self.full(node):
                self.granted(node)
                return node, ""
            nodes = self.choices(node, exclude)
            for n in nodes:
                if not self.full(n):
                    self.granted(n)
                    return n, ""
            return await wait_here(self, nodes, claim_var.get()), ""
        who = claim_var.get()
        nodes = self.choices(node, exclude)
        if self.saturation:
            nodes = [n for n in nodes if n.room] or await self._until_open(nodes, who)
        got = await take_shared(self, nodes, store, who)
        if got is not None:
            return got
        if not store.allow_on_failure:
            raise unchecked()
        # The store is away: counted here.
        for n in nodes:
            if not self.full(n):
                self.granted(n)
                return n, ""
        return await wait_here(self, nodes, who), ""

    async def _until_open(self, nodes: Sequence[Node], who: Claim) -> list[Node]:
        """Every node the request may use is saturated: wait in this process's queue until
        one is not; the nodes open then, the one that opened first."""
        first = await wait_here(self, nodes, who, open_only=True)
        return [first, *(n for n in nodes if n is not first and n.room)]

    def choices(self, node: Node, exclude: Sequence[Node] = ()) -> list[Node]:
        """The nodes a request that picked `node` may take a slot of: `node` first, then the
        others available (every one when panicking), none of `exclude`, least loaded first."""
        now = time.monotonic()
        panic = self.panicking(now)
        others = [n for n in self.nodes if n is not node and n not in exclude
                  and (panic or n.available(now))]
        if others:
            others.sort(key=lambda n: ((n.in_flight + 1) / n.weight, n.served))
        return [node, *others]

    def release(self, node: Node, lease: str = "") -> None:
        if lease and self.slots is not None:
            self.slots.give(node.key, lease)
        node.in_flight -= 1
        if self.waiters:
            self._hand_on(node)

    def _hand_on(self, node: Node) -> None:
        """`node` has room: to the first waiters that may use it, while it does."""
        waiters = self.waiters
        room = node.room
        while waiters and not self.full(node):
            w = waiters.pop(lambda w: node in w.nodes)
            if w is None:
                return
            if w.fut.done():
                continue
            if not w.open_only:
                self.granted(node)
            w.fut.set_result(node)
            if w.open_only and room > 0:  # it asks the store next: what the engine will take
                room -= 1
                if not room:
                    return

    def engine_read(self, node: Node, load: EngineLoad | None) -> None:
        """What `node`'s engine metrics said (None: unreadable): with saturation thresholds,
        requests are held here while the engine queues past `saturation_waiting` or its KV
        cache is fuller than `saturation_kv`; while it queues at all, only as many start
        before the next read as it has room for. Unreadable: no hold."""
        if not self.saturation:
            return
        room = -1
        if load is not None:
            kv = self.saturation_kv
            waiting = self.saturation_waiting
            if kv is not None and load.kv_usage is not None and load.kv_usage >= kv:
                room = 0
            elif waiting is not None and load.waiting > 0:
                room = max(0, waiting - int(load.waiting))
        node.room = room
        if room and self.waiters:
            self._hand_on(node)

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

"""Waiting for a slot when a backend's nodes are full: in this process's queue, or in a shared
store's. Either way one queue per backend, not per node: a waiter gets the first slot freed on
any node it may use, in fairness.scheduler's order (priority, then weighted fair share by
key), and the pool's observer hears how long each request waited and how it ended."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

from airouter.backends.node_slots import FULL, GRANTED, SHED, TIMEOUT, SlotStore, refusal
from airouter.fairness.claim import Claim

if TYPE_CHECKING:
    from airouter.backends.node import Node
    from airouter.backends.observer import NodeObserver
    from airouter.fairness.scheduler import FairQueue

class NodePool(Protocol):
    """What waiting needs of a backend's node pool (nodes.NodePool)."""

    backend: str
    observer: NodeObserver
    max_concurrent: int
    queue_cap: int  # waiters at most, for the whole backend
    queue_timeouts: tuple[float, float, float]  # per priority: high, normal, low
    waiters: FairQueue[Waiter]

    def granted(self, node: Node) -> None: ...

    def release(self, node: Node, lease: str = "") -> None: ...


LEFT, UNREACHABLE = -9, -8  # the request went away while it waited; the store is away
OUTCOMES = {GRANTED: "granted", FULL: "full", SHED: "shed", TIMEOUT: "timeout", LEFT: "left"}


class Waiter:
    """A request of this process waiting in its pool's queue. `fut` resolves with the node
    it got (a slot counted here, or with `open_only`, a node no longer held by its engine's
    saturation: its slot is then asked of the shared store) or SHED."""

    __slots__ = ("fut", "nodes", "open_only")

    def __init__(self, nodes: Sequence[Node], open_only: bool) -> None:
        self.fut: asyncio.Future[Node | int] = asyncio.get_running_loop().create_future()
        self.nodes = nodes  # the nodes it may use, its first choice first
        self.open_only = open_only


async def wait_here(pool: NodePool, nodes: Sequence[Node], who: Claim,
                    open_only: bool = False) -> Node:
    """A slot of one of `nodes` counted in this process alone (or with `open_only`, one of
    them open to new requests), in the pool's queue, up to the priority's queue timeout."""
    w = Waiter(nodes, open_only)
    ok, shed = pool.waiters.push(w, who.key, who.priority, who.weight, pool.queue_cap)
    if shed is not None:
        shed.fut.set_result(SHED)
    timeout = pool.queue_timeouts[who.priority]
    if not ok:
        _heard(pool, who, 0.0, FULL)
        raise refusal(pool.backend, FULL, timeout)
    observer = pool.observer
    observer.queue_length(pool.backend, who.priority, 1)
    first = nodes[0]
    first.waiting += 1
    t0 = time.monotonic()
    outcome = TIMEOUT
    fut = w.fut
    try:
        async with asyncio.timeout(timeout):
            got = await fut
        outcome = GRANTED if not isinstance(got, int) else got
    except BaseException as e:
        outcome = TIMEOUT if isinstance(e, TimeoutError) else LEFT
        late = fut.result() if fut.done() and not fut.cancelled() else None
        if late is not None and not isinstance(late, int):
            if not open_only:
                pool.release(late)  # handed a slot at the last moment: pass it on
        else:
            pool.waiters.remove(w)
        if outcome == TIMEOUT:
            raise refusal(pool.backend, TIMEOUT, timeout) from None
        raise
    finally:
        first.waiting -= 1
        observer.queue_length(pool.backend, who.priority, -1)
        if not (open_only and outcome == GRANTED):  # the store's wait is heard next
            _heard(pool, who, time.monotonic() - t0, outcome)
    if isinstance(got, int):
        raise refusal(pool.backend, got, timeout)
    return got  # the releaser handed its slot over: in_flight already counts it


async def take_shared(
    pool: NodePool, nodes: Sequence[Node], store: SlotStore, who: Claim
) -> tuple[Node, str] | None:
    """A slot of one of `nodes` (its first choice first) from the store shared with other
    workers or replicas: the node and its lease, or None when the store cannot be reached."""
    timeout = pool.queue_timeouts[who.priority]
    observer = pool.observer
    first = nodes[0]
    first.waiting += 1
    observer.queue_length(pool.backend, who.priority, 1)
    t0 = time.monotonic()
    outcome = LEFT
    try:
        got = await store.take_any(pool.backend, [n.key for n in nodes], pool.max_concurrent,
                                   pool.queue_cap, timeout, who)
        outcome = UNREACHABLE if got is None else got[0]
    finally:
        first.waiting -= 1
        observer.queue_length(pool.backend, who.priority, -1)
        if outcome != UNREACHABLE:
            _heard(pool, who, time.monotonic() - t0, outcome)
    if got is None:
        return None
    outcome, lease, index = got
    if outcome != GRANTED:
        raise refusal(pool.backend, outcome, timeout)
    node = nodes[index]
    pool.granted(node)
    return node, lease


def _heard(pool: NodePool, who: Claim, waited: float, outcome: int) -> None:
    who.waited(waited)
    pool.observer.queue_wait(
        pool.backend, who.key, who.priority, waited, OUTCOMES.get(outcome, "left")
    )

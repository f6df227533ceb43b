"""Waiting for a full node's slot: in this process's own queue, or in a shared store's. Either
way the order is fairness.scheduler's (priority, then weighted fair share by key), and the
pool's observer hears how long each request waited and how it ended."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

from airouter.backends.node_slots import FULL, GRANTED, SHED, TIMEOUT, SlotStore, refusal
from airouter.fairness.claim import Claim

if TYPE_CHECKING:
    from airouter.backends.node import Node
    from airouter.backends.nodes import NodePool

LEFT, UNREACHABLE = -9, -8  # the request went away while it waited; the store is away
OUTCOMES = {GRANTED: "granted", FULL: "full", SHED: "shed", TIMEOUT: "timeout", LEFT: "left"}


async def wait_here(pool: NodePool, node: Node, who: Claim) -> None:
    """A slot of `node` counted in this process alone: at once when one is free and nobody
    waits, else in the node's queue, up to the priority's queue timeout."""
    fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    ok, shed = node.waiters.push(fut, who.key, who.priority, who.weight, pool.max_queue)
    if shed is not None:
        shed.set_result(SHED)
    timeout = pool.queue_timeouts[who.priority]
    if not ok:
        _heard(pool, who, 0.0, FULL)
        raise refusal(pool.backend, FULL, timeout)
    observer = pool.observer
    observer.queue_length(pool.backend, who.priority, 1)
    t0 = time.monotonic()
    outcome = TIMEOUT
    try:
        async with asyncio.timeout(timeout):
            outcome = await fut
    except BaseException as e:
        outcome = TIMEOUT if isinstance(e, TimeoutError) else LEFT
        if fut.done() and not fut.cancelled() and fut.result() == GRANTED:
            pool.release(node)  # handed a slot at the last moment: pass it on
        else:
            node.waiters.remove(fut)
        if outcome == TIMEOUT:
            raise refusal(pool.backend, TIMEOUT, timeout) from None
        raise
    finally:
        observer.queue_length(pool.backend, who.priority, -1)
        _heard(pool, who, time.monotonic() - t0, outcome)
    if outcome != GRANTED:
        raise refusal(pool.backend, outcome, timeout)
    # The releaser handed its slot over: in_flight already counts it.


async def take_shared(pool: NodePool, node: Node, store: SlotStore, who: Claim) -> str | None:
    """A slot of `node` from the store shared with other workers or replicas: its lease, or
    None when the store cannot be reached."""
    timeout = pool.queue_timeouts[who.priority]
    observer = pool.observer
    node.waiting += 1
    observer.queue_length(pool.backend, who.priority, 1)
    t0 = time.monotonic()
    outcome = LEFT
    try:
        got = await store.take(node.key, pool.max_concurrent, pool.max_queue, timeout, who)
        outcome = UNREACHABLE if got is None else got[0]
    finally:
        node.waiting -= 1
        observer.queue_length(pool.backend, who.priority, -1)
        if outcome != UNREACHABLE:
            _heard(pool, who, time.monotonic() - t0, outcome)
    if got is None:
        return None
    outcome, lease = got
    if outcome != GRANTED:
        raise refusal(pool.backend, outcome, timeout)
    node.in_flight += 1
    node.served += 1
    return lease


def _heard(pool: NodePool, who: Claim, waited: float, outcome: int) -> None:
    who.waited(waited)
    pool.observer.queue_wait(
        pool.backend, who.key, who.priority, waited, OUTCOMES.get(outcome, "left")
    )

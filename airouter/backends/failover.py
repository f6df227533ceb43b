"""Failover across a backend's nodes: pick one, hold its slot, try another when an attempt
fails before anything reached the client, and hold each node to how its answer went."""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Awaitable, Callable, Sequence

from airouter.backends.base import Reply
from airouter.backends.node import Node
from airouter.backends.nodes import NodePool
from airouter.backends.prefix import RouteKey
from airouter.errors import RateLimited, RouterError, ServiceUnavailable

log = logging.getLogger("airouter.nodes")


async def with_failover(
    pool: NodePool,
    retries: int,
    attempt: Callable[[Node], Awaitable[Reply]],
    key: RouteKey | None = None,
    tried: list[Node] | None = None,
) -> Reply:
    """Run `attempt` on a node; on a retryable failure (nothing reached the client yet) try
    another node, at most `retries` more times. The node's slot is held until the reply closes.
    `key` is the request's prefix for a prefix-aware pool; a retry never goes back to a node
    already tried. `tried`: nodes not to pick (they served this request before), to which
    each node tried is added, the one that answers last."""
    if tried is None:
        tried = []
    last: RouterError | None = None
    # Every node known bad: tried anyway (panic), but a failure that another node might not
    # have had is answered as before, as no healthy node.
    none_up = not pool.any_available
    for _ in range(retries + 1):
        node = pool.pick(tried, key)
        if node is None:
            if log.isEnabledFor(logging.DEBUG):
                log.debug("backend %s: no node left to try (%d tried)", pool.backend, len(tried))
            break
        if log.isEnabledFor(logging.DEBUG):
            _picked(pool, node, tried)
        try:
            # Nothing to wait for on a node without a limit: no coroutine to run.
            if pool.take_free(node):
                lease = ""
            else:  # a slot of this node, or of another the request may use
                node, lease = await pool.acquire(node, tried)
        except RateLimited as e:  # the backend's one queue is full, or shed this request
            log.debug("backend %s: no room (%s)", pool.backend, e.code)
            last = e
            break
        try:
            reply = await attempt(node)
        except RouterError as e:
            pool.release(node, lease)
            if e.status >= 500 and e.status != 504:
                pool.failed(node, e.code or str(e.status))
            if log.isEnabledFor(logging.DEBUG):
                log.debug("backend %s: node %s failed before the answer: %d %s%s", pool.backend,
                          node.label, e.status, e.code or e.type,
                          ", trying another node" if e.retryable else "")
            if not e.retryable:
                raise
            tried.append(node)
            last = e
            continue
        except BaseException:
            pool.release(node, lease)
            raise
        pool.answering(node)
        tried.append(node)
        reply.on_close(functools.partial(_settle, reply, pool, node, lease))
        return reply
    if last is not None and not (none_up and last.retryable and last.status != 429):
        raise last
    raise ServiceUnavailable(
        f"No node of the backend '{pool.backend}' is available.",
        headers={"Retry-After": str(max(1, int(pool.cooldown)))},
        code="no_healthy_node",
    )


def _picked(pool: NodePool, node: Node, tried: Sequence[Node]) -> None:
    """The debug line for a node choice: what the policy saw."""
    why = "the only node" if len(pool.nodes) == 1 else pool.balance
    log.debug(
        "backend %s: node %s picked (%s; %d in flight, weight %g%s%s)", pool.backend,
        node.label, why, node.in_flight, node.weight,
        "; panic: every node is a candidate" if pool.panicking(time.monotonic()) else "",
        f"; after {', '.join(n.label for n in tried)}" if tried else "",
    )


def _settle(reply: Reply, pool: NodePool, node: Node, lease: str) -> None:
    """The answer is over: give the slot back and hold the node to how it went."""
    node.answering -= 1
    node.completed += 1
    pool.release(node, lease)
    fault = reply.fault
    if fault is None:
        pool.succeeded(node)
    elif fault.status >= 500 and fault.status != 504:
        # A backend failure mid-answer counts toward ejection as one before it does.
        pool.failed(node, fault.code or str(fault.status))

"""The order in which requests waiting for a full backend get its nodes' slots: a pure
data structure (no I/O, no clock, no event loop) used by every place that queues: a pool
counting in its own process, the main process's table for its workers, and (the same rules in
Lua) Redis.

Rules, in this order:
- Priority: a waiting request of a higher priority (HIGH < NORMAL < LOW) goes first.
- A waiter may be able to use only some of the nodes (a retry never goes back to a node it
  tried): a freed slot goes to the first waiter, in this order, that may use its node.
- Weighted fair share within a priority: start-time fair queueing. Each key has a finish
  tag; a request of key k arriving when the priority's virtual time is V is tagged
  start = max(V, finish[k]), and finish[k] = start + 1 / weight[k]. The request with the
  smallest start goes next (arrival order breaks ties) and V becomes its start. Two keys that
  both keep requests waiting are served in proportion to their weights; a key that sent
  nothing for a while starts at V, level with the others' next request: no credit beyond one
  round. When no request of a priority waits, its tags start again from zero.
- Shedding: when `max_queue` requests already wait, an arrival of a higher priority than the
  lowest waiting one takes the place of the newest waiter of that lowest priority (who is told
  so: a 429); any other arrival is refused.
- A waiter that leaves (timed out, cancelled, its client gone) frees its place at once, and its
  key's finish tag goes back if it was the key's last tag.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from typing import Generic, TypeVar

HIGH, NORMAL, LOW = 0, 1, 2
PRIORITIES = {"high": HIGH, "normal": NORMAL, "low": LOW}
NAMES = ("high", "normal", "low")

T = TypeVar("T")


class _Entry(Generic[T]):
    __slots__ = ("item", "key", "priority", "start", "finish", "seq")

    def __init__(
        self, item: T, key: str, priority: int, start: float, finish: float, seq: int
    ) -> None:
        self.item = item
        self.key = key
        self.priority = priority
        self.start = start
        self.finish = finish
        self.seq = seq


class _Class(Generic[T]):
    """The waiters of one priority."""

    __slots__ = ("heap", "live", "vt", "finish")

    def __init__(self) -> None:
        self.heap: list[tuple[float, int, _Entry[T]]] = []  # (start, seq): entries left lazily
        self.live: dict[int, _Entry[T]] = {}  # seq -> entry, in arrival order
        self.vt = 0.0
        self.finish: dict[str, float] = {}

    def reset_if_empty(self) -> None:
        if not self.live:
            self.heap.clear()
            self.vt = 0.0
            self.finish.clear()


class FairQueue(Generic[T]):
    """Waiters for a backend's nodes. `T`: what the caller identifies a waiter by (hashable,
    unique)."""

    __slots__ = ("_classes", "_items", "_seq")

    def __init__(self) -> None:
        self._classes: tuple[_Class[T], _Class[T], _Class[T]] = (_Class(), _Class(), _Class())
        self._items: dict[T, _Entry[T]] = {}
        self._seq = 0

    def __len__(self) -> int:
        return len(self._items)

    def __bool__(self) -> bool:
        return bool(self._items)

    def __contains__(self, item: T) -> bool:
        return item in self._items

    def waiting(self, priority: int) -> int:
        return len(self._classes[priority].live)

    def push(
        self, item: T, key: str, priority: int, weight: float, max_queue: int
    ) -> tuple[bool, T | None]:
        """Queue `item`: (True, None), (True, shed) where `shed` lost its place to it, or
        (False, None): the queue is full of waiters of its priority or higher."""
        shed: T | None = None
        if len(self._items) >= max_queue:
            if max_queue <= 0:
                return False, None
            lowest = self.lowest()
            if lowest is None or priority >= lowest or len(self._items) > max_queue:
                return False, None
            victim = self._classes[lowest].live[next(reversed(self._classes[lowest].live))]
            shed = victim.item
            self.remove(shed)
        c = self._classes[priority]
        start = c.finish.get(key, 0.0)
        if start < c.vt:
            start = c.vt
        finish = start + 1.0 / weight
        c.finish[key] = finish
        self._seq += 1
        e = _Entry(item, key, priority, start, finish, self._seq)
        c.live[e.seq] = e
        self._items[item] = e
        heapq.heappush(c.heap, (start, e.seq, e))
        return True, shed

    def lowest(self) -> int | None:
        """The lowest priority that has a waiter."""
        for p in (LOW, NORMAL, HIGH):
            if self._classes[p].live:
                return p
        return None

    def peek(self) -> T | None:
        """The waiter `pop` would answer, left in place."""
        for c in self._classes:
            heap = c.heap
            while heap:
                e = heap[0][2]
                if e.seq in c.live:
                    return e.item
                heapq.heappop(heap)
        return None

    def pop(self, accept: Callable[[T], bool] | None = None) -> T | None:
        """The next waiter to get a slot (out of the queue), or None when none waits.
        `accept`: only a waiter it answers True for (a slot of a node some waiters may not
        use); those passed over keep their places."""
        for c in self._classes:
            heap, live = c.heap, c.live
            passed: list[tuple[float, int, _Entry[T]]] = []
            got = None
            while heap:
                top = heapq.heappop(heap)
                if top[1] not in live:
                    continue  # it left
                if accept is not None and not accept(top[2].item):
                    passed.append(top)
                    continue
                got = top
                break
            for top in passed:
                heapq.heappush(heap, top)
            if got is None:
                continue
            start, seq, e = got
            del live[seq]
            del self._items[e.item]
            if start > c.vt:
                c.vt = start
            c.reset_if_empty()
            return e.item
        return None

    def remove(self, item: T) -> bool:
        """`item` leaves the queue (its place is free at once); False if it was not there."""
        e = self._items.pop(item, None)
        if e is None:
            return False
        c = self._classes[e.priority]
        del c.live[e.seq]
        if c.finish.get(e.key) == e.finish:
            c.finish[e.key] = e.start  # its key's last tag: the round it took comes back
        if not c.live:
            c.reset_if_empty()
        elif len(c.heap) > 2 * len(c.live) + 32:  # too many left: rebuild without them
            c.heap = [(s, q, x) for s, q, x in c.heap if q in c.live]
            heapq.heapify(c.heap)
        return True

    def items(self) -> list[T]:
        """Every waiter, in no particular order."""
        return list(self._items)


def priority_name(priority: int) -> str:
    return NAMES[priority]

"""An approximate index of the prompt prefixes each node of a backend holds in its KV cache:
chained hashes of fixed blocks of the text a node sees, a per-node LRU, no shared state."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import repeat
from operator import itemgetter

import xxhash

# xxh3 over 256-byte blocks measured ~3x cheaper than blake2b and, unlike the builtin `hash`,
# is not salted per process: every worker and replica computes the same keys.
_xxh = xxhash.xxh3_64_intdigest
_MASK64 = (1 << 64) - 1


def block_hashes(text: bytes, block: int, max_blocks: int, seed: int = 0, start: int = 0
                 ) -> list[int]:
    """Chained hashes of the whole `block`-byte blocks at the start of `text` (at most
    `max_blocks`): hash i covers blocks 0..i, so equal hashes mean equal prefixes. A text
    shorter than one block has none; a partial last block is left out, as engines cache
    only full blocks. Hashing starts at offset `start`."""
    end = start + min((len(text) - start) // block, max_blocks) * block
    h = seed
    return [h := _xxh(text[s : s + block], h) for s in range(start, end, block)]


def text_seed(text: str) -> int:
    """A seed from a string (the backend model, a session id): the same in every process."""
    return _xxh(text.encode())


def rendezvous(key: int, names: Sequence[bytes], weights: Sequence[float]) -> int:
    """Weighted rendezvous (highest random weight) hashing: the position in `names` of the
    node that owns `key`. Deterministic across processes; removing a node moves only its keys."""
    return rendezvous_two(key, names, weights)[0]


def rendezvous_two(key: int, names: Sequence[bytes], weights: Sequence[float]
                   ) -> tuple[int, int]:
    """The two highest-scoring positions for `key` (the second is -1 with one name)."""
    best = second = -1
    best_score = second_score = -math.inf
    for i, name in enumerate(names):
        u = (_xxh(name, key) + 1) / (_MASK64 + 2)  # in (0, 1)
        score = -weights[i] / math.log(u)
        if score > best_score:
            second, second_score = best, best_score
            best, best_score = i, score
        elif score > second_score:
            second, second_score = i, score
    return best, second


@dataclass(slots=True)
class RouteKey:
    """What the balancer knows of one request: its prefix's block hashes and the key of its
    home node (the session's, else the first blocks'; 0 = none). The pick writes back where
    the request went and how many of its blocks the index expected that node to hold."""

    hashes: list[int]
    home: int = 0
    session: bool = False
    pos: int = -1
    predicted: int = 0


class PrefixIndex:
    """Which node holds which prefix block, per node an LRU of at most `capacity` blocks.

    One dict maps a block hash to a bitmask of the nodes that hold it (cheap to intersect
    along a chain); per node, a dict maps its blocks to the tick of their last use. Eviction
    runs in batches once a node holds an eighth more than its capacity: amortised, it costs
    less per request than moving every block in an ordered dict."""

    __slots__ = ("table", "ticks", "capacity", "limit", "tick", "nodes")

    def __init__(self, nodes: int, capacity: int) -> None:
        self.nodes = nodes
        self.table: dict[int, int] = {}
        self.ticks: list[dict[int, int]] = [{} for _ in range(nodes)]
        self.limit = [max(1, capacity)] * nodes  # what the node is configured or measured to hold
        self.capacity = list(self.limit)  # what the index believes now (feedback lowers it)
        self.tick = 0

    def match(self, hashes: Sequence[int]) -> list[int]:
        """Per node, how many leading blocks of `hashes` it holds."""
        depth = [0] * self.nodes
        alive = (1 << self.nodes) - 1
        get = self.table.get
        i = 0
        for i, h in enumerate(hashes):  # noqa: B007 (i is read after the loop)
            m = alive & get(h, 0)
            if m != alive:
                gone = alive ^ m
                j = 0
                while gone:
                    if gone & 1:
                        depth[j] = i
                    gone >>= 1
                    j += 1
                alive = m
                if not m:
                    return depth
        j = 0
        while alive:
            if alive & 1:
                depth[j] = len(hashes)
            alive >>= 1
            j += 1
        return depth

    def longest(self, hashes: Sequence[int], among: int) -> tuple[int, int]:
        """The longest leading run of `hashes` that a node of the bitmask `among` holds, and
        the bitmask of the nodes holding it: a binary search, ~log2(blocks) look-ups, as the
        nodes holding block i+1 of a chain are among those holding block i."""
        get = self.table.get
        lo, hi, found = 0, len(hashes), 0
        while lo < hi:
            mid = (lo + hi + 1) >> 1
            m = get(hashes[mid - 1], 0) & among
            if m:
                lo, found = mid, m
            else:
                hi = mid - 1
        return lo, found

    def insert(self, node: int, hashes: Sequence[int], known: int = 0) -> None:
        """`node` now holds every block of `hashes`; the first `known` it held already."""
        if not hashes:
            return
        self.tick += 1
        ticks = self.ticks[node]
        ticks.update(zip(hashes, repeat(self.tick)))  # no intermediate dict
        bit = 1 << node
        table = self.table
        get = table.get
        for h in hashes[known:]:
            table[h] = get(h, 0) | bit
        cap = self.capacity[node]
        if len(ticks) > cap + (cap >> 3):
            self._trim(node, cap)

    def _trim(self, node: int, cap: int) -> None:
        ticks = self.ticks[node]
        old = sorted(ticks.items(), key=itemgetter(1))[: len(ticks) - cap]
        keep = ~(1 << node)
        table = self.table
        for h, _ in old:
            del ticks[h]
            m = table.get(h, 0) & keep
            if m:
                table[h] = m
            else:
                table.pop(h, None)

    def drop(self, node: int) -> None:
        """Forget everything `node` held (ejected, down, restarted)."""
        keep = ~(1 << node)
        table = self.table
        for h in self.ticks[node]:
            m = table.get(h, 0) & keep
            if m:
                table[h] = m
            else:
                table.pop(h, None)
        self.ticks[node] = {}
        self.capacity[node] = self.limit[node]

    def resize(self, node: int, blocks: int) -> None:
        """The node's cache holds about `blocks` of our blocks (from its KV metrics)."""
        self.limit[node] = max(1, blocks)
        self.capacity[node] = min(self.capacity[node], self.limit[node]) or 1
        if len(self.ticks[node]) > self.capacity[node]:
            self._trim(node, self.capacity[node])

    def contradicted(self, node: int) -> None:
        """The engine reported no cache hit where the index predicted one: it holds less than
        believed. Shrink what the index keeps for it (at most down to an eighth)."""
        cap = max(self.limit[node] >> 3, 1, self.capacity[node] * 7 // 8)
        self.capacity[node] = cap
        if len(self.ticks[node]) > cap:
            self._trim(node, cap)

    def confirmed(self, node: int) -> None:
        """A predicted hit the engine confirmed: win back some of what contradictions took."""
        limit = self.limit[node]
        cap = self.capacity[node]
        if cap < limit:
            self.capacity[node] = min(limit, cap + max(1, limit >> 6))

    def size(self, node: int) -> int:
        return len(self.ticks[node])

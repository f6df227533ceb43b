"""The `prefix` and `prefix_load` balancers: send a request to the node most likely to hold its
prompt's prefix in its KV cache, a cold prefix to a home node every process agrees on, and
(prefix_load) pass over a node loaded well above the others."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from airouter.backends.engine_metrics import EngineLoad
from airouter.backends.prefix import (
    PrefixIndex,
    RouteKey,
    block_hashes,
    rendezvous_two,
    text_seed,
)

if TYPE_CHECKING:
    from airouter.backends.base import Stats
    from airouter.backends.node import Node
    from airouter.backends.nodes import NodePool
    from airouter.config import NodesConfig

# Prompt text kept per node when neither the config nor the node's KV metrics say: ~4 MB is
# ~1M tokens, about one large GPU's KV cache (8,192 blocks of 512 bytes).
DEFAULT_CACHE_BYTES = 4 << 20
# Bytes of prompt text per token, to turn an engine's KV capacity in tokens into blocks.
BYTES_PER_TOKEN = 4


class PrefixBalancer:
    """Per backend and process: the prefix index, the engines' scraped load, the choice.

    Runs on the event loop only. Nothing it does is logged per request."""

    def __init__(self, nodes: Sequence[Node], cfg: NodesConfig, *, load_aware: bool) -> None:
        self.nodes = list(nodes)
        self.load_aware = load_aware
        self._pos = {id(n): i for i, n in enumerate(self.nodes)}
        self._all = list(range(len(self.nodes)))
        self._all_mask = (1 << len(self.nodes)) - 1
        self._seeds: dict[str, int] = {}
        self._names = [n.url.encode() for n in self.nodes]
        self._by_url = {n.url: i for i, n in enumerate(self.nodes)}
        # Tells the other workers where a prefix went (prefix_share); None: one worker.
        self.shared: Callable[[str, list[int]], None] | None = None
        self.block = cfg.prefix.block_bytes
        self.max_blocks = max(1, cfg.prefix.max_bytes // cfg.prefix.block_bytes)
        self.min_match = cfg.prefix.min_match
        self.home_blocks = cfg.prefix.home_blocks
        self.abs_threshold = cfg.prefix.abs_threshold
        self.rel_threshold = cfg.prefix.rel_threshold
        # How much more load than the least loaded node a cold prefix's home may have.
        self.cold_slack = cfg.prefix.cold_slack
        self.sized = cfg.prefix.cache_blocks > 0
        blocks = cfg.prefix.cache_blocks or DEFAULT_CACHE_BYTES // self.block
        self.index = PrefixIndex(len(self.nodes), blocks)
        self.engine: list[EngineLoad | None] = [None] * len(self.nodes)
        self._mine_at = [0] * len(self.nodes)  # our in-flight count when each was read
        # Scraped numbers older than this are not trusted (a scraper that stopped answering).
        self.fresh_for = max(3 * cfg.metrics_interval, 2.0)

    def key(self, text: bytes, model: str, session: str | None = None, start: int = 0
            ) -> RouteKey:
        """The route key of a prompt rendered as the node will see it (from offset `start`).
        `model` seeds the hashes (two models never share a cache); `session`
        (prompt_cache_key, user) names the home node instead of the first blocks."""
        seed = self._seeds.get(model)
        if seed is None:  # the backend's model names: a handful, from the config
            seed = self._seeds[model] = text_seed(model)
        hashes = block_hashes(text, self.block, self.max_blocks, seed, start)
        if session:
            return RouteKey(hashes, text_seed(session) ^ seed or 1, True)
        home = hashes[min(len(hashes), self.home_blocks) - 1] if hashes else 0
        return RouteKey(hashes, home)

    def load(self, node: Node, now: float) -> float:
        """In flight here, plus what the engine ran or queued beyond our own requests at its
        last fresh scrape (other workers' and replicas'), relative to the node's weight. Our
        own count stays exact between scrapes: a stale total would herd requests."""
        return self.loads([node], [self._pos[id(node)]], now)[0]

    def loads(self, nodes: Sequence[Node], pos: Sequence[int], now: float) -> list[float]:
        """load() of each of `nodes` (at positions `pos`), in one pass."""
        engine = self.engine
        mine_at = self._mine_at
        stale = now - self.fresh_for
        out = []
        for n, p in zip(nodes, pos, strict=True):
            mine = float(n.in_flight)
            e = engine[p]
            if e is not None and e.at > stale and e.known:
                mine += max(0.0, e.running + e.waiting - mine_at[p])
            out.append(mine / n.weight)
        return out

    def choose(self, candidates: list[Node], key: RouteKey) -> Node:
        hashes = key.hashes
        if len(candidates) == len(self.nodes):  # all of them, in order: the usual case
            pos, among = self._all, self._all_mask
        else:
            pos = [self._pos[id(n)] for n in candidates]
            among = 0
            for p in pos:
                among |= 1 << p
        best, holders = self.index.longest(hashes, among) if hashes else (0, 0)
        if self.load_aware:
            loads = self.loads(candidates, pos, time.monotonic())
        else:
            loads = [n.in_flight / n.weight for n in candidates]
        ks = range(len(candidates))
        # Nodes not holding the longest match count as holding none: approximate, and cheap.
        depth = [best if holders >> p & 1 else 0 for p in pos]
        if best and best >= self.min_match * len(hashes):
            c = min((k for k in ks if depth[k]), key=loads.__getitem__)
        elif key.home:
            near: list[int] = list(ks)
            if self.load_aware and not key.session:
                # A cold prefix: its home among the least-loaded nodes. Processes agree while
                # load is even, and prompts that never recur are balanced as least_inflight
                # would (a looser choice, such as the less loaded of two homes, measured 40%
                # worse p90 TTFT on such a trace).
                floor = min(loads) + self.cold_slack
                near = [k for k in ks if loads[k] <= floor]
            w = [candidates[k].weight for k in near]
            c = near[rendezvous_two(key.home, [self._names[pos[k]] for k in near], w)[0]]
        else:
            c = min(ks, key=lambda k: (loads[k], candidates[k].served))
        if self.load_aware and len(candidates) > 1:
            least = min(loads)
            if loads[c] - least > self.abs_threshold and loads[c] > self.rel_threshold * least:
                # SGLang's escape hatch: this node is a hot spot. The least loaded one (the
                # best match among ties) takes the request, and from now on the prefix too.
                c = min(ks, key=lambda k: (loads[k], -depth[k]))
        p = pos[c]
        known = depth[c] if depth[c] or not best else self.index.longest(hashes, 1 << p)[0]
        key.pos = p
        key.predicted = known
        self.index.insert(p, hashes, known)
        if self.shared is not None and hashes:
            self.shared(self.nodes[p].url, hashes)
        return candidates[c]

    def learn(self, url: str, hashes: list[int]) -> None:
        """Another worker sent a request with this prefix to the node at `url`."""
        p = self._by_url.get(url)
        if p is not None and hashes:
            self.index.insert(p, hashes, self.index.longest(hashes, 1 << p)[0])

    def feedback(self, key: RouteKey, cached_tokens: int) -> tuple[bool, bool]:
        """The engine's count of cached prompt tokens for a request routed with `key`: answers
        (predicted a hit, the engine confirmed one). A predicted hit the engine denies lowers
        what the index believes that node holds."""
        predicted = key.predicted > 0
        confirmed = cached_tokens > 0
        if predicted and not confirmed:
            self.index.contradicted(key.pos)
        elif predicted:
            self.index.confirmed(key.pos)
        return predicted, confirmed

    def forget(self, node: Node) -> None:
        """The node was ejected, marked down or restarted: its cache is gone or unknown."""
        self.index.drop(self._pos[id(node)])

    def engine_read(self, node: Node, load: EngineLoad | None) -> None:
        """A scrape's result (None: unreadable). Sizes the node's index from its KV capacity
        unless the config fixed it; a restarted engine (its counters went back) is forgotten."""
        p = self._pos[id(node)]
        old = self.engine[p]
        self.engine[p] = load
        self._mine_at[p] = node.in_flight
        if load is None:
            return
        if old is not None and load.restarted(old):
            self.index.drop(p)
        if not self.sized and load.kv_tokens:
            self.index.resize(p, load.kv_tokens * BYTES_PER_TOKEN // self.block)

    def detail(self, node: Node) -> dict[str, object]:
        """What /health shows of the node: the index's size and what its engine reported."""
        p = self._pos[id(node)]
        out: dict[str, object] = {"prefix_blocks": self.index.size(p)}
        e = self.engine[p]
        if e is not None:
            out["engine"] = e.as_dict()
        return out


# The usual first (a chat's messages) is looked for first: the others only before it.
_PROMPT_MEMBERS = (b'"messages":', b'"tools":', b'"prompt":')


def prompt_start(data: bytes) -> int:
    """Where the prompt begins in a request's JSON as the router sends it: the first of its
    tools, messages or prompt members. Hashing from there skips parameters a client puts
    first (model, temperature...), which the engine's prompt does not contain, and costs no
    second encoding of the body. (Inside a JSON string a quote is escaped, so these byte
    strings only ever match a member name.) Only the first 4 KB are searched: parameters
    are short, and a prompt member further on is keyed from the start."""
    end = 4096
    for m in _PROMPT_MEMBERS:
        i = data.find(m, 0, end)
        if i >= 0:
            end = i  # a member found further on could not be the first
    return end if end < 4096 else 0


def session_of(body: Mapping[str, Any]) -> str | None:
    """OpenAI's `prompt_cache_key`, else `user`: a client's own session affinity."""
    for name in ("prompt_cache_key", "user"):
        v = body.get(name)
        if isinstance(v, str) and v:
            return v[:256]
    return None


def settle(pool: NodePool, key: RouteKey, stats: Stats) -> None:
    """The answer is over: if the engine said how much of the prompt it had cached (usage's
    cached_tokens, TensorRT-LLM's reused blocks), check the prefix index's prediction."""
    cached = stats.cached_tokens
    if cached is None or key.pos < 0 or pool.prefix is None:
        return
    predicted, confirmed = pool.prefix.feedback(key, cached)
    pool.observer.prefix_cache(pool.backend, pool.nodes[key.pos].label, predicted, confirmed)


def policy_for(nodes: Sequence[Node], cfg: NodesConfig) -> PrefixBalancer | None:
    if cfg.balance == "prefix":
        return PrefixBalancer(nodes, cfg, load_aware=False)
    if cfg.balance == "prefix_load":
        return PrefixBalancer(nodes, cfg, load_aware=True)
    return None


__all__ = ["PrefixBalancer", "RouteKey", "block_hashes", "policy_for"]

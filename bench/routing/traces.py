"""Seeded request traces for the routing bench: text generated from ids, sized in tokens
(4 characters each) against the simulated nodes' cache (bench/routing/sim_node.py)."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

MAX_TOKENS = 16


@dataclass
class Request:
    at: float  # seconds from the start (open loop)
    messages: list[dict[str, Any]]
    shared_tokens: int = 0  # tokens of a prefix another request of the trace also has
    group: int = -1


@dataclass
class Conversation:
    """A closed loop: each turn waits for the previous answer, then thinks."""

    start: float
    system: str
    questions: list[str]
    think: list[float]


@dataclass
class Trace:
    name: str
    requests: list[Request] = field(default_factory=list)
    conversations: list[Conversation] = field(default_factory=list)
    attainable_tokens: int = 0  # cached tokens a perfect router over big enough caches gets


def _words(rng: random.Random, chars: int, tag: str) -> str:
    out, n = [], 0
    while n < chars:
        w = f"{tag}{rng.randrange(1 << 30):x} "
        out.append(w)
        n += len(w)
    return "".join(out)[:chars]


def _poisson(rng: random.Random, rate: float, seconds: float) -> list[float]:
    t, out = 0.0, []
    while True:
        t += rng.expovariate(rate)
        if t >= seconds:
            return out
        out.append(t)


def shared_prefix(seed: int, rate: float, seconds: float, groups: int = 16,
                  prefix_chars: int = 8000, question_chars: int = 400,
                  zipf: float = 0.0) -> Trace:
    """Groups of users sharing a long system prompt (llm-d's B2B shape), each request its
    own question. zipf > 0: group popularity follows Zipf (one hot prefix)."""
    rng = random.Random(seed)
    prefixes = [_words(rng, prefix_chars, f"g{g}-") for g in range(groups)]
    weights = [1 / (g + 1) ** zipf for g in range(groups)] if zipf else [1.0] * groups
    trace = Trace("hot_prefix" if zipf else "shared_prefix")
    seen: set[int] = set()
    for at in _poisson(rng, rate, seconds):
        g = rng.choices(range(groups), weights)[0]
        msgs = [{"role": "system", "content": prefixes[g]},
                {"role": "user", "content": _words(rng, question_chars, "q")}]
        trace.requests.append(Request(at, msgs, prefix_chars // 4, g))
        if g in seen:
            trace.attainable_tokens += prefix_chars // 4
        seen.add(g)
    return trace


def no_sharing(seed: int, rate: float, seconds: float, chars: int = 8000) -> Trace:
    rng = random.Random(seed)
    trace = Trace("no_sharing")
    for at in _poisson(rng, rate, seconds):
        trace.requests.append(Request(at, [{"role": "user", "content": _words(rng, chars, "u")}]))
    return trace


def multi_turn(seed: int, conversations: int, seconds: float, turns: int = 6,
               system_chars: int = 2000, question_chars: int = 400,
               think_s: float = 1.0) -> Trace:
    """Conversations whose history grows each turn (the answer is appended)."""
    rng = random.Random(seed)
    trace = Trace("multi_turn")
    for c in range(conversations):
        trace.conversations.append(Conversation(
            start=rng.uniform(0, min(seconds / 3, 3.0)),
            system=_words(rng, system_chars, f"s{c}-"),
            questions=[_words(rng, question_chars, f"c{c}t{t}-") for t in range(turns)],
            think=[rng.expovariate(1 / think_s) for _ in range(turns)],
        ))
    return trace

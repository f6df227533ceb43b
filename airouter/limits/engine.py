"""Limit counters: what every store does (one atomic admission, charges, lease release), and
the in-memory store that the main process shares with its workers when there is no Redis.

Three kinds of counter, each named by a storage key:
- WINDOW: a sliding window of the last 60 seconds in one-second buckets (requests or tokens
  per minute). A use counts for exactly 60 s after the second it happened in, so "30 per
  minute" means no more than 30 in any 60 s span, not a burst of 30 at each refill.
- LEASES: requests in flight, each a lease that expires unless renewed (a crashed worker's
  leases free themselves).
- TOTAL: a plain sum (a token budget; the key names the period, so a new period is a new key).
"""

from __future__ import annotations

import itertools
import math
import time
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

WINDOW, LEASES, TOTAL = "w", "c", "b"
WINDOW_SECONDS = 60
LEASE_TTL = 30.0  # seconds; renewed every LEASE_TTL / 3 while the request runs
_NEVER = 1 << 62  # the oldest second of an empty window
PROMPT = -1  # a Spec's check amount that stands for the request's prompt tokens
_spec_ids = itertools.count(1)


Item = tuple[str, str, int, int]  # kind, storage key, amount, ttl


class Check(NamedTuple):
    """A tuple, so a store packs it as it is (msgpack array) and building one is cheap."""

    kind: str
    key: str
    limit: int
    amount: int
    ttl: int = 0  # TOTAL: seconds the key outlives its period; 0 = forever


@dataclass(slots=True)
class Outcome:
    """`failed` is the index of the first check that did not fit (-1: admitted, applied).
    `wait` is seconds until it would fit (math.inf: never at this size). Per check: `used`
    (after the admission when admitted) and `reset` (seconds until the oldest use in a window
    leaves it: when its remaining count next goes up)."""

    failed: int
    wait: float
    used: list[int]
    reset: list[float]


class Spec:
    """What every request of one (key, model) pair checks, built once: checks whose amount
    PROMPT stands for the prompt's tokens (those are also the ones that count completion
    tokens), and the lease sets a request holds. A store may keep or send it once and name
    it by `id` in each request's operation."""

    __slots__ = ("id", "checks", "charges", "lease_keys", "flat")

    def __init__(self, checks: list[Check]) -> None:
        self.id = next(_spec_ids)
        self.checks = checks
        self.charges = tuple(c for c in checks if c.amount == PROMPT)
        self.lease_keys = tuple(c.key for c in checks if c.kind == LEASES)
        self.flat: list[Any] = [x for c in checks for x in c]  # one array, as a script reads it

    def fill(self, prompt: int) -> list[Check]:
        """The checks of one request."""
        return [c._replace(amount=prompt) if c.amount == PROMPT else c for c in self.checks]

    def items(self, tokens: int) -> list[Item]:
        """Charges of `tokens` to every check that counts tokens."""
        return [(c.kind, c.key, tokens, c.ttl) for c in self.charges]


class Engine(ABC):
    """A counter store. Admission checks and applies every check in one atomic step."""

    # Whether requests in flight are leases named by the caller and renewed one by one (else
    # the store counts them itself and `renew` takes no arguments it needs).
    uses_leases = True

    @abstractmethod
    def admit_spec(self, spec: Spec, prompt: int, lease: str) -> Awaitable[Outcome | None]:
        """`admit` of one request of `spec` whose prompt has `prompt` tokens (`spec.fill`)."""

    def charge_spec(
        self, spec: Spec, tokens: int, lease: str, release: bool
    ) -> Awaitable[None] | None:
        """`post` for one request of `spec`: `tokens` more to every check that counts tokens,
        and, with `release`, its leases freed."""
        return self.post(
            spec.items(tokens) if tokens else [], list(spec.lease_keys) if release else None, lease
        )

    async def start(self) -> None:
        """Connect; called in the event loop that will use the engine."""

    async def aclose(self) -> None:
        """Disconnect."""

    @abstractmethod
    def admit(
        self, checks: list[Check], lease: str, dry: bool = False
    ) -> Awaitable[Outcome | None]:
        """None: the store is unreachable (the caller applies its failure policy)."""

    @abstractmethod
    async def charge(
        self, items: list[Item], release: list[str] | None = None, lease: str = ""
    ) -> None:
        """Add (kind, key, amount, ttl) without checking (WINDOW now, TOTAL at once), and free
        `lease` in the `release` lease sets, in one round trip."""

    def post(
        self, items: list[Item], release: list[str] | None = None, lease: str = ""
    ) -> Awaitable[None] | None:
        """`charge`, without waiting where the store can queue it in order (None); else the
        awaitable the caller must wait for."""
        return self.charge(items, release, lease)

    @abstractmethod
    async def release(self, keys: list[str], lease: str) -> None: ...

    @abstractmethod
    def renew(self, keys: list[str], leases: list[str]) -> Awaitable[Any]:
        """Extend leases (keys[i] holds leases[i]) by LEASE_TTL from now."""


class Window:
    """One-second buckets in time order (dicts keep insertion order), their sum and the oldest
    bucket's second, so a check costs no scan: expired buckets leave from the front."""

    __slots__ = ("buckets", "total", "oldest")

    def __init__(self) -> None:
        self.buckets: dict[int, int] = {}
        self.total = 0
        self.oldest = _NEVER  # no bucket

    def expire(self, sec: int) -> None:
        cutoff = sec - WINDOW_SECONDS
        if self.oldest > cutoff:
            return
        b = self.buckets
        while b:
            s = next(iter(b))
            if s > cutoff:
                self.oldest = s
                return
            self.total -= b.pop(s)
        self.oldest = _NEVER

    def add(self, sec: int, amount: int) -> None:
        b = self.buckets
        if b:
            b[sec] = b.get(sec, 0) + amount
        else:
            b[sec] = amount
            self.oldest = sec
        self.total += amount


class Counters:
    """The in-memory store, synchronous: the same semantics as the Redis scripts."""

    def __init__(self, clock: object = time.time) -> None:
        self._clock = clock
        self.windows: dict[str, Window] = {}
        self.leases: dict[str, dict[str, float]] = {}
        self._soonest: dict[str, float] = {}  # per lease set: no lease in it expires before
        self.totals: dict[str, int] = {}
        self._expiry: dict[str, float] = {}

    def now(self) -> float:
        return self._clock()  # type: ignore[operator, no-any-return]

    def _window(self, key: str, sec: int) -> Window:
        w = self.windows.get(key)
        if w is None:
            w = self.windows[key] = Window()
        else:
            w.expire(sec)
        return w

    def _leases(self, key: str, now: float) -> dict[str, float]:
        held = self.leases.get(key)
        if held is None:
            held = self.leases[key] = {}
        elif self._soonest.get(key, 0.0) <= now:  # a scan only when some lease may be over
            for lease in [lease for lease, exp in held.items() if exp <= now]:
                del held[lease]
            self._soonest[key] = min(held.values(), default=math.inf)
        return held

    def _total(self, key: str, now: float) -> int:
        exp = self._expiry.get(key)
        if exp is not None and exp <= now:
            self.totals.pop(key, None)
            del self._expiry[key]
        return self.totals.get(key, 0)

    def admit(
        self, checks: list[Check], lease: str, dry: bool = False, prompt: int = 0
    ) -> Outcome:
        """`prompt`: the amount of a Spec's PROMPT checks (a Spec's checks run as they are)."""
        now = self.now()
        sec = int(now)
        used: list[int] = []
        reset: list[float] = []
        failed, wait = -1, 0.0
        windows = self.windows
        cutoff = sec - WINDOW_SECONDS
        for i, (kind, key, limit, amount, _) in enumerate(checks):
            if amount == PROMPT:
                amount = prompt
            if kind == WINDOW:
                w = windows.get(key)
                if w is None:
                    w = windows[key] = Window()
                elif w.oldest <= cutoff:
                    w.expire(sec)
                u = w.total
                reset.append(w.oldest + WINDOW_SECONDS - now if w.buckets else 0.0)
                if failed < 0 and u + amount > limit:
                    failed, wait = i, math.inf
                    need, freed = u + amount - limit, 0
                    for s, v in w.buckets.items():
                        freed += v
                        if freed >= need:
                            wait = s + WINDOW_SECONDS - now
                            break
            elif kind == LEASES:
                u = len(self._leases(key, now))
                reset.append(0.0)
                if failed < 0 and u + amount > limit:
                    failed, wait = i, 1.0
            else:
                u = self._total(key, now)
                reset.append(0.0)
                if failed < 0 and u + amount > limit:
                    failed, wait = i, math.inf
            used.append(u)
        if failed < 0 and not dry:
            for i, (kind, key, _, amount, ttl) in enumerate(checks):
                if amount == PROMPT:
                    amount = prompt
                used[i] += amount
                if kind == WINDOW:
                    windows[key].add(sec, amount)
                    if not reset[i]:
                        reset[i] = sec + WINDOW_SECONDS - now
                elif kind == LEASES:
                    self.leases[key][lease] = exp = now + LEASE_TTL
                    if exp < self._soonest.get(key, math.inf):
                        self._soonest[key] = exp
                else:
                    self._add_total(key, amount, ttl, now)
        return Outcome(failed, wait, used, reset)

    def _add_total(self, key: str, amount: int, ttl: int, now: float) -> None:
        self.totals[key] = self._total(key, now) + amount
        if ttl:
            self._expiry[key] = now + ttl

    def charge(self, items: list[Item], release: list[str] | None = None, lease: str = "") -> None:
        if release:
            self.release(release, lease)
        now = self.now()
        sec = int(now)
        for kind, key, amount, ttl in items:
            if kind == WINDOW:
                self._window(key, sec).add(sec, amount)
            elif kind == TOTAL:
                self._add_total(key, amount, ttl, now)

    def release(self, keys: Sequence[str], lease: str) -> None:
        for key in keys:
            held = self.leases.get(key)
            if held is not None:
                held.pop(lease, None)

    def renew(self, keys: list[str], leases: list[str]) -> None:
        exp = self.now() + LEASE_TTL
        for key, lease in zip(keys, leases, strict=True):
            held = self.leases.get(key)
            if held is not None and lease in held:
                held[lease] = exp


class LocalEngine(Engine):
    """The in-memory store inside this process (an embedded app, or a single worker)."""

    def __init__(self, counters: Counters | None = None) -> None:
        self.counters = counters or Counters()

    async def admit(self, checks: list[Check], lease: str, dry: bool = False) -> Outcome | None:
        return self.counters.admit(checks, lease, dry)

    async def admit_spec(self, spec: Spec, prompt: int, lease: str) -> Outcome | None:
        return self.counters.admit(spec.checks, lease, False, prompt)

    async def charge(
        self, items: list[Item], release: list[str] | None = None, lease: str = ""
    ) -> None:
        self.counters.charge(items, release, lease)

    def post(
        self, items: list[Item], release: list[str] | None = None, lease: str = ""
    ) -> Awaitable[None] | None:
        self.counters.charge(items, release, lease)
        return None

    async def release(self, keys: list[str], lease: str) -> None:
        self.counters.release(keys, lease)

    async def renew(self, keys: list[str], leases: list[str]) -> None:
        self.counters.renew(keys, leases)

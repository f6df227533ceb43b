"""The Redis store. Everything is one Lua script, atomic on the server, so replicas never race
between reading a counter and raising it; time is Redis's own clock.

Calls from one worker are coalesced: while a script call is in flight, the admissions and
charges that arrive queue up and go together in the next call (each still atomic on its own,
and in the order they were made). An idle worker pays one round trip per admission; a busy
one shares each round trip among every request that arrived meanwhile. Charges at the end of
a request are not waited for: they go out in the next call, ahead of any later admission of
this worker: at once when no call is in flight, else with the next call.

A request's operation names its Spec by number; the call carries the checks of each Spec its
operations name, once.

Requests in flight (max_concurrent) are counted per worker: one field per worker under each
concurrency key, changed by admissions and releases, and read only while the worker is alive
(it says so with every call that changes its counts and every LEASE_TTL / 3). The worker keeps
its own count of what it holds, and every LEASE_TTL / 3 sets its fields to it: a release that
never reached Redis (it was away), or an admission applied there whose answer was lost, is
repaired then, as an unrenewed lease would expire."""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
from collections.abc import Awaitable
from itertools import chain
from typing import Any

import msgspec

from airouter.limits import metrics
from airouter.limits.batching import RedisBatcher, Waiter, answer
from airouter.limits.engine import (
    LEASE_TTL,
    LEASES,
    WINDOW_SECONDS,
    Check,
    Engine,
    Item,
    Outcome,
    Spec,
)
from airouter.limits.redis_script import SCRIPT

WORKERS = "airouter:lim:workers"  # sorted set: worker id -> when it stops counting (ms)
_pack = msgspec.msgpack.Encoder().encode


class AdmitSpec(msgspec.Struct, array_like=True, tag="P"):
    """A request's admission, by its Spec's number: on the wire ["P", spec, prompt]."""

    spec: int
    prompt: int


class ChargeSpec(msgspec.Struct, array_like=True, tag="Q"):
    """A request's charge at its end, and its slots given back if `release`."""

    spec: int
    tokens: int
    release: bool


# The other ops are lists, their tails flat as the script reads them: ["A", dry, *checks],
# ["C", n, *items, *release keys], ["R", *(key, count)].
Op = AdmitSpec | ChargeSpec | list[Any]


class RedisEngine(RedisBatcher[Op], Engine):
    uses_leases = False
    script = SCRIPT
    gauge = "redis"

    def __init__(self, url: str, timeout: float = 0.5) -> None:
        super().__init__(url, timeout)
        self.worker = os.urandom(8).hex()  # this process's field under every concurrency key
        # The Specs the queued ops name (number -> checks, and -> concurrency keys where it has
        # any): kept per call, so Specs no longer in use (a budget's period turned) go.
        self._specs: dict[int, list[Any]] = {}
        self._lease_keys: dict[int, tuple[str, ...]] = {}
        # Requests this worker holds, per concurrency key: admitted (answered and taken) less
        # released (queued, whether or not Redis heard of it). What a renewal sets.
        self._held: dict[str, int] = {}
        self._renew: asyncio.Future[Any] | None = None  # a renewal waiting for the next call

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        metrics.LIMITS_UP.labels("redis").set(1)

    async def aclose(self) -> None:
        if self._ops or self._busy or self._held:
            # A last renewal: it goes with (or after) every queued charge and leaves this
            # worker's counts at what it still holds.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.renew([], []), 2)
        await super().aclose()

    # -- batching ---------------------------------------------------------------------------

    def _pending(self) -> bool:
        return bool(self._ops) or self._renew is not None

    def _send(self, ops: list[Op], waiters: list[Waiter], more: bool) -> bool:
        specs, lease_keys = self._specs, self._lease_keys
        if not more:  # else the rest keep the same Specs for the next call
            self._specs, self._lease_keys = {}, {}
            if self._renew is not None:  # first in the call, whose every release it knows
                ops = [self._renewal(ops, lease_keys), *ops]
                waiters = [self._renew, *waiters]
                self._renew = None
        packed = _pack((WINDOW_SECONDS, int(LEASE_TTL * 1000), self.worker, WORKERS, specs, ops))

        def done(results: list[Any] | None) -> None:
            self._answer(waiters, ops, lease_keys, results)

        self.eval([], packed, len(ops), done)
        return True

    def _renewal(self, ops: list[Op], lease_keys: dict[int, tuple[str, ...]]) -> list[Any]:
        """The R op that sets this worker's counts, before `ops` run: what it holds, plus
        what `ops` release (counted here already, taken off again by them)."""
        counts = dict(self._held)
        for op in ops:
            if type(op) is ChargeSpec:
                if op.release:
                    for key in lease_keys.get(op.spec, ()):
                        counts[key] += 1
            elif type(op) is list and op[0] == "C":
                for key in op[2 + 4 * op[1]:]:
                    counts[key] = counts.get(key, 0) + 1
        return ["R", *chain.from_iterable(counts.items())]

    def _answer(
        self,
        waiters: list[Waiter],
        ops: list[Op],
        lease_keys: dict[int, tuple[str, ...]],
        results: list[Any] | None,
    ) -> None:
        """Every waiting request gets an answer, whatever happened (None: no verdict)."""
        if results is None:
            answer(waiters, None)
            return
        for fut, op, result in zip(waiters, ops, results, strict=True):
            if type(result) is list:  # an admission's answer
                if result[0] == 0:
                    self._took(op, fut, lease_keys)
                result = _outcome(result)
            if fut is not None and not fut.done():
                fut.set_result(result)

    def _took(
        self,
        op: Op,
        fut: Waiter,
        lease_keys: dict[int, tuple[str, ...]],
    ) -> None:
        """An admission went through: its slots are this worker's, or, if its request is no
        longer waiting for it, given back at once."""
        if type(op) is AdmitSpec:
            keys: tuple[str, ...] | list[Any] = lease_keys.get(op.spec, ())
        elif type(op) is not list or op[1]:  # a dry run holds nothing
            return
        else:
            keys = [op[j + 1] for j in range(2, len(op), 5) if op[j] == LEASES]
        if not keys:
            return
        if fut is not None and fut.cancelled():
            self.queue(_charge([], list(keys)), None)
            return
        held = self._held
        for key in keys:
            held[key] = held.get(key, 0) + 1

    def drop_queued(self) -> None:
        """Redis is down: the queued ops, and a renewal, get no verdict."""
        super().drop_queued()
        self._specs, self._lease_keys = {}, {}
        if self._renew is not None:
            answer([self._renew], None)
            self._renew = None

    # -- the Engine interface ---------------------------------------------------------------

    def admit(
        self, checks: list[Check], lease: str, dry: bool = False
    ) -> asyncio.Future[Outcome | None]:
        return self.ask(["A", dry, *chain.from_iterable(checks)])

    def _name(self, spec: Spec) -> None:
        """The next call carries `spec`: its checks, and its concurrency keys for what the
        call's admissions take and its releases give back."""
        if spec.id not in self._specs:
            self._specs[spec.id] = spec.flat
            if spec.lease_keys:
                self._lease_keys[spec.id] = spec.lease_keys

    def admit_spec(self, spec: Spec, prompt: int, lease: str) -> asyncio.Future[Outcome | None]:
        self._name(spec)
        return self.ask(AdmitSpec(spec.id, prompt))

    def charge_spec(
        self, spec: Spec, tokens: int, lease: str, release: bool
    ) -> Awaitable[None] | None:
        self._name(spec)
        if release and spec.lease_keys:
            self._released(spec.lease_keys)
        self._post(ChargeSpec(spec.id, tokens, release))
        return None

    def post(
        self, items: list[Item], release: list[str] | None = None, lease: str = ""
    ) -> Awaitable[None] | None:
        if release:
            self._released(release)
        self._post(_charge(items, release))
        return None

    def _released(self, keys: tuple[str, ...] | list[str]) -> None:
        held = self._held
        for key in keys:
            held[key] = held.get(key, 0) - 1

    def _post(self, op: Op) -> None:
        """Queue an op nobody waits for; idle, on the wire now, before the answer's last bytes
        leave."""
        self.queue(op, None, now=True)

    async def charge(
        self, items: list[Item], release: list[str] | None = None, lease: str = ""
    ) -> None:
        if release:
            self._released(release)
        await self.ask(_charge(items, release))

    async def release(self, keys: list[str], lease: str) -> None:
        await self.charge([], keys, lease)

    def renew(self, keys: list[str], leases: list[str]) -> asyncio.Future[Any]:
        """Say this worker is alive and set its counts to what it holds, in the next call
        (the arguments, leases, are the other stores' business)."""
        if self._renew is not None:
            return self._renew
        fut = self.loop.create_future()
        if self.skipping():
            fut.set_result(None)
            return fut
        self._renew = fut
        if not self._busy:
            self.flush_soon()
        return fut


def _outcome(out: list[Any]) -> Outcome:
    """An admission's answer: [failed (0: admitted), wait (-1: never), used * n, reset * n]."""
    n = (len(out) - 2) >> 1
    wait = out[1]
    return Outcome(out[0] - 1, math.inf if wait < 0 else wait, out[2:2 + n], out[2 + n:])


def _charge(items: list[Item], release: list[str] | None) -> list[Any]:
    op: list[Any] = ["C", len(items), *chain.from_iterable(items)]
    if release:
        op += release
    return op


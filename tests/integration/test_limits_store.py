"""The Redis script and the in-memory counters are one algorithm: the same operations give
the same answers (against a real redis-server)."""

from __future__ import annotations

import asyncio
import math
import time
from pathlib import Path

import pytest

from airouter.limits import redis_engine, resp
from airouter.limits.engine import (
    LEASES,
    PROMPT,
    TOTAL,
    WINDOW,
    Check,
    Counters,
    LocalEngine,
    Outcome,
    Spec,
)
from airouter.limits.redis_engine import RedisEngine
from tests.support.redis import RedisServer, run_redis

TTL = 0.5


def same(a: Outcome | None, b: Outcome | None) -> None:
    assert a is not None and b is not None
    assert (a.failed, a.used) == (b.failed, b.used)
    if math.isinf(a.wait) or math.isinf(b.wait):
        assert a.wait == b.wait
    else:  # two clocks, a few ms apart; one-second buckets can put them a second apart
        assert abs(a.wait - b.wait) <= 1.01
    assert all(abs(x - y) <= 1.01 for x, y in zip(a.reset, b.reset, strict=True))


def test_redis_script_matches_the_counters(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Short leases, so expiry is seen within the test (the script takes the TTL per call).
    monkeypatch.setattr(redis_engine, "LEASE_TTL", TTL)

    async def main() -> None:
        with run_redis(tmp_path) as server:
            redis = RedisEngine(server.url)
            await redis.start()
            local = LocalEngine(Counters())
            import airouter.limits.engine as engine_mod

            monkeypatch.setattr(engine_mod, "LEASE_TTL", TTL)
            try:
                await scenario(redis, local)
            finally:
                await redis.aclose()

    asyncio.run(main())


async def scenario(redis: RedisEngine, local: LocalEngine) -> None:
    async def both(checks: list[Check], lease: str = "", dry: bool = False) -> Outcome:
        a, b = await redis.admit(checks, lease, dry), await local.admit(checks, lease, dry)
        same(a, b)
        assert a is not None
        return a

    rpm = Check(WINDOW, "t:rpm", 3, 1)
    tpm = Check(WINDOW, "t:tpm", 100, 40)
    budget = Check(TOTAL, "t:budget:2026-11", 150, 40, 86400)
    conc = Check(LEASES, "t:conc", 2, 1)
    req = [budget, rpm, tpm, conc]
    first = await both(req, "l1")
    assert first.failed == -1 and first.used == [40, 1, 40, 1]
    assert 59 <= first.reset[1] <= 60
    # Concurrent: the third lease does not fit; nothing else is charged for the refusal.
    await both(req, "l2")
    third = await both(req, "l3")
    assert third.failed == 2  # tpm: 80 used + 40 > 100 comes before the leases
    assert third.used[:3] == [80, 2, 80]
    small = [budget, rpm, Check(WINDOW, "t:tpm", 100, 10), conc]
    full = await both(small, "l4")
    assert full.failed == 3 and full.wait == 1.0
    # Freeing a lease with the final charge; completion tokens added as a window use.
    for engine in (redis, local):
        await engine.charge([(WINDOW, "t:tpm", 15, 0), (TOTAL, budget.key, 15, 86400)],
                            [conc.key], "l1")
    after = await both(small, "l5")
    assert after.failed == 2 and after.used == [95, 2, 95, 1]  # 95 + 10 tokens > 100
    # Budget: 95 + 10 fits, dry runs change nothing.
    peek = await both([Check(TOTAL, budget.key, 150, 0, 86400), Check(WINDOW, rpm.key, 3, 0)],
                      dry=True)
    assert peek.used == [95, 2]
    over = await both([Check(TOTAL, budget.key, 150, 60, 86400)])
    assert over.failed == 0 and math.isinf(over.wait)
    # A request's Spec (checks built once, the prompt's tokens filled in by the store) counts
    # as its checks given in full, on admission and on its final charge.
    spec = Spec([Check(WINDOW, "s:rpm", 10, 1), Check(WINDOW, "s:tpm", 100, PROMPT),
                 Check(TOTAL, "s:budget", 1000, PROMPT, 86400), Check(LEASES, "s:conc", 1, 1)])
    for engine in (redis, local):
        got = await engine.admit_spec(spec, 30, "s1")
        assert got is not None and got.failed == -1 and got.used == [1, 30, 30, 1]
        refused = await engine.admit_spec(spec, 5, "s2")  # the one slot is taken
        assert refused is not None and refused.failed == 3 and refused.used == [1, 30, 30, 1]
        assert engine.charge_spec(spec, 12, "s1", True) is None
        again = await engine.admit_spec(spec, 5, "s3")
        assert again is not None and again.failed == -1 and again.used == [2, 47, 47, 1]
        engine.charge_spec(spec, 0, "s3", True)
    peek = await both([Check(WINDOW, "s:tpm", 100, 0), Check(LEASES, "s:conc", 1, 0)], dry=True)
    assert peek.used == [47, 0]
    # A usage peek of keys that do not exist.
    empty = await both([Check(WINDOW, "t:none", 5, 0), Check(TOTAL, "t:none:b", 5, 0)], dry=True)
    assert empty.used == [0, 0] and empty.reset == [0.0, 0.0]


def test_one_call_carries_many_requests_in_order(tmp_path: Path) -> None:
    """Ops made in one loop turn share a script call; each still sees the ones before it,
    charges that nobody waits for included, and the script survives a flushed cache."""

    async def main() -> None:
        with run_redis(tmp_path) as server:
            redis = RedisEngine(server.url)
            await redis.start()
            try:
                rpm = Check(WINDOW, "b:rpm", 3, 1)
                conc = Check(LEASES, "b:conc", 2, 1)
                got = await asyncio.gather(
                    *(redis.admit([rpm, conc], f"l{i}") for i in range(5))
                )
                # The third and later do not fit the leases (a refusal applies nothing).
                assert [o.failed if o else None for o in got] == [-1, -1, 1, 1, 1]
                assert [o.used for o in got if o] == [[1, 1], [2, 2], [2, 2], [2, 2], [2, 2]]
                assert (await redis.admit([rpm], "")).used == [3]  # type: ignore[union-attr]
                # A slot freed and tokens charged without waiting, then admissions in the
                # same call: the first sees the free slot, the second the tokens.
                assert redis.post([(WINDOW, "b:tpm", 50, 0)], [conc.key], "l0") is None
                again, tpm = await asyncio.gather(
                    redis.admit([conc], "l5"), redis.admit([Check(WINDOW, "b:tpm", 60, 20)], "")
                )
                assert again is not None and again.failed == -1 and again.used == [2]
                assert tpm is not None and tpm.failed == 0 and tpm.used == [50]
                # A Redis that lost its scripts (restarted, SCRIPT FLUSH) gets it again.
                flush = await resp.connect(server.url)
                assert await flush.call(b"SCRIPT", b"FLUSH") == b"OK"
                flush.close()
                peek = await redis.admit([Check(WINDOW, "b:tpm", 60, 0)], "", dry=True)
                assert peek is not None and peek.used == [50] and redis.up
            finally:
                await redis.aclose()

    asyncio.run(main())


def test_a_dead_workers_requests_stop_counting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In Redis, requests in flight are counted per worker (in process they are leases that
    expire unless renewed, tests/unit/test_limits.py): a worker that stops renewing (it died)
    stops counting for the others once its liveness lapses; a live one keeps its count
    however long its requests run."""
    monkeypatch.setattr(redis_engine, "LEASE_TTL", TTL)

    async def main() -> None:
        with run_redis(tmp_path) as server:
            alive, dying = RedisEngine(server.url), RedisEngine(server.url)
            await alive.start()
            await dying.start()
            conc = Check(LEASES, "d:conc", 3, 1)
            try:
                for engine, n in ((dying, 2), (alive, 1)):
                    for _ in range(n):
                        got = await engine.admit([conc], "")
                        assert got is not None and got.failed == -1
                full = await alive.admit([conc], "")
                assert full is not None and full.failed == 0 and full.used == [3]
                dying._conn.close()  # type: ignore[union-attr]  # gone, its two never freed
                for _ in range(4):
                    await asyncio.sleep(TTL * 0.4)
                    await alive.renew([], [])
                held = await alive.admit([Check(LEASES, conc.key, 3, 0)], "", dry=True)
                assert held is not None and held.used == [1]
                # Its field is gone from the hash; the live worker's count is intact.
                check = await resp.connect(server.url)
                fields = await check.call(b"HGETALL", conc.key.encode())
                check.close()
                assert fields == [alive.worker.encode(), b"1"]
                alive.post([], [conc.key], "")
                free = await alive.admit([Check(LEASES, conc.key, 3, 0)], "", dry=True)
                assert free is not None and free.used == [0]
            finally:
                await alive.aclose()

    asyncio.run(main())


def test_counts_that_drifted_are_set_right_by_the_next_renewal(tmp_path: Path) -> None:
    """A release Redis never heard of (it was away) and an admission whose request stopped
    waiting for it (cancelled) leave no slot taken for good: the first is repaired by the
    worker's next renewal, the second given back at once."""

    async def main() -> None:
        with run_redis(tmp_path) as server:
            engine = RedisEngine(server.url)
            await engine.start()
            conc = Check(LEASES, "r:conc", 2, 1)
            peek = [Check(LEASES, conc.key, 2, 0)]
            try:
                got = await engine.admit([conc], "")
                assert got is not None and got.failed == -1
                # Redis away (as after a failure) when the request ends: the release is lost.
                engine.up, engine._down_until = False, time.monotonic() + 60
                engine.post([], [conc.key], "")
                engine._down_until = 0.0
                stale = await engine.admit(peek, "", dry=True)
                assert stale is not None and stale.used == [1]
                await engine.renew([], [])
                fixed = await engine.admit(peek, "", dry=True)
                assert fixed is not None and fixed.used == [0]
                # An admission nobody waits for any more: its slot is not kept.
                gone = engine.admit([conc], "")
                gone.cancel()
                same_call = await engine.admit(peek, "", dry=True)  # it went through there
                assert same_call is not None and same_call.used == [1]
                after = await engine.admit(peek, "", dry=True)  # and was given back at once
                assert after is not None and after.used == [0]
                assert engine._held == {conc.key: 0}
            finally:
                await engine.aclose()

    asyncio.run(main())


def test_a_unix_socket_url_with_password_and_database(tmp_path: Path) -> None:
    """redis-py's URL forms reach the same counters: unix:///path?db=N with the password as
    userinfo or in the query, and redis://:password@host:port/N; a wrong password is an
    unreachable store (no verdict), not an admission."""
    sock = tmp_path / "redis.sock"
    secret = "p%ss word"  # percent-encoded in userinfo, decoded once
    server = RedisServer(tmp_path / "redis.log", unix=sock, password=secret)

    async def main() -> None:
        engines = [
            RedisEngine(f"unix://:p%25ss%20word@{sock}?db=3"),
            RedisEngine(f"unix://{sock}?db=03&password=p%25ss+word"),  # 03 is 3, as redis-py
            RedisEngine(f"redis://:p%25ss%20word@127.0.0.1:{server.port}/3"),
        ]
        wrong = RedisEngine(f"unix://:nope@{sock}?db=3")
        rpm = Check(WINDOW, "u:rpm", 10, 1)
        try:
            for e in (*engines, wrong):
                await e.start()
            used = [await e.admit([rpm], "") for e in engines]
            assert [o.used if o else None for o in used] == [[1], [2], [3]]
            assert await wrong.admit([rpm], "") is None and not wrong.up
            # Database 3, not 0.
            for db, n in (("3", 1), ("0", 0)):
                conn = await resp.connect(f"unix://:p%25ss%20word@{sock}?db={db}")
                assert await conn.call(b"EXISTS", b"u:rpm") == n
                conn.close()
            assert resp.safe_url(f"unix://:p%25ss%20word@{sock}?db=3") == f"unix://{sock}"
        finally:
            for e in (*engines, wrong):
                await e.aclose()

    server.start()
    try:
        asyncio.run(main())
    finally:
        server.stop()


def test_an_empty_password_is_none(tmp_path: Path) -> None:
    """`redis://:@host` sends no AUTH (as redis-py reads it), so a Redis without a password
    is reached rather than refusing `AUTH ""`."""

    async def main() -> None:
        with run_redis(tmp_path) as server:
            engine = RedisEngine(f"redis://:@127.0.0.1:{server.port}/0")
            await engine.start()
            try:
                got = await engine.admit([Check(WINDOW, "e:rpm", 5, 1)], "")
                assert got is not None and got.used == [1] and engine.up
            finally:
                await engine.aclose()

    asyncio.run(main())


def test_a_redis_engine_holds_a_spec_only_while_its_ops_are_queued(tmp_path: Path) -> None:
    """Specs travel with the call whose ops name them; none stays behind in the engine (a
    dated budget makes a new Spec every day), and the counts stay right."""

    async def main() -> None:
        with run_redis(tmp_path) as server:
            redis = RedisEngine(server.url)
            await redis.start()
            try:
                for day in range(3):
                    spec = Spec([Check(TOTAL, f"h:budget:{day}", 100, PROMPT),
                                 Check(LEASES, "h:conc", 1, 1)])
                    got = await redis.admit_spec(spec, 10, "")
                    assert got is not None and got.failed == -1 and got.used == [10, 1]
                    redis.charge_spec(spec, 5, "", True)
                    peek = await redis.admit([Check(LEASES, "h:conc", 1, 0)], "", dry=True)
                    assert peek is not None and peek.used == [0]
                    assert redis._specs == {} and redis._lease_keys == {}
                await redis.renew([], [])  # the renewal sets what it holds: nothing
                peek = await redis.admit([Check(LEASES, "h:conc", 1, 0)], "", dry=True)
                assert peek is not None and peek.used == [0]
            finally:
                await redis.aclose()

    asyncio.run(main())


def test_a_spec_first_named_by_a_charge_still_counts_its_admissions_slots(
    tmp_path: Path,
) -> None:
    """A streamed chunk's charge and a new admission of the same Spec in one call: whichever
    names the Spec first, the admission's slot is this worker's, and a renewal keeps it."""

    async def main() -> None:
        with run_redis(tmp_path) as server:
            redis = RedisEngine(server.url)
            await redis.start()
            spec = Spec([Check(WINDOW, "o:tpm", 1000, PROMPT), Check(LEASES, "o:conc", 5, 1)])
            try:
                first = await redis.admit_spec(spec, 10, "")
                assert first is not None and first.failed == -1
                redis._post = redis.ask  # type: ignore[method-assign,assignment]  # queue, don't send
                redis.charge_spec(spec, 32, "", False)  # the first request streams on
                second = await redis.admit_spec(spec, 10, "")
                assert second is not None and second.failed == -1 and second.used == [52, 2]
                assert redis._held == {"o:conc": 2}
                await redis.renew([], [])
                peek = await redis.admit([Check(LEASES, "o:conc", 5, 0)], "", dry=True)
                assert peek is not None and peek.used == [2]
            finally:
                await redis.aclose()

    asyncio.run(main())

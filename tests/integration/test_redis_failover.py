"""A Redis failover with real servers: the primary the limits use is demoted (REPLICAOF, its
writes answer READONLY) and promoted back. Meanwhile the store is down
(airouter_limits_backend_up 0, limits_on_redis_failure applies); afterwards it counts again."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from airouter.limits import metrics, node_redis, resp
from airouter.limits.engine import WINDOW, Check
from airouter.limits.node_redis import RedisSlots
from airouter.limits.redis_engine import RedisEngine
from tests.support.redis import RedisServer


async def _admin(url: str, *args: bytes) -> None:
    conn = await resp.connect(url)
    try:
        await resp.checked(conn.call(*args))
    finally:
        conn.close()


async def _demote(server: RedisServer, primary: RedisServer) -> None:
    await _admin(server.url, b"REPLICAOF", b"127.0.0.1", str(primary.port).encode())


async def _promote(server: RedisServer) -> None:
    await _admin(server.url, b"REPLICAOF", b"NO", b"ONE")


def _servers(tmp_path: Path) -> tuple[RedisServer, RedisServer]:
    a, b = RedisServer(tmp_path / "a.log"), RedisServer(tmp_path / "b.log")
    a.start()
    try:
        b.start()
    except BaseException:
        a.stop()
        raise
    return a, b


def test_limits_resume_after_a_failover(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(RedisEngine, "retry_after", 0.1)
    a, b = _servers(tmp_path)

    async def main() -> None:
        engine = RedisEngine(a.url)
        await engine.start()
        check = Check(WINDOW, "f:rpm", 100, 1)
        try:
            first = await engine.admit([check], "")
            assert first is not None and first.used == [1]
            await _demote(a, b)
            assert await engine.admit([check], "") is None  # no verdict: the policy applies
            assert not engine.up
            assert metrics.LIMITS_UP.labels("redis")._value.get() == 0
            await _promote(a)
            for _ in range(50):  # the next connection after RETRY_AFTER reaches a primary
                await asyncio.sleep(0.05)
                got = await engine.admit([check], "")
                if got is not None:
                    break
            assert got is not None and got.failed == -1 and engine.up
            again = await engine.admit([check], "")
            assert again is not None and again.used == [got.used[0] + 1]  # counting again
            assert metrics.LIMITS_UP.labels("redis")._value.get() == 1
        finally:
            await engine.aclose()

    try:
        asyncio.run(asyncio.wait_for(main(), 30))
    finally:
        a.stop()
        b.stop()


def test_node_slots_resume_after_a_failover(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(RedisSlots, "retry_after", 0.1)
    a, b = _servers(tmp_path)

    async def main() -> None:
        slots = RedisSlots(a.url)
        await slots.start()
        try:
            got = await slots.take("n1", 2, 0, 1)
            assert got is not None and got[0] == node_redis.GRANTED
            await _demote(a, b)
            assert await slots.take("n1", 2, 0, 1) is None and not slots.up
            await _promote(a)
            for _ in range(50):
                await asyncio.sleep(0.05)
                got = await slots.take("n1", 2, 0, 1)
                if got is not None:
                    break
            assert got is not None and got[0] == node_redis.GRANTED and slots.up
        finally:
            await slots.aclose()

    try:
        asyncio.run(asyncio.wait_for(main(), 30))
    finally:
        a.stop()
        b.stop()

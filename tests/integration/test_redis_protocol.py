"""The limits' Redis connection against a scripted server: malformed replies, nesting past
the reader's bound, and error replies saying the server takes no writes (a failover) each
drop the connection, the store counts as down, and a new connection resumes counting."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import msgspec
import pytest

from airouter.limits import metrics, resp
from airouter.limits.engine import WINDOW, Check
from airouter.limits.redis_engine import RedisEngine
from tests.support.fake_redis import FakeRedis, default

MALFORMED = [b"$-5\r\n", b":1_000\r\n", b":+5\r\n", b"*-2\r\n", b"?x\r\n", b"+a\rb\r\n"]


def run(main: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(main(), 20))  # type: ignore[arg-type]


def answering(reply: bytes) -> Callable[[list[bytes]], bytes]:
    return lambda args: reply if args[0].upper() == b"PING" else default(args)


@pytest.mark.parametrize("reply", MALFORMED)
def test_a_malformed_reply_is_a_protocol_error_that_drops_the_connection(reply: bytes) -> None:
    async def main() -> None:
        async with FakeRedis(answering(reply)) as fake:
            conn = await resp.connect(fake.url)
            got = await asyncio.gather(conn.call(b"PING"), conn.call(b"PING"))
            assert all(isinstance(g, ConnectionError) for g in got), got
            assert conn.transport is None or conn.transport.is_closing()

    run(main)


def test_nesting_past_the_bound_is_a_protocol_error() -> None:
    async def main() -> None:
        deep = b"*1\r\n" * 100_000 + b":1\r\n"
        async with FakeRedis(answering(deep)) as fake:
            conn = await resp.connect(fake.url)
            got = await conn.call(b"PING")
            assert isinstance(got, ConnectionError), type(got)

    run(main)


def _results(n: int) -> bytes:
    """The script's answer to `n` admissions of one check: admitted, used 1."""
    packed = msgspec.msgpack.encode([[0, -1, 1, 60]] * n)
    return b"$%d\r\n%s\r\n" % (len(packed), packed)


def _up() -> float:
    return float(metrics.LIMITS_UP.labels("redis")._value.get())


@pytest.mark.parametrize("error", [b"READONLY You can't write against a read only replica.",
                                   b"LOADING Redis is loading the dataset in memory",
                                   b"MASTERDOWN Link with MASTER is down",
                                   b"MOVED 3999 127.0.0.1:6381"])
def test_a_server_that_takes_no_writes_is_down_until_a_new_connection_works(
    error: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A demoted primary keeps answering, but with an error: the store drops the connection,
    reports itself down (limits_on_redis_failure applies), and the next connection, to the
    promoted server, counts again."""
    monkeypatch.setattr(RedisEngine, "retry_after", 0.05)
    failing = [True]

    def answer(args: list[bytes]) -> bytes:
        if args[0].upper() in (b"EVALSHA", b"EVAL"):
            if failing[0]:
                return b"-" + error + b"\r\n"
            return _results(1)
        return default(args)

    async def main() -> None:
        async with FakeRedis(answer) as fake:
            engine = RedisEngine(fake.url)
            await engine.start()
            try:
                check = Check(WINDOW, "k:rpm", 10, 1)
                assert await engine.admit([check], "") is None
                assert not engine.up and _up() == 0
                failing[0] = False
                await asyncio.sleep(0.1)
                out = await engine.admit([check], "")
                assert out is not None and out.failed == -1 and out.used == [1]
                assert engine.up and _up() == 1
                assert fake.connections == 2
            finally:
                await engine.aclose()

    run(main)


def test_a_malformed_script_answer_is_an_outage_not_a_verdict(
    monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(RedisEngine, "retry_after", 0.05)
    replies = [b":+5\r\n", _results(1)]

    def answer(args: list[bytes]) -> bytes:
        if args[0].upper() == b"EVALSHA":
            return replies.pop(0) if len(replies) > 1 else replies[0]
        return default(args)

    async def main() -> None:
        async with FakeRedis(answer) as fake:
            engine = RedisEngine(fake.url)
            await engine.start()
            try:
                check = Check(WINDOW, "k:rpm", 10, 1)
                assert await engine.admit([check], "") is None
                assert not engine.up
                await asyncio.sleep(0.1)
                out = await engine.admit([check], "")
                assert out is not None and out.used == [1] and engine.up
            finally:
                await engine.aclose()

    run(main)

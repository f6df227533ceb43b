"""The workers' prefix indexes kept alike through the main process's relay (prefix_share)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from airouter.backends.prefix_share import PrefixShare, start_relay
from tests.unit.test_prefix_routing import _pool, _text


async def _until(cond: object, within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while not cond():  # type: ignore[operator]
        assert time.monotonic() < deadline, "not learnt in time"
        await asyncio.sleep(0.01)


async def test_a_prefix_placed_by_one_worker_is_found_by_another(tmp_path: Path) -> None:
    path = str(tmp_path / "prefix.sock")
    start_relay(path)
    a, b, alone = _pool(), _pool(), _pool()
    assert a.prefix is not None and b.prefix is not None and alone.prefix is not None
    # Each worker sees only its own requests in flight: A's least loaded node is the last,
    # B's and `alone`'s are the others. A cold prefix goes to the least loaded node.
    for n in a.nodes[:3]:
        n.in_flight = 1
    for pool in (b, alone):
        pool.nodes[3].in_flight = 1
    shares = [PrefixShare(path), PrefixShare(path)]
    shares[0].attach("b", a.prefix)
    shares[1].attach("b", b.prefix)
    for s in shares:
        await s.start()
    try:
        for g in range(8):
            assert a.pick((), a.prefix.key(_text(g, 0), "m")) is a.nodes[3]
        await _until(lambda: shares[1].received == 8)
        for g in range(8):
            assert b.pick((), b.prefix.key(_text(g, 1), "m")) is b.nodes[3]
            # Without the other worker's news the same prefix is cold, and goes elsewhere.
            assert alone.pick((), alone.prefix.key(_text(g, 1), "m")) is not alone.nodes[3]
        # And back: what B placed (its 8 matches too), A learns; nothing echoes back.
        n = b.pick((), b.prefix.key(_text(100, 0), "m"))
        assert n is not None and n is not b.nodes[3]
        await _until(lambda: shares[0].received == 9)
        got = a.pick((), a.prefix.key(_text(100, 1), "m"))
        assert got is not None and got.url == n.url
        assert shares[1].received == 8
        # A worker that joins late (respawned, reloaded) hears what was placed before it.
        late_pool = _pool()
        assert late_pool.prefix is not None
        late_pool.nodes[0].in_flight = 1
        late = PrefixShare(path)
        late.attach("b", late_pool.prefix)
        shares.append(late)
        await late.start()
        # Every pick above, by A and B (A's last may reach the relay just after the join,
        # then it arrives as news rather than history).
        await _until(lambda: late.received == 18)
        for g in range(8):
            assert late_pool.pick((), late_pool.prefix.key(_text(g, 2), "m")) is \
                late_pool.nodes[3]
    finally:
        for s in shares:
            s.close()


async def test_no_relay_routes_on_the_workers_own_index(tmp_path: Path) -> None:
    pool = _pool()
    assert pool.prefix is not None
    share = PrefixShare(str(tmp_path / "absent.sock"))
    share.attach("b", pool.prefix)
    await share.start()
    first = pool.pick((), pool.prefix.key(_text(1, 0), "m"))
    assert pool.pick((), pool.prefix.key(_text(1, 1), "m")) is first

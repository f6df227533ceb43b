"""The shared per-request deadline: entries fire once due, the timer stops when the set is
empty, and a new event loop gets a timer of its own."""

from __future__ import annotations

import asyncio

from airouter.sweep import Sweep


class _Entry:
    def __init__(self, due_at: float) -> None:
        self.due_at = due_at
        self.fired = 0


def _sweep(tick: float) -> Sweep[_Entry]:
    def fire(e: _Entry) -> None:
        e.fired += 1
        sweep.discard(e)

    sweep: Sweep[_Entry] = Sweep(tick, lambda e, now: now >= e.due_at, fire)
    return sweep


def test_entries_fire_when_due_and_not_before() -> None:
    async def main() -> tuple[int, int, int, bool]:
        loop = asyncio.get_running_loop()
        sweep = _sweep(0.01)
        soon, late = _Entry(loop.time() + 0.03), _Entry(loop.time() + 10)
        sweep.add(soon, loop)
        sweep.add(late, loop)
        await asyncio.sleep(0.08)
        fired = (soon.fired, late.fired)
        sweep.discard(late)
        await asyncio.sleep(0.03)  # the set is empty: the timer lapses
        return (*fired, len(sweep.entries), sweep._timer is None)

    assert asyncio.run(main()) == (1, 0, 0, True)


def test_a_new_loop_gets_its_own_timer() -> None:
    sweep = _sweep(0.01)

    async def one() -> int:
        loop = asyncio.get_running_loop()
        e = _Entry(loop.time())
        sweep.add(e, loop)
        await asyncio.sleep(0.05)
        return e.fired

    # The first loop ends with the sweep's timer still armed on it (entries left behind).
    async def leave_one() -> None:
        sweep.add(_Entry(float("inf")), asyncio.get_running_loop())

    asyncio.run(leave_one())
    assert asyncio.run(one()) == 1

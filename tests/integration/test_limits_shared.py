"""The workers' client of the main process's counters, over a real unix socket: batching,
queued charges seen in order, and a server that is away or silent."""

from __future__ import annotations

import asyncio
import socket
import time
from pathlib import Path

import msgspec
import pytest

from airouter.limits import shared
from airouter.limits.engine import LEASES, PROMPT, TOTAL, WINDOW, Check, Counters, Spec
from airouter.limits.shared import CALL_TIMEOUT, SWEEP, SharedEngine
from airouter.limits.shared_server import _Server, start_server
from airouter.limits.slots import SlotTable


def _frames_sent(engine: SharedEngine) -> list[int]:
    """Count the frames the engine writes (each write is one frame)."""
    count = [0]
    transport = engine._transport
    assert transport is not None
    write = transport.write

    def counting(data: bytes) -> None:
        count[0] += 1
        write(data)

    transport.write = counting  # type: ignore[method-assign]
    return count


def test_ops_of_one_turn_go_in_one_frame_and_are_answered_in_order(tmp_path: Path) -> None:
    path = str(tmp_path / "limits.sock")
    start_server(path)

    async def main() -> None:
        engine = SharedEngine(path)
        await engine.start()
        assert await engine.admit([Check(WINDOW, "warm", 100, 1)], "l0") is not None
        frames = _frames_sent(engine)
        outs = await asyncio.gather(
            *(engine.admit([Check(WINDOW, "rpm", 5, 1)], f"l{i}") for i in range(8))
        )
        assert frames[0] == 1
        assert [o.failed if o else None for o in outs] == [-1] * 5 + [0] * 3
        assert [o.used[0] if o else None for o in outs] == [1, 2, 3, 4, 5, 5, 5, 5]
        await engine.aclose()

    asyncio.run(main())


def test_a_queued_charge_counts_for_the_next_admission(tmp_path: Path) -> None:
    path = str(tmp_path / "limits.sock")
    start_server(path)

    async def main() -> None:
        engine = SharedEngine(path)
        await engine.start()
        checks = [Check(TOTAL, "budget", 100, 10), Check(LEASES, "conc", 1, 1)]
        first = await engine.admit(checks, "a")
        assert first is not None and first.failed == -1 and first.used == [10, 1]
        # Not awaited: the charge and the release still come before the next admission.
        assert engine.post([(TOTAL, "budget", 90, 0)], ["conc"], "a") is None
        second = await engine.admit(checks, "b")
        assert second is not None and second.failed == 0 and second.used == [100, 0]
        await engine.aclose()

    asyncio.run(main())


def test_an_absent_server_gives_no_verdict(tmp_path: Path) -> None:
    async def main() -> None:
        engine = SharedEngine(str(tmp_path / "nobody.sock"))
        await engine.start()
        assert await engine.admit([Check(WINDOW, "rpm", 5, 1)], "l") is None
        engine.post([(WINDOW, "rpm", 1, 0)])  # dropped, not raised
        await engine.aclose()

    asyncio.run(main())


def test_a_silent_server_gives_no_verdict_in_time(tmp_path: Path) -> None:
    path = str(tmp_path / "silent.sock")
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(path)
    listener.listen()

    async def main() -> float:
        engine = SharedEngine(path)
        await engine.start()
        t = time.monotonic()
        out = await engine.admit([Check(WINDOW, "rpm", 5, 1)], "l")
        took = time.monotonic() - t
        assert out is None
        await engine.aclose()
        return took

    try:
        took = asyncio.run(main())
    finally:
        listener.close()
    assert CALL_TIMEOUT <= took <= CALL_TIMEOUT + 2 * SWEEP + 0.5


def test_a_spec_is_defined_once_per_connection_and_counts_as_its_checks(tmp_path: Path) -> None:
    """Requests name their Spec by number; the first frame that names it on a connection
    defines it, a new connection (the old one dropped) defines it again, and the counts are
    the checks' in full: the prompt's tokens where the Spec says PROMPT."""
    path = str(tmp_path / "limits.sock")
    start_server(path)
    spec = Spec([Check(WINDOW, "p:rpm", 10, 1), Check(WINDOW, "p:tpm", 100, PROMPT),
                 Check(LEASES, "p:conc", 2, 1)])

    async def main() -> None:
        engine = SharedEngine(path)
        await engine.start()
        assert await engine.admit([Check(WINDOW, "warm", 100, 1)], "w") is not None
        frames = _frames_sent(engine)
        outs = await asyncio.gather(*(engine.admit_spec(spec, 20, f"l{i}") for i in range(3)))
        assert frames[0] == 1 and engine._defined == {spec.id}
        assert [o.failed if o else None for o in outs] == [-1, -1, 2]  # two slots
        assert [o.used if o else None for o in outs] == [[1, 20, 1], [2, 40, 2], [2, 40, 2]]
        # The final charge (12 more tokens) and the slot freed, not waited for, count first.
        assert engine.charge_spec(spec, 12, "l0", True) is None
        got = await engine.admit_spec(spec, 5, "l3")
        assert got is not None and got.failed == -1 and got.used == [3, 57, 2]
        # The connection drops: the next frame defines the Spec again on the new one.
        assert engine._transport is not None
        engine._transport.abort()
        await asyncio.sleep(0.05)
        engine.charge_spec(spec, 0, "l1", True)
        again = await engine.admit_spec(spec, 1, "l4")
        assert again is not None and again.failed == -1 and again.used == [4, 58, 2]
        await engine.aclose()

    asyncio.run(main())


def test_an_admission_whose_request_left_gives_its_slot_back(tmp_path: Path) -> None:
    """A request cancelled while its admission was on the way (the client left): the server
    admitted it, nobody takes the answer, and its slot is free at once, not 30 s later."""
    path = str(tmp_path / "limits.sock")
    start_server(path)
    spec = Spec([Check(LEASES, "a:conc", 1, 1)])

    async def main() -> None:
        engine = SharedEngine(path)
        await engine.start()
        assert await engine.admit([Check(WINDOW, "warm", 100, 1)], "w") is not None
        gone = engine.admit_spec(spec, 0, "gone")
        gone.cancel()  # before the frame even left
        await asyncio.sleep(0.05)
        held = await engine.admit([Check(LEASES, "a:conc", 1, 0)], "", dry=True)
        assert held is not None and held.used == [0]
        got = await engine.admit_spec(spec, 0, "next")
        assert got is not None and got.failed == -1
        await engine.aclose()

    asyncio.run(main())


def test_past_max_defined_the_server_forgets_old_specs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A dated budget makes a new Spec every day: past MAX_DEFINED the connection starts
    over (the server drops what it holds, the frame defines what it names) and admissions
    keep counting."""
    monkeypatch.setattr(shared, "MAX_DEFINED", 2)
    path = str(tmp_path / "limits.sock")
    start_server(path)
    days = [Spec([Check(WINDOW, "f:rpm", 100, 1), Check(TOTAL, f"f:budget:{d}", 100, PROMPT)])
            for d in range(6)]

    async def main() -> None:
        engine = SharedEngine(path)
        await engine.start()
        for d, spec in enumerate(days):
            got = await engine.admit_spec(spec, 10, "")
            assert got is not None and got.failed == -1 and got.used == [d + 1, 10]
            assert len(engine._defined) <= 3
        # An old day's Spec after the server forgot it: defined again, still its own key.
        old = await engine.admit_spec(days[0], 5, "")
        assert old is not None and old.used == [7, 15]
        await engine.aclose()

    asyncio.run(main())


def test_the_server_drops_its_specs_when_a_frame_says_forget() -> None:
    server = _Server(Counters(), SlotTable())
    sent: list[bytes] = []

    class Transport:
        def write(self, data: bytes) -> None:
            sent.append(data)

    server.transport = Transport()  # type: ignore[assignment]
    one = Spec([Check(WINDOW, "g:rpm", 5, 1)])
    two = Spec([Check(WINDOW, "g:tpm", 50, PROMPT)])

    def frame(*parts: object) -> bytes:
        body = msgspec.msgpack.encode(list(parts))
        return len(body).to_bytes(4, "big") + body

    server.data_received(frame(True, [["P", one.id, 3, ""]], {one.id: one.flat}, False))
    assert set(server.specs) == {one.id}
    server.data_received(frame(True, [["P", two.id, 7, ""]], {two.id: two.flat}, True))
    assert set(server.specs) == {two.id}
    answers = [msgspec.msgpack.decode(b[4:]) for b in sent]
    assert [a[1][0][2] for a in answers] == [[1], [7]]  # each admission's used counts

"""Reply clean-up: the backend's own first, then added steps last-first, every one of them
whatever happened before; Call stays the request it was built as."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest

from airouter.backends.base import Call, Reply


def test_steps_run_backend_first_then_last_added_first() -> None:
    ran: list[str] = []

    async def backend() -> None:
        ran.append("backend")

    async def slot() -> None:
        ran.append("slot")

    reply = Reply(body=b"{}", aclose=backend)
    reply.on_close(slot)
    reply.on_close(lambda: ran.append("sync"))
    asyncio.run(reply.aclose())
    assert ran == ["backend", "sync", "slot"]
    asyncio.run(reply.aclose())  # once only: a slot must not be given back twice
    assert ran == ["backend", "sync", "slot"]


@pytest.mark.parametrize("failure", [RuntimeError("boom"), asyncio.CancelledError()])
def test_every_step_runs_when_one_fails(failure: BaseException) -> None:
    ran: list[str] = []

    async def backend() -> None:
        ran.append("backend")
        raise failure

    def broken() -> None:
        ran.append("broken")
        raise ValueError("second")

    reply = Reply(body=b"{}", aclose=backend)
    reply.on_close(lambda: ran.append("first added"))
    reply.on_close(broken)

    async def main() -> None:
        with pytest.raises(type(failure)):  # the first failure, after all steps
            await reply.aclose()

    asyncio.run(main())
    assert ran == ["backend", "broken", "first added"]


def test_a_call_is_not_rewritten() -> None:
    call = Call.__new__(Call)
    with pytest.raises(dataclasses.FrozenInstanceError):
        call.body = {}  # type: ignore[misc]

"""A streamed chat answer that another node finishes when its node breaks off mid-answer
(`resume = "continue_final_message"`): the client gets one stream. The pure half (what the
client saw, the continuation request, its events rewritten) is resume_state.py."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec

from airouter.backends.base import Call, Reply
from airouter.backends.node import Node
from airouter.backends.observer import NodeObserver
from airouter.backends.openai.relay_state import RelayState
from airouter.backends.openai.resume_state import (
    Continuation,
    KeptState,
    continuation,
    relayed,
)
from airouter.bounds import escaped
from airouter.errors import RouterError

log = logging.getLogger("airouter.openai")
_encode = msgspec.json.Encoder().encode

# (the resumer, the continuation's request body, the retries it may use) -> its reply,
# through failover.
Reopen = Callable[["Resumer", bytes, int], Awaitable[Reply]]


class Resumer:
    """One streamed chat answer of a backend that resumes them. Its attempts' relays keep what
    they relayed (`keep`: the request is resumable at all); when one breaks, `resume` closes it
    (its node held to the failure) and opens the continuation on a node not tried yet, within
    the backend's `retries` for the whole request. The client's reply (`wrap`) closes whichever
    attempt is current."""

    __slots__ = ("name", "observer", "call", "body", "keep", "retries", "tried", "kept",
                 "cont", "current", "outer", "reopen")

    def __init__(self, name: str, observer: NodeObserver, call: Call, body: dict[str, Any],
                 keep: bool, retries: int, reopen: Reopen) -> None:
        self.name = name
        self.observer = observer
        self.call = call
        self.body = body  # the request as the first attempt sent it
        self.keep = keep
        self.retries = retries
        self.tried: list[Node] = []  # every node that served or failed this request
        self.kept: list[bytes] = []  # the events the client got, as relayed
        self.cont: Continuation | None = None
        self.current: Reply | None = None
        self.outer: Reply | None = None
        self.reopen = reopen

    def state(self) -> RelayState | None:
        """The relay state of an attempt: None (a plain one) when nothing is kept."""
        if not self.keep:
            return None
        call = self.call
        return KeptState(self.name, call.target.model_repl, call.stats, self.kept, self.cont)

    def wrap(self, reply: Reply) -> Reply:
        """The client's reply: the first attempt's stream, closing the current attempt."""
        self.current = reply
        self.outer = Reply(sse=reply.sse, aclose=self._aclose)
        return self.outer

    async def _aclose(self) -> None:
        cur, self.current = self.current, None
        if cur is not None:
            if cur.fault is None and self.outer is not None:
                cur.fault = self.outer.fault
            await cur.aclose()

    async def resume(self, err: RouterError) -> Reply:
        """The stream broke after it began (`err`): the continuation's reply, or `err` raised
        when the answer cannot be continued."""
        stats = self.call.stats
        broken = stats.node
        seen = relayed(self.kept) if self.keep else None
        body = continuation(self.body, seen) if seen is not None else None
        left = self.retries - len(self.tried)
        if body is None or left < 0:
            outcome = "not_resumable" if body is None else "no_retries"
            self.observer.stream_resume(self.name, outcome)
            log.warning("backend %s: node %s broke off a stream (%s); not resumed: %s",
                        self.name, broken, err.code or err.type, outcome.replace("_", " "))
            raise err
        assert seen is not None
        # The broken attempt is over: its connection closed, its node held to the failure.
        cur, self.current = self.current, None
        if cur is not None:
            cur.fault = err
            try:
                await cur.aclose()
            except Exception:
                log.exception("closing a broken stream's attempt failed")
        self.cont = Continuation(seen)
        try:
            nxt = await self.reopen(self, _encode(body), left)
        except RouterError as e:
            failed: RouterError | None = e
        else:
            failed = None
        if failed is not None:
            self.observer.stream_resume(self.name, "failed")
            log.warning("backend %s: node %s broke off a stream (%s) after %d completion tokens; "
                        "no node could continue it: %s", self.name, broken,
                        err.code or err.type, seen.tokens, escaped(failed.message))
            raise err
        self.current = nxt
        self.observer.stream_resume(self.name, "resumed")
        log.warning("backend %s: node %s broke off a stream (%s) after %d completion tokens; "
                    "node %s continues it", self.name, broken, err.code or err.type,
                    seen.tokens, stats.node)
        return nxt

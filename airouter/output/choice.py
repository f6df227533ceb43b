"""One choice of a generated answer: clean text in, chunk payloads out (content, reasoning,
tool-call deltas in OpenAI's exact shape, logprobs, the finish reason)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from airouter.output.chunks import ChunkWriter
from airouter.output.events import (
    CallArgs,
    CallStart,
    Event,
    OutputParser,
    Reasoning,
    Text,
)


def call_id() -> str:
    return "call_" + os.urandom(12).hex()


class ChoiceStream:
    """Writes one choice. Without a parser or logprobs each text delta costs one chunk encode.

    Invariants: a tool call's first delta carries `id`, `type`, `name` and `arguments: ""`,
    later ones only `arguments` fragments; calls are numbered from 0 in the order they start;
    with `parallel` false only the first call is sent. Logprobs wait for the next content
    delta (text held back by stop-sequence matching arrives later); those of text that never
    reaches the client as content (reasoning, a tool call's markup) are dropped.
    """

    __slots__ = (
        "writer",
        "parser",
        "parallel",
        "reason",
        "calls",
        "top",
        "_lp",
        "_chat",
        "_offset",
    )

    def __init__(
        self,
        writer: ChunkWriter,
        parser: OutputParser | None = None,
        *,
        parallel: bool = True,
        logprobs: bool = False,
        top_logprobs: int = 0,
        chat: bool = True,
    ) -> None:
        self.writer = writer
        self.parser = parser
        self.parallel = parallel
        self.reason = "stop"
        self.calls = 0
        # How many alternatives each token's logprobs carry (the backend reader uses it).
        self.top = top_logprobs
        self._lp: list[dict[str, Any]] | None = [] if logprobs else None
        self._chat = chat
        self._offset = 0

    def logprobs(self, entries: list[dict[str, Any]]) -> None:
        """Token logprobs in the chat shape ({token, logprob, bytes, top_logprobs})."""
        if self._lp is not None:
            self._lp.extend(entries)

    def text(self, text: str) -> list[bytes]:
        if self.parser is not None:
            return self._events(self.parser.feed(text))
        if self._lp is None:
            return [self.writer.text(text)]
        return [self._content(text)]

    def finish(self, reason: str, stop_reason: str | None = None) -> list[bytes]:
        out = self._events(self.parser.finish()) if self.parser is not None else []
        if self.calls and reason == "stop":
            reason = "tool_calls"
        self.reason = reason
        out.append(self.writer.finish(reason, stop_reason if reason == "stop" else None))
        return out

    def _content(self, text: str) -> bytes:
        lp = self._lp
        if not lp:
            return self.writer.text(text)
        self._lp = []
        if self.parser is not None:
            # Markup the parser swallowed also had tokens: the last tokens that fit in this
            # text are its own, earlier ones were markup. None fits: the text is held back.
            room, k = len(text), len(lp)
            while k and len(lp[k - 1]["token"]) <= room:
                k -= 1
                room -= len(lp[k]["token"])
            if k == len(lp):
                self._lp = lp
                return self.writer.text(text)
            lp = lp[k:]
        if self._chat:
            return self.writer.text_logprobs(text, lp)
        offsets = []
        for e in lp:
            offsets.append(self._offset)
            self._offset += len(e["token"])
        legacy = {
            "tokens": [e["token"] for e in lp],
            "token_logprobs": [e["logprob"] for e in lp],
            "top_logprobs": [{t["token"]: t["logprob"] for t in e["top_logprobs"]} for e in lp],
            "text_offset": offsets,
        }
        return self.writer.text_logprobs(text, legacy)

    def _events(self, events: Sequence[Event]) -> list[bytes]:
        out: list[bytes] = []
        w = self.writer
        for ev in events:
            if isinstance(ev, Text):
                if ev.text:
                    out.append(self._content(ev.text))
                continue
            if self._lp:
                # Reasoning or call markup consumed these tokens: they describe no content.
                self._lp = []
            if isinstance(ev, Reasoning):
                if ev.text:
                    out.append(w.reasoning(ev.text))
            elif isinstance(ev, CallStart):
                if self.parallel or ev.index == 0:
                    self.calls += 1
                    out.append(w.call_start(ev.index, call_id(), ev.name))
            elif isinstance(ev, CallArgs) and ev.fragment and (self.parallel or ev.index == 0):
                out.append(w.call_args(ev.index, ev.fragment))
        return out

"""Hermes tool calls (Qwen 2.5/3, Hermes 2/3): ``<tool_call>{"name": ..., "arguments": {...}}
</tool_call>``, any number of them, anywhere in the answer.

Policy:

* Text outside the tags is ``Text``. Whitespace-only runs before, between or after calls are
  markup (dropped) unless more text follows them; an output of only whitespace stays text.
* A call starts (``CallStart``) once its name is complete and allowed; its arguments stream.
* Before the start, anything wrong (not JSON, no or unknown name, unterminated at the end)
  turns the raw text from ``<tool_call>`` up to the fault into ``Text``; scanning for the next
  tag resumes at the fault.
* After the start, a fault closes the call with the valid JSON sent so far completed
  (``{"a": "tru`` -> ``{"a": "tru"}``), and the rest up to ``</tool_call>`` is dropped. At the
  end of the stream an open call is closed the same way. A missing ``</tool_call>`` after a
  complete object is tolerated: what follows is text again.
"""

from __future__ import annotations

from collections.abc import Sequence

from airouter.output.events import Event
from airouter.output.marks import WS_RUN, partial_start
from airouter.output.tools.base import CallObject
from airouter.output.tools.parser import GAP, TEXT, TaggedParser

__all__ = ["HermesParser"]

_CLOSE = "</tool_call>"

_CALL, _END, _DROP = range(2, 5)


class HermesParser(TaggedParser):
    """Sans-IO parser of Hermes ``<tool_call>`` markup (see the module doc for the policy)."""

    __slots__ = ("_obj",)

    tag = "<tool_call>"

    def __init__(self, tools: Sequence[str] | None = None) -> None:
        super().__init__(tools)
        self._obj = CallObject(self._log)

    def _opened(self) -> None:
        self._state = _CALL
        self._obj = CallObject(self._log)

    def _step(self, s: str, i: int, out: list[Event]) -> int:
        state = self._state
        n = len(s)
        if state == _CALL:
            obj = self._obj
            j = self._feed_call(obj, s, i, out)
            if obj.failed:
                self._state = _DROP if obj.started else TEXT
            elif obj.done:
                self._state = _END
            return j
        if state == _END:
            i = WS_RUN.match(s, i).end()  # type: ignore[union-attr]
            if i >= n:
                return n
            if s.startswith(_CLOSE, i):
                self._state = GAP
                return i + len(_CLOSE)
            if n - i < len(_CLOSE) and _CLOSE.startswith(s[i:]):
                self._tail = s[i:]
                return n
            self._state = TEXT
            return i
        # _DROP
        p = s.find(_CLOSE, i)
        if p < 0:
            self._tail = s[partial_start(s, i, _CLOSE) :]
            return n
        self._state = GAP
        return p + len(_CLOSE)

    def _finish_call(self, out: list[Event], state: int) -> None:
        if state == _CALL:
            self._end_call(self._obj, out)

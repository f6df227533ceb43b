"""Llama 3.1-3.3 JSON tool calls: the output *is* the calls, ``{"name": "f", "parameters":
{...}}`` (or ``"arguments"``), optionally after ``<|python_tag|>``, several joined by ``;``.

Policy:

* Calls are recognised only when the output opens with one (after whitespace and an optional
  ``<|python_tag|>``); any other output is plain ``Text`` from the first character on.
* A call starts once its name is complete and allowed; its arguments stream.
* Before the start, anything wrong (not a call object, no or unknown name, unterminated at the
  end) turns the raw text of that call, with the separator before it, into ``Text``, and the
  rest of the output is plain text.
* After the start, a fault closes the call with the valid JSON sent so far completed; the rest
  of the output from the fault on is plain text. An open call is closed the same way at the end.
* Whitespace and ``;`` between or after calls are markup; text after the last call (other than
  another call) is ``Text``, with the separators before it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from airouter.output.events import Event
from airouter.output.marks import WS_RUN
from airouter.output.tools.base import CallObject
from airouter.output.tools.parser import PLAIN, START, OpeningParser

__all__ = ["Llama3JsonParser"]

_TAG = "<|python_tag|>"
_SEP_RUN = re.compile(r"[\s;]*")
_CALL, _SEP = range(2, 4)


class Llama3JsonParser(OpeningParser):
    """Sans-IO parser of Llama 3 JSON tool calls (see the module doc for the policy)."""

    __slots__ = ("_tagged", "_obj")

    def __init__(self, tools: Sequence[str] | None = None) -> None:
        super().__init__(tools)  # ``_held``: leading whitespace/tag, or separators after a call
        self._tagged = False
        self._obj = CallObject(self._log)

    def _step(self, s: str, i: int, out: list[Event]) -> int:
        state = self._state
        if state == _CALL:
            return self._call(s, i, out)
        # START or _SEP: skip whitespace (and ';' between calls), then look for a call.
        n = len(s)
        run = WS_RUN if state == START else _SEP_RUN
        j = run.match(s, i).end()  # type: ignore[union-attr]
        if j > i:
            self._held.append(s[i:j])
            i = j
        if i >= n:
            return n
        if s[i] == "{":
            self._raw = self._held
            self._held = []
            self._obj = CallObject(self._log)
            self._state = _CALL
        elif not self._tagged and s.startswith(_TAG, i):
            self._tagged = True
            self._held.append(_TAG)
            i += len(_TAG)
        elif not self._tagged and n - i < len(_TAG) and _TAG.startswith(s[i:]):
            self._tail = s[i:]
            return n
        else:
            self._plain(out)
        return i

    def _call(self, s: str, i: int, out: list[Event]) -> int:
        obj = self._obj
        j = self._feed_call(obj, s, i, out)
        if obj.failed:
            self._state = PLAIN
        elif obj.done:
            self._state = _SEP
            self._tagged = True  # one tag at most, before the first call
        return j

    def _finish_call(self, out: list[Event], state: int) -> None:
        if state == _CALL:
            self._end_call(self._obj, out)

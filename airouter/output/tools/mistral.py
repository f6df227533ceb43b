"""Mistral tool calls: ``[TOOL_CALLS]`` then a JSON array of ``{"name", "arguments"}`` objects
(or a single object), or the newer ``[TOOL_CALLS]name[ARGS]{...}`` form (with an optional
``[CALL_ID]id`` before ``[ARGS]``), repeated for each call.

Policy:

* Text outside the markup is ``Text``; ``[TOOL_CALLS]`` may come after some text.
  Whitespace-only runs before, between or after calls are markup (dropped) unless more text
  follows them; an output of only whitespace stays text.
* A call starts once its name is complete and allowed (for ``name[ARGS]``, at ``[ARGS]``);
  its arguments stream.
* Before the start, anything wrong (not a call, unknown name, unterminated at the end) turns
  the raw text since ``[TOOL_CALLS]`` (or since the previous call of the array) into ``Text``,
  and scanning goes on for the next ``[TOOL_CALLS]`` from the fault.
* After the start, a fault closes the call with the valid JSON sent so far completed, and the
  text from the fault on is scanned as text again. An open call is closed so at the end; an
  unterminated array after complete calls is dropped.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from airouter.output.events import CallArgs, Event
from airouter.output.jsonscan import JsonScan
from airouter.output.marks import WS_RUN
from airouter.output.tools.base import CallObject, emit_text
from airouter.output.tools.parser import GAP, TEXT, TaggedParser

__all__ = ["MistralParser"]

_ARGS = "[ARGS]"
_CALL_ID = "[CALL_ID]"
_NAME_RUN = re.compile(r"[A-Za-z0-9_.\-]*")
_ID_RUN = re.compile(r"[A-Za-z0-9_\-]*")
_NAME_MAX = 256

(
    _AFTER_TAG,
    _ARRAY,
    _ELEM,
    _ARR_NEXT,
    _SINGLE,
    _NAME,
    _ID,
    _ARGS_START,
    _ARGS_JSON,
) = range(2, 11)


class MistralParser(TaggedParser):
    """Sans-IO parser of Mistral ``[TOOL_CALLS]`` markup (see the module doc for the policy)."""

    __slots__ = ("_obj", "_name", "_scan", "_index", "_group")

    tag = "[TOOL_CALLS]"

    def __init__(self, tools: Sequence[str] | None = None) -> None:
        super().__init__(tools)  # ``_raw``: markup since the last started call, text if it fails
        self._obj = CallObject(self._log)
        self._name: list[str] = []
        self._scan = JsonScan(capture=True)
        self._index = -1  # the started ``name[ARGS]`` call
        self._group = False  # a call of this [TOOL_CALLS] group started

    def _opened(self) -> None:
        self._state = _AFTER_TAG
        self._group = False

    def _step(self, s: str, i: int, out: list[Event]) -> int:
        state = self._state
        if state == _ELEM or state == _SINGLE:
            return self._element(s, i, out)
        if state == _NAME or state == _ID:
            return self._name_part(s, i, out)
        if state == _ARGS_START:
            return self._args_start(s, i, out)
        if state == _ARGS_JSON:
            return self._args(s, i, out)
        return self._structure(s, i, out)

    def _fail(self, out: list[Event], i: int) -> int:
        # Not a call after all: its raw text is text, and scanning goes on from ``i``.
        emit_text(out, "".join(self._raw))
        self._raw = []
        self._state = TEXT
        return i

    def _structure(self, s: str, i: int, out: list[Event]) -> int:
        j = WS_RUN.match(s, i).end()  # type: ignore[union-attr]
        if j > i:
            self._raw.append(s[i:j])
            i = j
        if i >= len(s):
            return i
        c = s[i]
        state = self._state
        if state == _AFTER_TAG:
            if c == "[":
                self._raw.append(c)
                self._state = _ARRAY
                return i + 1
            if c == "{":
                self._obj = CallObject(self._log)
                self._state = _SINGLE
                return i
            self._name = []
            self._state = _NAME
            return i
        if state == _ARRAY and c == "{":
            self._obj = CallObject(self._log)
            self._state = _ELEM
            return i
        if state == _ARR_NEXT and c == ",":
            self._raw.append(c)
            self._state = _ARRAY
            return i + 1
        if c == "]" and (state == _ARR_NEXT or state == _ARRAY):
            if not self._group:  # "[]" calls nothing: it stays text
                self._raw.append(c)
                return self._fail(out, i + 1)
            self._raw = []
            self._state = GAP
            return i + 1
        if self._group:
            self._raw = []
            self._state = TEXT
            return i
        return self._fail(out, i)

    def _element(self, s: str, i: int, out: list[Event]) -> int:
        obj = self._obj
        j = self._feed_call(obj, s, i, out)
        if obj.started:
            self._group = True
        if obj.failed:
            self._state = TEXT
        elif obj.done:
            self._state = _ARR_NEXT if self._state == _ELEM else GAP
        return j

    def _name_part(self, s: str, i: int, out: list[Event]) -> int:
        n = len(s)
        run = _NAME_RUN if self._state == _NAME else _ID_RUN
        j = run.match(s, i).end()  # type: ignore[union-attr]
        if j > i:
            self._raw.append(s[i:j])
            if self._state == _NAME:
                self._name.append(s[i:j])
                if sum(map(len, self._name)) > _NAME_MAX:
                    return self._fail(out, j)
            i = j
        if i >= n:
            return i
        if s.startswith(_ARGS, i):
            name = "".join(self._name)
            if not self._log.allowed(name):
                return self._fail(out, i)
            self._index = self._log.start(out, name)
            self._group = True
            self._raw = []
            self._scan = JsonScan(capture=True)
            self._state = _ARGS_START
            return i + len(_ARGS)
        if self._state == _NAME and s.startswith(_CALL_ID, i):
            self._raw.append(_CALL_ID)
            self._state = _ID
            return i + len(_CALL_ID)
        rest = s[i:] if n - i < len(_CALL_ID) else ""
        if rest and (_ARGS.startswith(rest) or _CALL_ID.startswith(rest)):
            self._tail = rest
            return n
        return self._fail(out, i)

    def _args(self, s: str, i: int, out: list[Event]) -> int:
        scan = self._scan
        j = scan.feed(s, i)
        frag = scan.take()
        if scan.error:
            frag += scan.completion()
        if frag:
            out.append(CallArgs(self._index, frag))
        if scan.error:
            self._state = TEXT
        elif scan.done:
            self._state = GAP
        return j

    def _args_start(self, s: str, i: int, out: list[Event]) -> int:
        i = WS_RUN.match(s, i).end()  # type: ignore[union-attr]
        if i < len(s):
            if s[i] == "{":
                self._state = _ARGS_JSON
            else:
                out.append(CallArgs(self._index, "{}"))
                self._state = TEXT
        return i

    def _finish_call(self, out: list[Event], state: int) -> None:
        if state == _ARGS_START:
            out.append(CallArgs(self._index, "{}"))
        elif state == _ARGS_JSON:
            out.append(CallArgs(self._index, self._scan.take() + self._scan.completion()))
        elif (state == _ELEM or state == _SINGLE) and self._obj.started:
            self._obj.close(out)
        elif not self._group or state in (_NAME, _ID, _ELEM, _SINGLE):
            emit_text(out, "".join(self._raw) + self._tail)

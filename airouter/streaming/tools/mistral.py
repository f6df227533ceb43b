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

from airouter.streaming.jsonscan import JsonScan
from airouter.streaming.marks import WS_RUN, partial_start
from airouter.streaming.parsed import CallArgs, Event, Text
from airouter.streaming.tools.base import CallLog, CallObject, emit_text

__all__ = ["MistralParser"]

_TAG = "[TOOL_CALLS]"
_ARGS = "[ARGS]"
_CALL_ID = "[CALL_ID]"
_NAME_RUN = re.compile(r"[A-Za-z0-9_.\-]*")
_ID_RUN = re.compile(r"[A-Za-z0-9_\-]*")
_NAME_MAX = 256

(
    _TEXT,
    _GAP,
    _AFTER_TAG,
    _ARRAY,
    _ELEM,
    _ARR_NEXT,
    _SINGLE,
    _NAME,
    _ID,
    _ARGS_START,
    _ARGS_JSON,
) = range(11)


class MistralParser:
    """Sans-IO parser of Mistral ``[TOOL_CALLS]`` markup (see the module doc for the policy)."""

    __slots__ = (
        "_log",
        "_state",
        "_tail",
        "_gap",
        "_raw",
        "_obj",
        "_name",
        "_scan",
        "_index",
        "_group",
        "_scanned",
    )

    def __init__(self, tools: Sequence[str] | None = None) -> None:
        self._log = CallLog(tools)
        self._state = _GAP  # leading whitespace is dropped if a call follows it
        self._tail = ""  # a possible partial tag, scanned again with the next piece
        self._gap: list[str] = []  # whitespace before a call or after one
        self._raw: list[str] = []  # markup since the last started call, text if it fails
        self._obj = CallObject(self._log)
        self._name: list[str] = []
        self._scan = JsonScan(capture=True)
        self._index = -1  # the started ``name[ARGS]`` call
        self._group = False  # a call of this [TOOL_CALLS] group started
        self._scanned = 0

    @property
    def called(self) -> bool:
        return self._log.count > 0

    @property
    def scanned(self) -> int:
        """Characters looked at so far (held-back ones count each time they are looked at)."""
        return self._scanned + self._log.scanned

    def feed(self, text: str) -> list[Event]:
        if self._state == _TEXT and not self._tail and "[" not in text:
            self._scanned += len(text)
            return [Text(text)] if text else []
        s = self._tail + text if self._tail else text
        self._tail = ""
        self._scanned += len(s)
        out: list[Event] = []
        i, n = 0, len(s)
        while i < n:
            state = self._state
            if state == _TEXT:
                p = s.find(_TAG, i)
                if p < 0:
                    q = partial_start(s, i, _TAG)
                    emit_text(out, s[i:q])
                    self._tail = s[q:]
                    break
                emit_text(out, s[i:p])
                i = self._open(p)
            elif state == _GAP:
                j = WS_RUN.match(s, i).end()  # type: ignore[union-attr]
                if j > i:
                    self._gap.append(s[i:j])
                    i = j
                if i >= n:
                    break
                if s.startswith(_TAG, i):
                    i = self._open(i)
                elif n - i < len(_TAG) and _TAG.startswith(s[i:]):
                    self._tail = s[i:]
                    break
                else:
                    emit_text(out, "".join(self._gap))
                    self._gap.clear()
                    self._state = _TEXT
            elif state == _ELEM or state == _SINGLE:
                i = self._element(s, i, out)
            elif state == _NAME or state == _ID:
                i = self._name_part(s, i, out)
            elif state == _ARGS_START:
                i = self._args_start(s, i, out)
            elif state == _ARGS_JSON:
                i = self._args(s, i, out)
            else:
                i = self._structure(s, i, out)
        return out

    def _open(self, p: int) -> int:
        self._state = _AFTER_TAG
        self._raw = self._gap  # the whitespace before stays text if this is no call
        self._raw.append(_TAG)
        self._gap = []
        self._group = False
        return p + len(_TAG)

    def _fail(self, out: list[Event], i: int) -> int:
        # Not a call after all: its raw text is text, and scanning goes on from ``i``.
        emit_text(out, "".join(self._raw))
        self._raw = []
        self._state = _TEXT
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
            self._state = _GAP
            return i + 1
        if self._group:
            self._raw = []
            self._state = _TEXT
            return i
        return self._fail(out, i)

    def _element(self, s: str, i: int, out: list[Event]) -> int:
        obj = self._obj
        j = obj.feed(s, i, out)
        if obj.started:
            self._group = True
            self._raw = []
        else:
            self._raw.append(s[i:j])
        if obj.failed:
            if not obj.started:
                return self._fail(out, j)
            self._state = _TEXT
        elif obj.done:
            self._state = _ARR_NEXT if self._state == _ELEM else _GAP
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
            self._state = _TEXT
        elif scan.done:
            self._state = _GAP
        return j

    def _args_start(self, s: str, i: int, out: list[Event]) -> int:
        i = WS_RUN.match(s, i).end()  # type: ignore[union-attr]
        if i < len(s):
            if s[i] == "{":
                self._state = _ARGS_JSON
            else:
                out.append(CallArgs(self._index, "{}"))
                self._state = _TEXT
        return i

    def finish(self) -> list[Event]:
        out: list[Event] = []
        state = self._state
        if state == _TEXT:
            emit_text(out, self._tail)
        elif state == _GAP:
            if self._tail or not self.called:
                emit_text(out, "".join(self._gap) + self._tail)
        elif state == _ARGS_START:
            out.append(CallArgs(self._index, "{}"))
        elif state == _ARGS_JSON:
            out.append(CallArgs(self._index, self._scan.take() + self._scan.completion()))
        elif (state == _ELEM or state == _SINGLE) and self._obj.started:
            self._obj.close(out)
        elif not self._group or state in (_NAME, _ID, _ELEM, _SINGLE):
            emit_text(out, "".join(self._raw) + self._tail)
        self._tail = ""
        self._gap.clear()
        self._raw = []
        self._state = _TEXT
        return out

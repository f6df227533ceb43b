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

from airouter.streaming.marks import WS_RUN, partial_start
from airouter.streaming.parsed import Event, Text
from airouter.streaming.tools.base import CallLog, CallObject, emit_text

__all__ = ["HermesParser"]

_OPEN = "<tool_call>"
_CLOSE = "</tool_call>"

_TEXT, _GAP, _CALL, _END, _DROP = range(5)


class HermesParser:
    """Sans-IO parser of Hermes ``<tool_call>`` markup (see the module doc for the policy)."""

    __slots__ = ("_log", "_state", "_tail", "_gap", "_obj", "_raw", "_scanned")

    def __init__(self, tools: Sequence[str] | None = None) -> None:
        self._log = CallLog(tools)
        self._state = _GAP  # leading whitespace is dropped if a call follows it
        self._tail = ""  # a possible partial tag, scanned again with the next piece
        self._gap: list[str] = []  # whitespace before a call or after one
        self._obj = CallObject(self._log)
        self._raw: list[str] = []  # the current call's text while it may still be plain text
        self._scanned = 0

    @property
    def called(self) -> bool:
        return self._log.count > 0

    @property
    def scanned(self) -> int:
        """Characters looked at so far (held-back ones count each time they are looked at)."""
        return self._scanned + self._log.scanned

    def feed(self, text: str) -> list[Event]:
        if self._state == _TEXT and not self._tail and "<" not in text:
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
                p = s.find(_OPEN, i)
                if p < 0:
                    q = partial_start(s, i, _OPEN)
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
                if s.startswith(_OPEN, i):
                    i = self._open(i)
                elif n - i < len(_OPEN) and _OPEN.startswith(s[i:]):
                    self._tail = s[i:]
                    break
                else:
                    emit_text(out, "".join(self._gap))
                    self._gap.clear()
                    self._state = _TEXT
            elif state == _CALL:
                obj = self._obj
                j = obj.feed(s, i, out)
                if not obj.started:
                    self._raw.append(s[i:j])
                if obj.failed:
                    if obj.started:
                        self._state = _DROP
                    else:
                        emit_text(out, "".join(self._raw))
                        self._state = _TEXT
                elif obj.done:
                    self._state = _END
                i = j
                if obj.started:
                    self._raw.clear()
            elif state == _END:
                i = WS_RUN.match(s, i).end()  # type: ignore[union-attr]
                if i >= n:
                    break
                if s.startswith(_CLOSE, i):
                    self._state = _GAP
                    i += len(_CLOSE)
                elif n - i < len(_CLOSE) and _CLOSE.startswith(s[i:]):
                    self._tail = s[i:]
                    break
                else:
                    self._state = _TEXT
            else:  # _DROP
                p = s.find(_CLOSE, i)
                if p < 0:
                    self._tail = s[partial_start(s, i, _CLOSE) :]
                    break
                self._state = _GAP
                i = p + len(_CLOSE)
        return out

    def _open(self, p: int) -> int:
        self._state = _CALL
        self._obj = CallObject(self._log)
        self._raw = self._gap  # the whitespace before stays text if this is no call
        self._raw.append(_OPEN)
        self._gap = []
        return p + len(_OPEN)

    def finish(self) -> list[Event]:
        out: list[Event] = []
        state = self._state
        if state == _TEXT:
            emit_text(out, self._tail)
        elif state == _GAP:
            if self._tail or not self.called:
                emit_text(out, "".join(self._gap) + self._tail)
        elif state == _CALL:
            if self._obj.started:
                self._obj.close(out)
            else:
                emit_text(out, "".join(self._raw))
        self._tail = ""
        self._gap.clear()
        self._raw = []
        self._state = _TEXT
        return out

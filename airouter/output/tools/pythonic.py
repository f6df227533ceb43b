"""Pythonic tool calls (Llama 3.2/4, others): the output is a Python list of calls with keyword
arguments, ``[get_weather(city="Paris", days=3), search(q='x')]``, optionally between Llama 4's
``<|python_start|>`` and ``<|python_end|>``.

Argument values are Python literals (strings in any quoting, numbers, ``True``/``False``/
``None``, lists, tuples, dicts) and become JSON; each argument is sent when its value is
complete (``{"city": "Paris"``, then ``, "days": 3``, then ``}``).

Policy:

* Calls are recognised only when the output opens with ``[`` and a name (after whitespace and
  the optional start tag); any other output is plain ``Text`` from the first character on.
* A call starts at ``name(`` when the name is allowed.
* Before the start, anything wrong (an unknown name, no ``(``, unterminated at the end) turns
  the raw text of that call, with the separator before it, into ``Text``; the rest of the
  output is plain text.
* After the start, a fault (a positional argument, a value that is not a literal or has no
  JSON form) closes the call with the arguments sent so far; the rest of the output from the
  fault on is plain text. An open call is closed so at the end.
* Text after the closing ``]`` (and the optional end tag) is ``Text``.
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Sequence

from airouter.output.events import CallArgs, Event
from airouter.output.marks import WS_RUN
from airouter.output.tools.base import emit_text
from airouter.output.tools.parser import PLAIN, START, OpeningParser

__all__ = ["PythonicParser"]

_START_TAG = "<|python_start|>"
_END_TAG = "<|python_end|>"
_IDENT = re.compile(r"[A-Za-z_][\w.]*")
_IDENT_RUN = re.compile(r"[\w.]*")
_KW_RUN = re.compile(r"\w*")
_NAME_MAX = 256

(_LIST, _NAME, _KW_START, _KW, _EQ, _VALUE, _AFTER_CALL, _END) = range(2, 10)


class PythonicParser(OpeningParser):
    """Sans-IO parser of a pythonic call list (see the module doc for the policy)."""

    __slots__ = ("_name", "_kw", "_value", "_index", "_sent")

    def __init__(self, tools: Sequence[str] | None = None) -> None:
        # ``_tail`` also holds back a partial quote run
        super().__init__(tools)
        self._name: list[str] = []
        self._kw: list[str] = []
        self._value = _PyValue()
        self._index = -1
        self._sent = False  # an argument of the current call was sent

    def _step(self, s: str, i: int, out: list[Event]) -> int:
        state = self._state
        if state == _NAME or state == _KW:
            return self._word(s, i, out)
        if state == _VALUE:
            return self._arg(s, i, out)
        n = len(s)
        j = WS_RUN.match(s, i).end()  # type: ignore[union-attr]
        if j > i:
            (self._held if state == START or state == _END else self._raw).append(s[i:j])
            i = j
        if i >= n:
            return n
        if state == START or state == _END:
            tag = _START_TAG if state == START else _END_TAG
            if state == START and s[i] == "[":
                self._raw = self._held
                self._raw.append("[")
                self._held = []
                self._state = _LIST
                i += 1
            elif s.startswith(tag, i):
                self._held.append(tag)
                i += len(tag)
            elif n - i < len(tag) and tag.startswith(s[i:]):
                self._tail = s[i:]
                return n
            else:
                self._plain(out)
            return i
        return self._punct(s, i, out)

    def _fail(self, out: list[Event], i: int) -> int:
        # Not a call after all, or a broken one: close it, and the rest is text.
        if self._index >= 0:
            self._close(out)
        else:
            emit_text(out, "".join(self._raw))
        self._raw = []
        self._state = PLAIN
        return i

    def _close(self, out: list[Event]) -> None:
        out.append(CallArgs(self._index, "}" if self._sent else "{}"))
        self._index = -1

    def _punct(self, s: str, i: int, out: list[Event]) -> int:
        c = s[i]
        state = self._state
        if state == _LIST:
            if not _IDENT.match(c):
                return self._fail(out, i)
            self._name = []
            self._state = _NAME
            return i
        if state == _KW_START:
            if c == ")":
                self._close(out)
                self._state = _AFTER_CALL
                return i + 1
            if not _IDENT.match(c):
                return self._fail(out, i)
            self._kw = []
            self._state = _KW
            return i
        if state == _EQ:
            if c != "=":
                return self._fail(out, i)
            self._value = _PyValue()
            self._state = _VALUE
            return i + 1
        # _AFTER_CALL
        if c == ",":
            self._raw = [c]
            self._state = _LIST
            return i + 1
        if c == "]":
            self._raw = []
            self._state = _END
            return i + 1
        return self._fail(out, i)

    def _word(self, s: str, i: int, out: list[Event]) -> int:
        n = len(s)
        is_name = self._state == _NAME
        j = (_IDENT_RUN if is_name else _KW_RUN).match(s, i).end()  # type: ignore[union-attr]
        if j > i:
            part = s[i:j]
            (self._name if is_name else self._kw).append(part)
            if is_name:
                self._raw.append(part)
                if sum(map(len, self._name)) > _NAME_MAX:
                    return self._fail(out, j)
            i = j
        if i >= n:
            return i
        if not is_name:
            self._state = _EQ
            return i
        name = "".join(self._name)
        if s[i] != "(" or not self._log.allowed(name):
            return self._fail(out, i)
        self._index = self._log.start(out, name)
        self._sent = False
        self._raw = []
        self._state = _KW_START
        return i + 1

    def _arg(self, s: str, i: int, out: list[Event]) -> int:
        value = self._value
        j = value.feed(s, i)
        if value.error:
            return self._fail(out, j)
        if not value.done:
            self._tail = s[j:]
            return len(s)
        as_json = value.to_json()
        if as_json is None:
            return self._fail(out, j)
        head = ", " if self._sent else "{"
        out.append(CallArgs(self._index, head + json.dumps("".join(self._kw)) + ": " + as_json))
        self._sent = True
        if s[j] == ",":
            self._state = _KW_START
        else:
            self._close(out)
            self._state = _AFTER_CALL
        return j + 1

    def _finish_call(self, out: list[Event], state: int) -> None:
        if state != _END:
            if self._index >= 0:
                self._close(out)
            elif state != _AFTER_CALL:
                emit_text(out, "".join(self._raw) + self._tail)


_BORING = re.compile(r"[^'\"()\[\]{},]*")
_DEPTH_MAX = 64


class _PyValue:
    """Finds the end of one Python literal (a ``,`` or ``)`` outside brackets and strings)."""

    __slots__ = ("done", "error", "_parts", "_depth", "_quote", "_esc")

    def __init__(self) -> None:
        self.done = False
        self.error = False
        self._parts: list[str] = []
        self._depth = 0
        self._quote = ""  # the open string's delimiter: ' " ''' or \"\"\"
        self._esc = False

    def feed(self, s: str, i: int) -> int:
        """Scan from ``i``; return the terminator's index (``done``), or where more text is
        needed to decide (a quote run cut at the end of ``s``)."""
        start = i
        n = len(s)
        while i < n:
            quote = self._quote
            if quote:
                if self._esc:
                    self._esc = False
                    i += 1
                    continue
                c = s[i]
                if c == "\\":
                    self._esc = True
                    i += 1
                    continue
                if not s.startswith(quote, i):
                    if len(quote) == 3 and n - i < 3 and quote.startswith(s[i:]):
                        break
                    i += 1
                    continue
                self._quote = ""
                i += len(quote)
                continue
            i = _BORING.match(s, i).end()  # type: ignore[union-attr]
            if i >= n:
                break
            c = s[i]
            if c == "'" or c == '"':
                if n - i < 3:
                    if s[i:] == c * (n - i):
                        break  # '' or ' at the end: maybe an opening triple quote
                    self._quote = c
                    i += 1
                elif s.startswith(c * 3, i):
                    self._quote = c * 3
                    i += 3
                else:
                    self._quote = c
                    i += 1
            elif c in "([{":
                self._depth += 1
                if self._depth > _DEPTH_MAX:
                    self.error = True
                    break
                i += 1
            elif self._depth == 0 and (c == "," or c == ")"):
                self.done = True
                break
            elif c in ")]}":
                if self._depth == 0:
                    self.error = True
                    break
                self._depth -= 1
                i += 1
            else:  # ',' inside brackets
                i += 1
        self._parts.append(s[start:i])
        return i

    def to_json(self) -> str | None:
        """The JSON text of the complete literal, or None if it is not one."""
        text = "".join(self._parts).strip()
        try:
            return json.dumps(ast.literal_eval(text), ensure_ascii=False, allow_nan=False)
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
            return None

"""Pieces shared by the tool-call formats: the call log and the JSON call
object ``{"name": ..., "arguments": {...}}`` streamed as it arrives."""

from __future__ import annotations

import json
from collections.abc import Sequence

from airouter.output.events import CallArgs, CallStart, Event, Text
from airouter.output.jsonscan import JsonScan
from airouter.output.marks import WS_RUN

__all__ = ["CallLog", "CallObject", "emit_text"]

_ARG_KEYS = frozenset({"arguments", "parameters"})


def emit_text(out: list[Event], text: str) -> None:
    if text:
        out.append(Text(text))


class CallLog:
    """What the calls of one output share: the allowed names, the next index, work done."""

    __slots__ = ("tools", "count", "scanned")

    def __init__(self, tools: Sequence[str] | None) -> None:
        self.tools = None if tools is None else frozenset(tools)
        self.count = 0
        self.scanned = 0

    def allowed(self, name: object) -> bool:
        return isinstance(name, str) and name != "" and (self.tools is None or name in self.tools)

    def start(self, out: list[Event], name: str) -> int:
        index = self.count
        self.count += 1
        out.append(CallStart(index, name))
        return index


# CallObject states
_OPEN, _KEY_FIRST, _KEY_NEXT, _KEY, _COLON, _VALUE_START, _VALUE, _AFTER = range(8)
# what the value being scanned is
_V_NAME, _V_ARGS, _V_ARGS_STR, _V_SKIP = range(4)


class CallObject:
    """One ``{"name": "f", "arguments": {...}}`` object (``parameters`` is taken too).

    ``CallStart`` is emitted as soon as the name is complete and allowed; the arguments object
    streams as ``CallArgs`` from then on (arguments that come before the name wait for it;
    arguments given as a JSON string are decoded whole). ``feed`` returns where it stopped:
    after the object's ``}`` (``done``), where the text goes on after a failure (``failed``), or
    the end of ``s``. Before the start a failure means "not a call" (the caller turns the raw
    text into ``Text``); after it, the call is closed with valid JSON at once (``close``).
    """

    __slots__ = (
        "_log",
        "_state",
        "_scan",
        "_kind",
        "_key",
        "_args",
        "_args_done",
        "index",
        "done",
        "failed",
    )

    def __init__(self, log: CallLog) -> None:
        self._log = log
        self._state = _OPEN
        self._scan = JsonScan()
        self._kind = _V_SKIP
        self._key = ""
        self._args: list[str] | None = None  # arguments seen before the name
        self._args_done = False
        self.index = -1
        self.done = False
        self.failed = False

    @property
    def started(self) -> bool:
        return self.index >= 0

    def close(self, out: list[Event]) -> None:
        """End a started call so its arguments are valid JSON; idempotent."""
        if not self.started or self._args_done:
            return
        self._args_done = True
        if self._kind == _V_ARGS and self._state == _VALUE:
            frag = self._scan.take() + self._scan.completion()
        else:
            frag = "{}"
        out.append(CallArgs(self.index, frag))

    def _fail(self, out: list[Event], i: int) -> int:
        self.failed = True
        self.close(out)
        return i

    def _begin_value(self, c: str) -> bool:
        key = self._key
        if key == "name" and not self.started:
            self._kind = _V_NAME
            ok = c == '"'
        elif key in _ARG_KEYS and self._args is None and not self._args_done:
            self._kind = _V_ARGS if c == "{" else _V_ARGS_STR
            ok = c in '{"'
        else:
            self._kind = _V_SKIP
            ok = True
        self._scan = JsonScan(capture=self._kind != _V_SKIP)
        return ok

    def _value_part(self, out: list[Event]) -> None:
        # Streams argument text while the object scan goes on.
        frag = self._scan.take()
        if not frag:
            return
        if self.started:
            out.append(CallArgs(self.index, frag))
        else:
            if self._args is None:
                self._args = []
            self._args.append(frag)

    def _value_end(self, out: list[Event]) -> bool:
        kind = self._kind
        if kind == _V_SKIP:
            return True
        if kind == _V_ARGS:
            self._value_part(out)
            if self._args is None:
                self._args = []
            self._args_done = self.started
            return True
        text = self._scan.take()
        if kind == _V_ARGS_STR:
            inner = json.loads(text)
            try:
                ok = isinstance(inner, str) and isinstance(json.loads(inner), dict)
            except (ValueError, RecursionError):
                ok = False
            if not ok:
                return False
            if self.started:
                out.append(CallArgs(self.index, inner))
                self._args_done = True
            self._args = [inner]
            return True
        name = json.loads(text)
        if not self._log.allowed(name):
            return False
        self.index = self._log.start(out, name)
        if self._args is not None:
            out.append(CallArgs(self.index, "".join(self._args)))
            self._args_done = True
        return True

    def feed(self, s: str, i: int, out: list[Event]) -> int:
        """Scan ``s[i:]``; return where this object's text stopped (see the class doc)."""
        j = self._feed(s, i, len(s), out)
        self._log.scanned += j - i
        return j

    def _feed(self, s: str, i: int, n: int, out: list[Event]) -> int:
        while i < n:
            state = self._state
            if state == _KEY or state == _VALUE:
                j = self._scan.feed(s, i)
                if self._scan.error:
                    return self._fail(out, j)
                i = j
                if not self._scan.done:
                    if state == _VALUE and self._kind == _V_ARGS:
                        self._value_part(out)
                    return n
                if state == _KEY:
                    key = json.loads(self._scan.take())
                    self._key = key
                    self._state = _COLON
                elif self._value_end(out):
                    self._state = _AFTER
                else:
                    return self._fail(out, i)
                continue
            i = WS_RUN.match(s, i).end()  # type: ignore[union-attr]
            if i >= n:
                return n
            c = s[i]
            if state == _OPEN:
                if c != "{":
                    return self._fail(out, i)
                self._state = _KEY_FIRST
                i += 1
            elif state == _KEY_FIRST or state == _KEY_NEXT:
                if c == "}" and state == _KEY_FIRST:
                    return self._end(out, i + 1)
                if c != '"':
                    return self._fail(out, i)
                self._scan = JsonScan(capture=True)
                self._state = _KEY
            elif state == _COLON:
                if c != ":":
                    return self._fail(out, i)
                self._state = _VALUE_START
                i += 1
            elif state == _VALUE_START:
                if not self._begin_value(c):
                    return self._fail(out, i)
                self._state = _VALUE
            else:  # _AFTER
                if c == "}":
                    return self._end(out, i + 1)
                if c != ",":
                    return self._fail(out, i)
                self._state = _KEY_NEXT
                i += 1
        return n

    def _end(self, out: list[Event], i: int) -> int:
        if not self.started:
            return self._fail(out, i)
        self.close(out)
        self.done = True
        return i

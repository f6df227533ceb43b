"""Pieces shared by the tool-call formats: the call log, the parser state they all keep, the
scan for a call tag in free text, and the JSON call object ``{"name": ..., "arguments":
{...}}`` streamed as it arrives."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import ClassVar

from airouter.streaming.jsonscan import JsonScan
from airouter.streaming.marks import WS_RUN, PieceScan, partial_start
from airouter.streaming.parsed import CallArgs, CallStart, Event, Text

__all__ = [
    "GAP",
    "PLAIN",
    "START",
    "TEXT",
    "CallLog",
    "CallObject",
    "OpeningParser",
    "TaggedParser",
    "ToolParser",
    "emit_text",
]

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


class ToolParser(PieceScan):
    """What every tool-call parser keeps: the call log, its state, and the raw text of a call
    that may still turn out to be text."""

    __slots__ = ("_log", "_state", "_raw")

    def __init__(self, tools: Sequence[str] | None, state: int) -> None:
        super().__init__()
        self._log = CallLog(tools)
        self._state = state
        self._raw: list[str] = []  # the current call's text while it may still be plain text

    @property
    def called(self) -> bool:
        return self._log.count > 0

    @property
    def scanned(self) -> int:
        """Characters looked at so far (held-back ones count each time they are looked at)."""
        return self._scanned + self._log.scanned

    def _feed_call(self, obj: CallObject, s: str, i: int, out: list[Event]) -> int:
        """Feed ``obj`` from ``i``. Its raw text is kept until it starts; if it fails before
        that, the raw text is ``Text``."""
        j = obj.feed(s, i, out)
        if obj.started:
            self._raw.clear()
        else:
            self._raw.append(s[i:j])
            if obj.failed:
                emit_text(out, "".join(self._raw))
                self._raw.clear()
        return j

    def _end_call(self, obj: CallObject, out: list[Event]) -> None:
        # The output ended inside ``obj``: close it, or its raw text is ``Text``.
        if obj.started:
            obj.close(out)
        else:
            emit_text(out, "".join(self._raw))


# TaggedParser states; a format's own states are numbered from 2
TEXT, GAP = 0, 1


class TaggedParser(ToolParser):
    """A format whose calls open with ``tag`` anywhere in the text.

    Text outside calls is ``Text``; a whitespace-only run before a call or after one (state
    ``GAP``) is markup, dropped unless more text follows it, and stays text in an output with
    no call. A subclass names the tag, sets its first in-call state in ``_opened`` and scans
    its own states in ``_step`` (returning where it stopped) and ``_finish_call``.
    """

    __slots__ = ("_gap",)

    tag: ClassVar[str]
    _lead: ClassVar[str]  # the tag's first character: text without it holds no tag

    def __init_subclass__(cls) -> None:
        super().__init_subclass__()
        cls._lead = cls.tag[0]

    def __init__(self, tools: Sequence[str] | None) -> None:
        super().__init__(tools, GAP)  # leading whitespace is dropped if a call follows it
        self._gap: list[str] = []  # whitespace before a call or after one

    def feed(self, text: str) -> list[Event]:
        if self._state == TEXT and not self._tail and self._lead not in text:
            self._scanned += len(text)
            return [Text(text)] if text else []
        tag = self.tag
        s = self._resume(text)
        out: list[Event] = []
        i, n = 0, len(s)
        while i < n:
            state = self._state
            if state == TEXT:
                p = s.find(tag, i)
                if p < 0:
                    q = partial_start(s, i, tag)
                    emit_text(out, s[i:q])
                    self._tail = s[q:]
                    break
                emit_text(out, s[i:p])
                i = self._open(p)
            elif state == GAP:
                j = WS_RUN.match(s, i).end()  # type: ignore[union-attr]
                if j > i:
                    self._gap.append(s[i:j])
                    i = j
                if i >= n:
                    break
                if s.startswith(tag, i):
                    i = self._open(i)
                elif n - i < len(tag) and tag.startswith(s[i:]):
                    self._tail = s[i:]
                    break
                else:
                    emit_text(out, "".join(self._gap))
                    self._gap.clear()
                    self._state = TEXT
            else:
                i = self._step(s, i, out)
        return out

    def _open(self, p: int) -> int:
        self._raw = self._gap  # the whitespace before stays text if this is no call
        self._raw.append(self.tag)
        self._gap = []
        self._opened()
        return p + len(self.tag)

    def finish(self) -> list[Event]:
        out: list[Event] = []
        state = self._state
        if state == TEXT:
            emit_text(out, self._tail)
        elif state == GAP:
            if self._tail or not self.called:
                emit_text(out, "".join(self._gap) + self._tail)
        else:
            self._finish_call(out, state)
        self._tail = ""
        self._gap.clear()
        self._raw = []
        self._state = TEXT
        return out

    def _opened(self) -> None:
        raise NotImplementedError

    def _step(self, s: str, i: int, out: list[Event]) -> int:
        raise NotImplementedError

    def _finish_call(self, out: list[Event], state: int) -> None:
        raise NotImplementedError


# OpeningParser states; a format's own states are numbered from 2
PLAIN, START = 0, 1


class OpeningParser(ToolParser):
    """A format whose calls are recognised only where the output opens with them.

    In ``START`` the whitespace and markup before the first call are held (``_held``); output
    that turns out to hold no call leaves for ``PLAIN`` (``_plain``), after which everything is
    ``Text``. A subclass scans ``START`` and its own states in ``_step`` (returning where it
    stopped) and ends an open call in ``_finish_call``.
    """

    __slots__ = ("_held",)

    def __init__(self, tools: Sequence[str] | None) -> None:
        super().__init__(tools, START)
        self._held: list[str] = []  # leading whitespace/tag, or markup after a call

    def feed(self, text: str) -> list[Event]:
        if self._state == PLAIN:
            self._scanned += len(text)
            return [Text(text)] if text else []
        s = self._resume(text)
        out: list[Event] = []
        i, n = 0, len(s)
        while i < n:
            if self._state == PLAIN:
                emit_text(out, s[i:] if i else s)
                break
            i = self._step(s, i, out)
        return out

    def _plain(self, out: list[Event]) -> None:
        # No call here: what was held is text, and so is the rest of the output.
        emit_text(out, "".join(self._held))
        self._held.clear()
        self._state = PLAIN

    def finish(self) -> list[Event]:
        out: list[Event] = []
        state = self._state
        if state == START:
            emit_text(out, "".join(self._held) + self._tail)
        elif state != PLAIN:
            self._finish_call(out, state)
        self._held.clear()
        self._raw = []
        self._tail = ""
        self._state = PLAIN
        return out

    def _step(self, s: str, i: int, out: list[Event]) -> int:
        raise NotImplementedError

    def _finish_call(self, out: list[Event], state: int) -> None:
        raise NotImplementedError


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

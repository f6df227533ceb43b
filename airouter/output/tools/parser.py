"""What the tool-call parsers share around their formats: the state every parser keeps
(``ToolParser``), the scan for a call tag anywhere in the text (``TaggedParser``), and the
scan of an output that may open with calls (``OpeningParser``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from airouter.output.events import Event, Text
from airouter.output.marks import WS_RUN, PieceScan, partial_start
from airouter.output.tools.base import CallLog, CallObject, emit_text

__all__ = [
    "GAP",
    "PLAIN",
    "START",
    "TEXT",
    "OpeningParser",
    "TaggedParser",
    "ToolParser",
]


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

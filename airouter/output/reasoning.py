"""Reasoning parsers: split ``<think>...</think>`` thinking from the answer.

``deepseek_r1`` (DeepSeek-R1 and its distills, QwQ, thinking models whose chat template opens
``<think>`` in the prompt): the output starts inside the thinking. Everything up to the first
``</think>`` is ``Reasoning``; a leading ``<think>`` (after whitespace) is dropped with that
whitespace; the rest after ``</think>`` is ``Text``. Without any ``</think>`` the whole output
is ``Reasoning``, as vLLM's ``deepseek_r1`` parser does (a stream cut by ``max_tokens`` while
thinking has no answer yet).

``qwen3`` (Qwen3 models up to the 2507 release, whose template lets the model open
``<think>`` itself): thinking only when the output opens with ``<think>`` (after whitespace,
which is dropped); then up to ``</think>`` is ``Reasoning`` and the rest ``Text``. Output that
does not open with ``<think>`` (``enable_thinking=False``) is all ``Text``, so one parser serves
both switch settings without reading the request. An opened ``<think>`` that never closes stays
``Reasoning``: it has been streamed as such. vLLM's current ``qwen3`` parser instead assumes the
template put ``<think>`` in the prompt (Qwen3.5, Thinking-2507) unless the request disabled
thinking; for those models use ``deepseek_r1``.

Text after ``</think>`` is passed on unchanged, including its leading whitespace; a second
``<think>`` there is plain text.
"""

from __future__ import annotations

from airouter.output.events import Event, Reasoning, Text
from airouter.output.marks import WS_RUN, PieceScan, partial_start

__all__ = ["ThinkParser"]

_OPEN = "<think>"
_CLOSE = "</think>"
_START, _REASON, _CONTENT = range(3)


class ThinkParser(PieceScan):
    """Sans-IO ``<think>`` splitter; ``implicit`` says the output starts inside the thinking."""

    __slots__ = ("_implicit", "_state", "_lead")

    def __init__(self, implicit: bool) -> None:
        super().__init__()
        self._implicit = implicit
        self._state = _START
        self._lead: list[str] = []  # leading whitespace, dropped if ``<think>`` follows

    @property
    def called(self) -> bool:
        return False

    def feed(self, text: str) -> list[Event]:
        if not self._tail and (
            self._state == _CONTENT or (self._state == _REASON and "<" not in text)
        ):
            self._scanned += len(text)
            if not text:
                return []
            return [Text(text) if self._state == _CONTENT else Reasoning(text)]
        s = self._resume(text)
        out: list[Event] = []
        i, n = 0, len(s)
        while i < n:
            state = self._state
            if state == _CONTENT:
                out.append(Text(s[i:] if i else s))
                break
            if state == _REASON:
                p = s.find(_CLOSE, i)
                if p < 0:
                    q = partial_start(s, i, _CLOSE)
                    if q > i:
                        out.append(Reasoning(s[i:q]))
                    self._tail = s[q:]
                    break
                if p > i:
                    out.append(Reasoning(s[i:p]))
                self._state = _CONTENT
                i = p + len(_CLOSE)
                continue
            j = WS_RUN.match(s, i).end()  # type: ignore[union-attr]
            if j > i:
                self._lead.append(s[i:j])
                i = j
            if i >= n:
                break
            if s.startswith(_OPEN, i):
                self._lead.clear()
                self._state = _REASON
                i += len(_OPEN)
            elif n - i < len(_OPEN) and _OPEN.startswith(s[i:]):
                self._tail = s[i:]
                break
            else:
                self._leave_start(out)
        return out

    def _leave_start(self, out: list[Event]) -> None:
        lead = "".join(self._lead)
        self._lead.clear()
        if self._implicit:
            self._state = _REASON
            if lead:
                out.append(Reasoning(lead))
        else:
            self._state = _CONTENT
            if lead:
                out.append(Text(lead))

    def finish(self) -> list[Event]:
        out: list[Event] = []
        if self._state == _START:
            self._leave_start(out)
        if self._tail:
            out.append(Reasoning(self._tail) if self._state == _REASON else Text(self._tail))
        self._tail = ""
        self._state = _CONTENT
        return out

"""Incremental JSON value scanner: finds where one value ends, validates it, and releases a
prefix that a known suffix always completes to valid JSON, so arguments can stream early."""

from __future__ import annotations

import re

__all__ = ["JsonScan"]

# States. "Safe" states are those where the text so far plus ``completion()`` is valid JSON.
_VALUE = 0  # expect a value (start, after ':' or after ',' in an array)
_OBJ_FIRST = 1  # after '{': a key or '}'           (safe)
_ARR_FIRST = 2  # after '[': a value or ']'         (safe)
_KEY_NEXT = 3  # after ',' in an object: a key
_COLON = 4  # after a key
_AFTER = 5  # after a value inside a container    (safe)
_STR = 6  # inside a value string                (safe)
_KEY = 7  # inside a key string
_ESC = 8  # after a backslash
_HEX = 9  # inside \uXXXX
_NUM = 10  # inside a number
_LIT = 11  # inside true/false/null
_DONE = 12
_ERROR = 13

_WS = " \t\n\r"
_STR_RUN = re.compile(r'[^"\\\x00-\x1f]*')
_WS_RUN = re.compile(r"[ \t\n\r]*")
_NUM_RUN = re.compile(r"[0-9eE.+\-]*")
_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+\-]?[0-9]+)?")
_HEXDIGITS = frozenset("0123456789abcdefABCDEF")
_SIMPLE_ESC = frozenset('"\\/bfnrt')
_LITERALS = {"t": "rue", "f": "alse", "n": "ull"}
# Raw control characters are invalid inside JSON strings but models emit them (code, multi-line
# text); the captured output escapes them so strict JSON decoders accept the arguments.
_CTRL = {chr(c): f"\\u{c:04x}" for c in range(0x20)} | {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


class JsonScan:
    """Scan exactly one JSON value fed in pieces.

    ``feed(s, i)`` reads ``s`` from ``i`` and returns where it stopped: the end of the value
    (``done``), the offending character (``error``), or ``len(s)``. Each character is looked at
    once (``scanned`` counts them). With ``capture`` the scanned text is kept: ``take()``
    returns the part released so far, chosen so that everything taken plus ``completion()`` is
    always valid JSON (a partial number, literal, escape, key or a dangling comma is held back).
    """

    __slots__ = (
        "capture",
        "done",
        "error",
        "scanned",
        "_state",
        "_stack",
        "_ret",
        "_left",
        "_tok",
        "_out",
        "_pend",
        "_quote",
        "_seg",
    )

    def __init__(self, capture: bool = False) -> None:
        self.capture = capture
        self.done = False
        self.error = False
        self.scanned = 0
        self._state = _VALUE
        self._stack: list[str] = []  # closers of the open containers
        self._ret = _STR  # string state to return to after an escape
        self._left = ""  # rest of a literal, or count of hex digits as "x" * n
        self._tok: list[str] = []  # a number's characters
        self._out: list[str] = []  # released text
        self._pend: list[str] = []  # text after the last safe point
        self._quote = False  # the last safe point lies inside a value string
        self._seg = 0

    def take(self) -> str:
        """Release the captured text that is safe to send; empty when nothing new."""
        if not self._out:
            return ""
        out = "".join(self._out)
        self._out.clear()
        return out

    def completion(self) -> str:
        """The suffix that makes all released text a complete JSON value."""
        closers = "".join(reversed(self._stack))
        return '"' + closers if self._quote else closers

    def _safe(self, s: str, p: int, quote: bool) -> None:
        # Text up to ``p`` is safe: release the pending part and it.
        if self.capture:
            if self._pend:
                self._out += self._pend
                self._pend.clear()
            if p > self._seg:
                self._out.append(s[self._seg : p])
            self._seg = p
        self._quote = quote

    def _close(self, s: str, i: int, start: int) -> int:
        # A value ended at ``i`` (exclusive): finish the scan (``i``, with the work from
        # ``start`` counted) or continue in its container (-1, in state ``_AFTER``).
        if self._stack:
            self._state = _AFTER
            self._safe(s, i, False)
            return -1
        self._state = _DONE
        self.done = True
        self._safe(s, i, False)
        self.scanned += i - start
        return i

    def _fail(self, s: str, i: int, start: int) -> int:
        self._state = _ERROR
        self.error = True
        self.scanned += i - start
        return i

    def feed(self, s: str, i: int = 0) -> int:
        """Scan ``s[i:]``; return the index where scanning stopped (see the class doc)."""
        start = i
        n = len(s)
        self._seg = i
        stack = self._stack
        state = self._state
        if state >= _DONE:
            return i
        while i < n:
            if state == _STR or state == _KEY:
                i = _STR_RUN.match(s, i).end()  # type: ignore[union-attr]
                if i >= n:
                    break
                c = s[i]
                if c == '"':
                    i += 1
                    if state == _KEY:
                        state = _COLON
                        continue
                    end = self._close(s, i, start)
                    if end >= 0:
                        return end
                    state = self._state
                    continue
                if c == "\\":
                    if state == _STR:
                        self._safe(s, i, True)
                    self._ret = state
                    state = _ESC
                    i += 1
                    continue
                if self.capture:
                    self._pend.append(s[self._seg : i])
                    self._pend.append(_CTRL[c])
                    self._seg = i + 1
                i += 1
                continue
            c = s[i]
            if state == _ESC:
                if c in _SIMPLE_ESC:
                    state = self._ret
                elif c == "u":
                    state = _HEX
                    self._left = "xxxx"
                else:
                    return self._fail(s, i, start)
                i += 1
                continue
            if state == _HEX:
                if c not in _HEXDIGITS:
                    return self._fail(s, i, start)
                self._left = self._left[1:]
                if not self._left:
                    state = self._ret
                i += 1
                continue
            if state == _NUM:
                j = _NUM_RUN.match(s, i).end()  # type: ignore[union-attr]
                self._tok.append(s[i:j])
                i = j
                if i >= n:
                    break
                number = "".join(self._tok)
                self._tok.clear()
                if not _NUMBER.fullmatch(number):
                    return self._fail(s, i, start)
                end = self._close(s, i, start)
                if end >= 0:
                    return end
                state = self._state
                continue
            if state == _LIT:
                if c != self._left[0]:
                    return self._fail(s, i, start)
                self._left = self._left[1:]
                i += 1
                if not self._left:
                    end = self._close(s, i, start)
                    if end >= 0:
                        return end
                    state = self._state
                continue
            if c in _WS:
                i = _WS_RUN.match(s, i).end()  # type: ignore[union-attr]
                continue
            if (state == _AFTER or state == _OBJ_FIRST or state == _ARR_FIRST) and c == stack[-1]:
                # The innermost container closes (an empty one included).
                stack.pop()
                end = self._close(s, i + 1, start)
                if end >= 0:
                    return end
                state = self._state
                i += 1
                continue
            if state == _AFTER:
                if c != ",":
                    return self._fail(s, i, start)
                state = _KEY_NEXT if stack[-1] == "}" else _VALUE
                i += 1
                continue
            if state == _OBJ_FIRST or state == _KEY_NEXT:
                if c != '"':
                    return self._fail(s, i, start)
                state = _KEY
                i += 1
                continue
            if state == _COLON:
                if c != ":":
                    return self._fail(s, i, start)
                state = _VALUE
                i += 1
                continue
            # _VALUE or _ARR_FIRST: a value starts here.
            if c == "{":
                stack.append("}")
                state = _OBJ_FIRST
                i += 1
                self._safe(s, i, False)
            elif c == "[":
                stack.append("]")
                state = _ARR_FIRST
                i += 1
                self._safe(s, i, False)
            elif c == '"':
                state = _STR
                i += 1
                self._safe(s, i, True)
            elif c == "-" or "0" <= c <= "9":
                state = _NUM
            elif c in _LITERALS:
                state = _LIT
                self._left = _LITERALS[c]
                i += 1
            else:
                return self._fail(s, i, start)
        self._state = state
        self.scanned += n - start
        if self.capture:
            if state == _STR or state == _AFTER or state == _OBJ_FIRST or state == _ARR_FIRST:
                self._safe(s, n, state == _STR)
            elif n > self._seg:
                self._pend.append(s[self._seg : n])
        return n

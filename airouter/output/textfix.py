"""Sans-IO fixups that turn raw Triton token streams into clean OpenAI text deltas."""

from __future__ import annotations

from codecs import utf_8_decode
from collections.abc import Iterable

from airouter.output.cutter import SpecialTokenFilter, StopMatcher

__all__ = ["CumulativeToDelta", "PrefixStripper", "TextPipeline", "Utf8Joiner"]


def _common_prefix_len(a: bytes, b: bytes) -> int:
    """Length of the longest common prefix of ``a`` and ``b``.

    Binary search over C-level slice compares: O(n log n) bytes touched but only
    O(log n) interpreter steps; it runs only when a backend rewrote its output.
    """
    lo, hi = 0, min(len(a), len(b))
    # Invariant: a[:lo] == b[:lo] and the first difference (if any) lies before hi.
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if a[lo:mid] == b[lo:mid]:
            lo = mid
        else:
            hi = mid - 1
    return lo


class CumulativeToDelta:
    """Turn successive cumulative outputs into the new bytes of each one.

    Invariants:

    * If every input extends the previous one, the concatenation of all returned
      deltas equals the last input.
    * If an input does not start with the previous one (the backend re-tokenized and
      changed earlier text), the delta is everything after the longest common prefix
      (moved back to a UTF-8 character start so the delta never opens with a
      continuation byte), and ``diverged`` is incremented. Text already sent is never
      "replaced": clients cannot retract it.
    * An input that is a proper prefix of the previous one (the output shrank) emits
      nothing, counts as a divergence and leaves the baseline unchanged, so a later
      re-extension to the same text does not duplicate bytes.
    * An empty input means "no output in this response" and is ignored entirely.
    """

    __slots__ = ("_prev", "_diverged")

    def __init__(self) -> None:
        self._prev = b""
        self._diverged = 0

    @property
    def diverged(self) -> int:
        """How many inputs did not extend the previous one (0 on a clean stream)."""
        return self._diverged

    def feed(self, cumulative: bytes) -> bytes:
        """Return the bytes of ``cumulative`` not yet emitted."""
        prev = self._prev
        if cumulative.startswith(prev):
            self._prev = cumulative
            return cumulative[len(prev) :]
        if not cumulative:
            return b""
        self._diverged += 1
        n = _common_prefix_len(prev, cumulative)
        if n == len(cumulative):
            return b""
        # Never split a character: back off over at most 3 continuation bytes.
        floor = max(0, n - 3)
        while n > floor and (cumulative[n] & 0xC0) == 0x80:
            n -= 1
        self._prev = cumulative
        return cumulative[n:]


class PrefixStripper:
    """Strip an echoed prompt from the start of a byte stream.

    Invariant: over a whole stream, the concatenation of ``feed`` outputs plus
    ``flush()`` equals ``out[len(prompt):]`` if the full output ``out`` starts with
    ``prompt``, else ``out`` unchanged. Output is held back only while everything seen
    so far is still a proper prefix of the prompt (held bytes <= len(prompt)).
    """

    __slots__ = ("_prompt", "_matched", "_done", "_stripped")

    def __init__(self, prompt: bytes) -> None:
        self._prompt = prompt
        self._matched = 0
        self._done = not prompt
        self._stripped = False

    @property
    def done(self) -> bool:
        """True once the echo was fully stripped or ruled out; feed is then a pass-through."""
        return self._done

    @property
    def stripped(self) -> bool:
        """True if the whole prompt was found at the start of the output and removed."""
        return self._stripped

    def feed(self, data: bytes) -> bytes:
        """Return the bytes that are certainly not part of an echoed prompt."""
        if self._done:
            return data
        prompt = self._prompt
        m = self._matched
        need = len(prompt) - m
        if len(data) < need:
            if prompt.startswith(data, m):
                self._matched = m + len(data)
                return b""
        elif prompt.endswith(data[:need]):
            self._done = True
            self._stripped = True
            return data[need:]
        # The output is not an echo: release what was held as if nothing was stripped.
        self._done = True
        return prompt[:m] + data if m else data

    def flush(self) -> bytes:
        """End of stream: release held bytes (the output was a strict prompt prefix)."""
        if self._done:
            return b""
        self._done = True
        return self._prompt[: self._matched]


class Utf8Joiner:
    """Decode a byte stream to str without ever splitting a UTF-8 character.

    Invariant: concatenating ``feed`` outputs plus ``flush()`` equals
    ``b"".join(chunks).decode("utf-8", "replace")`` for any chunking. At most 3 bytes
    (an incomplete trailing sequence) are held between calls; invalid bytes decode to
    U+FFFD immediately and never raise.

    Implementation: ``codecs.utf_8_decode(data, "replace", False)`` called directly,
    plus an ``isascii()`` fast path. Measured on CPython 3.11 per feed of a short token:
    ASCII 89 ns vs 145 ns (without fast path) vs 243 ns for
    ``codecs.getincrementaldecoder`` (its ``decode`` is Python code wrapping the same C
    function); mixed multibyte 197 ns vs 278 ns.
    """

    __slots__ = ("_held",)

    def __init__(self) -> None:
        self._held = b""

    @property
    def pending(self) -> int:
        """Number of bytes held back (0 to 3)."""
        return len(self._held)

    def feed(self, data: bytes) -> str:
        """Return every complete character available so far."""
        held = self._held
        if held:
            data = held + data
            self._held = b""
        elif data.isascii():
            return data.decode("ascii")
        text, used = utf_8_decode(data, "replace", False)
        if used != len(data):
            self._held = data[used:]
        return text

    def flush(self) -> str:
        """End of stream: decode any held incomplete sequence as U+FFFD."""
        held = self._held
        if not held:
            return ""
        self._held = b""
        return utf_8_decode(held, "replace", True)[0]


class TextPipeline:
    """Raw backend bytes in, clean text deltas out.

    Stages, in order, each skipped when not configured: cumulative -> delta, echoed
    prompt stripping, UTF-8 joining, special tokens, stop sequences. Once ``finished``
    (an end token or stop sequence was hit) every ``feed``/``flush`` returns "": the
    caller should send finish_reason "stop" and cancel the backend request.
    """

    __slots__ = ("_delta", "_echo", "_utf8", "_special", "_stops", "_finished")

    def __init__(
        self,
        *,
        cumulative: bool = False,
        echo_prompt: bytes | None = None,
        special_tokens: Iterable[str] = (),
        stops: Iterable[str] = (),
        strip_tokens: Iterable[str] = (),
    ) -> None:
        self._delta = CumulativeToDelta() if cumulative else None
        self._echo = PrefixStripper(echo_prompt) if echo_prompt else None
        self._utf8 = Utf8Joiner()
        special = SpecialTokenFilter(special_tokens, strip_tokens)
        self._special = special if special._pats else None
        stop = StopMatcher(stops)
        self._stops = stop if stop._pats else None
        self._finished = False

    @property
    def finished(self) -> bool:
        """True once an end token or stop sequence was hit."""
        return self._finished

    @property
    def stop_reason(self) -> str | None:
        """The end token or stop sequence that finished the stream, if any."""
        if self._special is not None and self._special._hit is not None:
            return self._special._hit
        if self._stops is not None:
            return self._stops._hit
        return None

    @property
    def matched_stop(self) -> str | None:
        """The stop sequence that finished the stream, if one did."""
        return self._stops._hit if self._stops is not None else None

    @property
    def rewrites(self) -> int:
        """How many cumulative outputs rewrote earlier text (0 when not cumulative)."""
        return 0 if self._delta is None else self._delta.diverged

    def feed(self, raw: bytes) -> str:
        """Return the text to send for one backend response."""
        if self._finished:
            return ""
        if self._delta is not None:
            raw = self._delta.feed(raw)
        if self._echo is not None:
            raw = self._echo.feed(raw)
        if not raw:
            return ""
        text = self._utf8.feed(raw)
        special = self._special
        if special is not None:
            text = special.feed(text)
            if special._hit is not None:
                return self._drain(text)
        stops = self._stops
        if stops is not None:
            text = stops.feed(text)
            if stops._hit is not None:
                self._finished = True
        return text

    def flush(self) -> str:
        """End of stream: return everything still held by any stage."""
        if self._finished:
            return ""
        utf8 = self._utf8
        text = utf8.feed(self._echo.flush()) if self._echo is not None else ""
        text += utf8.flush()
        special = self._special
        if special is not None:
            text = special.feed(text)
            if special._hit is None:
                text += special.flush()
        return self._drain(text)

    def _drain(self, text: str) -> str:
        # No more text will follow (end of stream or end token), so text held by the
        # stop matcher precedes the end and must be released, not lost.
        stops = self._stops
        if stops is not None:
            text = stops.feed(text)
            if stops._hit is None:
                text += stops.flush()
        self._finished = self.stop_reason is not None
        return text

"""Sans-IO fixups that turn raw Triton token streams into clean OpenAI text deltas."""

from __future__ import annotations

import functools
from codecs import utf_8_decode
from collections.abc import Iterable

__all__ = [
    "CumulativeToDelta",
    "PrefixStripper",
    "SpecialTokenFilter",
    "StopMatcher",
    "TextPipeline",
    "Utf8Joiner",
]

# Patterns up to this length keep every proper prefix precomputed (O(len**2) chars of memory);
# longer ones slice on demand so a pathological 100k-char stop cannot blow up memory.
_PREFIX_CACHE_MAX = 256


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


_Tables = tuple[
    tuple[tuple[str, bool], ...], tuple[str, ...], dict[str, tuple[tuple[int, str], ...]]
]


@functools.lru_cache(maxsize=256)
def _tables(end: tuple[str, ...], strip: tuple[str, ...]) -> _Tables:
    """A matcher's patterns in scan order, their first characters, and by last character the
    proper prefixes ending with it (read-only: shared by every matcher of the same patterns)."""
    ends = sorted({p for p in end if p}, key=lambda p: (len(p), p))
    end_set = set(ends)
    strips = sorted({p for p in strip if p and p not in end_set}, key=lambda p: (-len(p), p))
    # Scan order doubles as tie-break priority at a shared position (strict "<" below).
    pats = tuple([(p, True) for p in ends] + [(p, False) for p in strips])
    firsts = tuple(sorted({p[0] for p, _ in pats}))
    # Last char -> proper prefixes ending with it, longest first, so the first prefix
    # the text ends with gives the earliest position where a match may still start.
    by_last: dict[str, dict[int, set[str]]] = {}
    for p, _ in pats:
        for n in range(1, len(p)):
            src = p[:n] if len(p) <= _PREFIX_CACHE_MAX else p
            by_last.setdefault(p[n - 1], {}).setdefault(n, set()).add(src)
    tails = {
        c: tuple((n, s) for n in sorted(lens, reverse=True) for s in sorted(lens[n]))
        for c, lens in by_last.items()
    }
    return pats, firsts, tails


class _Cutter:
    """Leftmost multi-pattern matcher over a chunked str stream (shared engine).

    Semantics, defined on the whole text and independent of chunking: scan left to
    right; at the first position where any pattern occurs, an END pattern cuts the
    stream there (neither it nor anything after is emitted) and a STRIP pattern is
    removed, scanning on after it. At one position END beats STRIP, the shortest END
    wins (so ``hit`` does not depend on chunking) and the longest STRIP wins.

    Chunking invariant: ``feed`` emits a prefix of that result as soon as it is
    certain, holding back only the longest tail that is a proper prefix of a pattern
    (which may contain a complete later match); ``flush()`` resolves and emits the rest.
    """

    __slots__ = ("_pats", "_firsts", "_tails", "_held", "_hit")

    def __init__(self, end: Iterable[str], strip: Iterable[str] = (), keep: bool = True) -> None:
        """`keep`: the tables may be kept for the next matcher of the same patterns (a
        model's special tokens come with each of its requests; a client's stop sequences,
        of any length, are not kept)."""
        patterns = tuple(end), tuple(strip)
        build = _tables if keep or patterns == ((), ()) else _tables.__wrapped__
        self._pats, self._firsts, self._tails = build(*patterns)
        self._held = ""
        self._hit: str | None = None

    @property
    def pending(self) -> str:
        """Text held back because it may be the start of a pattern."""
        return self._held

    def feed(self, text: str) -> str:
        """Return the text that is certainly final; "" forever once an END matched."""
        if self._hit is not None:
            return ""
        held = self._held
        if held:
            text = held + text
        else:
            for c in self._firsts:
                if c in text:
                    break
            else:
                return text
        return self._scan(text, False)

    def flush(self) -> str:
        """End of stream: resolve held text with no more input to come."""
        held = self._held
        if self._hit is not None or not held:
            return ""
        self._held = ""
        return self._scan(held, True)

    def _partial_at(self, t: str, start: int) -> int:
        """Earliest p >= start where t[p:] is a proper prefix of a pattern, else -1."""
        n = len(t)
        room = n - start
        if room <= 0:
            return -1
        for size, src in self._tails.get(t[-1], ()):
            if size <= room and t.endswith(src if len(src) == size else src[:size]):
                return n - size
        return -1

    def _scan(self, t: str, final: bool) -> str:
        out = ""
        start = 0
        while True:
            best = -1
            best_pat = ""
            best_end = False
            for pat, is_end in self._pats:
                j = t.find(pat, start)
                if j != -1 and (best == -1 or j < best):
                    best, best_pat, best_end = j, pat, is_end
            if not final:
                p = self._partial_at(t, start)
                # A partial at the same position can only lose to an END match there.
                if p != -1 and (best == -1 or p < best or (p == best and not best_end)):
                    self._held = t[p:]
                    return out + t[start:p]
            self._held = ""
            if best == -1:
                return out + t[start:] if start else t
            out += t[start:best]
            if best_end:
                self._hit = best_pat
                return out
            start = best + len(best_pat)


class StopMatcher(_Cutter):
    """Enforce OpenAI ``stop`` sequences on a chunked str stream.

    Invariant: the concatenation of all ``feed`` outputs plus ``flush()`` equals
    ``text[:min(text.find(s) for s in stops if s in text)]`` (or ``text`` if no stop
    occurs) for any chunking of ``text``. The stop text itself is never emitted; held
    text is always a proper prefix of some stop, so shorter than the longest one (it may
    contain a complete shorter stop, resolved once the longer one fails or at flush).
    Empty stop strings are ignored.
    """

    __slots__ = ()

    def __init__(self, stops: Iterable[str]) -> None:
        super().__init__(stops, keep=False)

    @property
    def stopped(self) -> bool:
        """True once a stop sequence matched; later feeds return ""."""
        return self._hit is not None

    @property
    def matched(self) -> str | None:
        """The stop sequence that ended the stream (the shortest one at the cut)."""
        return self._hit


class SpecialTokenFilter(_Cutter):
    """Remove a prompt format's special tokens from a chunked str stream.

    ``end_tokens`` (e.g. ``"<|eot_id|>"``, ``"</s>"``) end the stream: the first one
    and everything after it are dropped and ``ended`` becomes True. ``strip_tokens``
    (optional) are removed wherever they occur and the stream goes on. A token split
    across chunks is still recognized: a possible partial match at the end of a chunk is
    held back until the next chunk or ``flush()`` decides it.
    """

    __slots__ = ()

    def __init__(self, end_tokens: Iterable[str], strip_tokens: Iterable[str] = ()) -> None:
        super().__init__(end_tokens, strip_tokens)

    @property
    def ended(self) -> bool:
        """True once an end token was seen; later feeds return ""."""
        return self._hit is not None

    @property
    def end_token(self) -> str | None:
        """The end token that ended the stream."""
        return self._hit


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

"""Stop sequences and special tokens cut from a chunked str stream: one leftmost multi-pattern
matcher under both, its tables built once per set of patterns. Pure."""

from __future__ import annotations

import functools
from collections.abc import Iterable

__all__ = ["SpecialTokenFilter", "StopMatcher"]

# Patterns up to this length keep every proper prefix precomputed (O(len**2) chars of memory);
# longer ones slice on demand so a pathological 100k-char stop cannot blow up memory.
_PREFIX_CACHE_MAX = 256

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

"""An OpenAI-compatible upstream's SSE stream, relayed without I/O: bytes as read go in, what
to send comes out. Passed through as read for streaming clients (`raw`), re-chunked into
payload batches otherwise (`batch`); `model` rewritten to the alias; events that are not JSON
and streams cut short turned into errors. The caller owns the reading: `b""` is the end."""

from __future__ import annotations

import logging
import re
from collections import deque
from typing import Any, Protocol

import msgspec

from airouter.bounds import UPSTREAM_LOGGED, escaped
from airouter.errors import BadGateway, RouterError
from airouter.protocol.sse import DONE, SSEDecoder, frame

log = logging.getLogger("airouter.openai")
decode_any = msgspec.json.Decoder().decode

# The top-level "model" member. A JSON string value cannot contain an unescaped quote, so
# `"model":` can only be a key; responses put the top-level key before nested objects.
MODEL = re.compile(rb'"model"\s*:\s*"(?:[^"\\]|\\.)*"')

_MODEL_VALUE = re.compile(rb':\s*"(.*)"$')


class Usage(Protocol):
    """Where a relay notes what it learned for metrics, traces and the access log."""

    response_model: str | None
    prompt_tokens: int | None
    completion_tokens: int | None
    finish_reason: str | None
    cached_tokens: int | None


class RelayState:
    """The relay's state machine: one upstream read in, events or payload batches out."""

    __slots__ = ("name", "model_repl", "stats", "decoder", "done", "complete", "seen",
                 "tail", "pending", "raw_ok", "failed")

    def __init__(self, name: str, model_repl: bytes, stats: Usage) -> None:
        self.name = name
        self.model_repl = model_repl  # `"model":"<alias>"`
        self.stats = stats
        self.decoder = SSEDecoder()
        self.done = False
        self.complete = False  # the upstream sent [DONE]
        # An event that was not JSON: what came before it is relayed, then this is raised.
        self.failed: RouterError | None = None
        # The exact `"model":"..."` member the upstream writes: it repeats it in every chunk,
        # so after the first a plain bytes.replace does what the regex did.
        self.seen: bytes | None = None
        # The last two payloads: finish_reason and usage ride there.
        self.tail: tuple[bytes, bytes] = (b"", b"")
        self.pending = b""  # pass-through: an event not yet complete
        self.raw_ok = True  # pass-through until the upstream's framing needs the decoder

    def _rewrite(self, p: bytes) -> bytes:
        seen = self.seen
        if seen is not None:
            q = p.replace(seen, self.model_repl, 1)
            if q is not p or seen == self.model_repl:
                return q
        m = MODEL.search(p)
        if m is None:
            return p
        self.seen = m.group(0)
        return p[: m.start()] + self.model_repl + p[m.end():]

    def batch(self, data: bytes) -> list[bytes]:
        """The payloads one read completes (maybe none), without [DONE]; `b""`: the end."""
        payloads = self.decoder.feed(data) if data else self.decoder.close()
        if not data:
            self.done = True
        if not payloads:
            return payloads
        if DONE in payloads:
            self.done = self.complete = True
            del payloads[payloads.index(DONE) :]
        if payloads:
            tail = self.tail
            self.tail = (payloads[-2] if len(payloads) > 1 else tail[1], payloads[-1])
            return [self._rewrite(p) for p in payloads]
        return payloads

    def raw(self, data: bytes) -> bytes | None:
        """Streaming clients: the whole SSE events one read completes (b"": none yet), passed
        through with one bytes.replace for `model` instead of a decode, rewrite and re-frame
        per event; None at the end. Upstream framing that is not plain `data: ...` + blank
        line falls back to the decoder. Call `end()` instead once `done` is set."""
        if self.failed is not None:
            raise self.failed
        if not self.raw_ok:
            batch = self.batch(data)
            if batch:
                return frame(batch) if (batch := self._valid(batch)) else b""
            if self.done:
                self.end()
                return None
            return b""
        if not data:
            self.done = True
            if self.pending:
                return self._fallback(b"", final=True)
            self.end()
            return None
        buf = self.pending + data if self.pending else data
        cut = buf.rfind(b"\n\n")
        if cut < 0:
            if b"\r" in buf:
                return self._fallback(data)
            self.pending = buf
            return b""
        out = buf[: cut + 2]
        # Pass through only one-line `data: ` events; anything else goes to the decoder. The
        # payloads hold no newline once split at the separators exactly when every event is
        # one `data: ` line. (bytes.count of one byte is a slow loop in CPython; `in` is a
        # memchr.)
        if b"\r" in out or not out.startswith(b"data: "):
            return self._fallback(data)
        payloads = _payloads(out)
        if b"\n" in b"".join(payloads):
            return self._fallback(data)
        self.pending = buf[cut + 2 :]
        if payloads[-1] == b"[DONE]":
            self.done = self.complete = True
            out = out[:-14]
            del payloads[-1]
            if not out:
                return b""
        bad = first_bad_event(out, payloads)
        if bad >= 0 and out.startswith(b"data: [DONE]\n\n", bad):
            # [DONE] before the last event: let the decoder judge.
            self.done = self.complete = False
            self.pending = b""
            return self._fallback(buf)
        if bad >= 0:
            end = out.find(b"\n\n", bad)
            self.failed = self._not_json(out[bad + 6 : end])
            self.done = False
            out = out[:bad]
            if not out:
                raise self.failed
        seen = self.seen
        repl = self.model_repl
        if seen is None:
            m = MODEL.search(out)
            if m is not None:
                seen = self.seen = m.group(0)
        if seen is not None and seen != repl:
            new = out.replace(seen, repl)
            grew = len(repl) - len(seen)
            # How many members were replaced: from the length when it changed.
            n = (len(new) - len(out)) // grew if grew else out.count(seen)
            if n != out.count(b'"model"'):
                self.pending = b""
                return self._fallback(buf)  # a chunk naming another model
            out = new
        self._keep_tail(out)
        return out

    def _fallback(self, data: bytes, final: bool = False) -> bytes | None:
        """Hand what was read to the decoder and keep using it for the rest of the stream."""
        self.raw_ok = False
        data, self.pending = self.pending + data, b""
        payloads = self.decoder.feed(data)
        if final:
            payloads += self.decoder.close()
        if DONE in payloads:
            self.done = self.complete = True
            del payloads[payloads.index(DONE) :]
        if final:
            self.done = True
        if not payloads:
            if self.done:
                self.end()
                return None
            return b""  # nothing whole yet; the caller reads on
        payloads = self._valid(payloads)
        if not payloads:
            raise self.failed  # type: ignore[misc]
        tail = self.tail
        self.tail = (payloads[-2] if len(payloads) > 1 else tail[1], payloads[-1])
        return frame([self._rewrite(p) for p in payloads])

    def _keep_tail(self, out: bytes) -> None:
        # The last two events' payloads, found from the end without parsing the rest.
        end = len(out) - 2
        start = out.rfind(b"\n\ndata: ", 0, end)
        last = out[start + 8 : end] if start >= 0 else out[6:end]
        if start >= 0:
            prev_start = out.rfind(b"\n\ndata: ", 0, start)
            prev = out[prev_start + 8 : start] if prev_start >= 0 else out[6:start]
        else:
            prev = self.tail[1]
        self.tail = (prev, last)

    def _valid(self, payloads: list[bytes]) -> list[bytes]:
        """The payloads before the first that is not a JSON object (kept to raise next)."""
        for i, p in enumerate(payloads):
            try:
                _check_event(p)
                if not p.isascii():
                    p.decode()
            except (msgspec.DecodeError, UnicodeDecodeError):
                self.failed = self._not_json(p)
                self.done = False
                return payloads[:i]
        return payloads

    def _not_json(self, data: bytes) -> RouterError:
        log.warning("backend %s sent an event that is not a JSON object: %s", self.name,
                    escaped(data[:UPSTREAM_LOGGED].decode("utf-8", "replace")))
        return BadGateway(f"The backend '{self.name}' sent an event that is not valid JSON.",
                          code="bad_upstream_event")

    def end(self) -> None:
        """The upstream's stream ended: an answer cut short (no [DONE] and no finish_reason)
        must not look complete to the client."""
        self._note_tail()
        if not self.complete and self.stats.finish_reason is None:
            raise BadGateway(
                f"The backend '{self.name}' ended the stream before the answer was complete.",
                code="stream_truncated",
            )

    def _note_tail(self) -> None:
        # The backend's own model name, from the member we replaced (payloads carry the alias).
        if self.stats.response_model is None and self.seen is not None:
            m = _MODEL_VALUE.search(self.seen)
            if m:
                self.stats.response_model = m.group(1).decode("utf-8", "replace")
        # Decode only the last chunks (finish reason, usage) for metrics and traces.
        for p in self.tail:
            if not p:
                continue
            try:
                obj = decode_any(p)
            except msgspec.DecodeError:
                continue
            if isinstance(obj, dict):
                record_usage(obj, self.stats)


class _Object(msgspec.Struct):
    """Any JSON object: members are skipped, but the whole text is still validated."""


_check_event = msgspec.json.Decoder(_Object).decode


def _payloads(out: bytes) -> list[bytes]:
    """The payloads of `out`'s whole one-line `data: ` events (the separator is never inside
    a payload), without copying `out` first."""
    payloads = out.split(b"\n\ndata: ")
    payloads[0] = payloads[0][6:]
    payloads[-1] = payloads[-1][:-2]
    return payloads


def first_bad_event(out: bytes, payloads: list[bytes] | None = None) -> int:
    """Where the first `data: ` event of `out` (whole one-line events; `payloads`: theirs,
    when split already) whose payload is not a JSON object starts, or -1. Such a payload must
    never reach the client: each is validated on its own, in C, without building any object
    (about 0.2 us for a 200-byte chunk). (One decode of all of them joined as a JSON array is
    cheaper but proves nothing: a payload with a top-level comma, `{"a":1},{"b":2}`, and two
    that only parse when joined, `{"x":[{}` and `{}]}`, add up to the right count of
    elements.)"""
    if payloads is None:
        payloads = _payloads(out)
    try:
        deque(map(_check_event, payloads), 0)
    except msgspec.DecodeError:
        start = 0
        for p in payloads:
            try:
                _check_event(p)
            except msgspec.DecodeError:
                return start
            start += len(p) + 8
    return _first_bad_utf8(out)


def _first_bad_utf8(out: bytes) -> int:
    """JSON is UTF-8, which the skipping decoder does not check inside strings: one C pass
    over the whole read (about 1 us for 64 events), a decode only when it is not ASCII."""
    if out.isascii():
        return -1
    try:
        out.decode()
    except UnicodeDecodeError as e:
        return out.rfind(b"\n\ndata: ", 0, e.start) + 2 if b"\n\n" in out[: e.start] else 0
    return -1


def record_usage(obj: dict[str, Any], stats: Usage) -> None:
    if stats.response_model is None and isinstance(obj.get("model"), str):
        stats.response_model = obj["model"]
    usage = obj.get("usage")
    if isinstance(usage, dict):
        if isinstance(usage.get("prompt_tokens"), int):
            stats.prompt_tokens = usage["prompt_tokens"]
        if isinstance(usage.get("completion_tokens"), int):
            stats.completion_tokens = usage["completion_tokens"]
        details = usage.get("prompt_tokens_details")
        if isinstance(details, dict) and isinstance(details.get("cached_tokens"), int):
            stats.cached_tokens = details["cached_tokens"]
    for choice in obj.get("choices") or ():
        if isinstance(choice, dict) and isinstance(choice.get("finish_reason"), str):
            stats.finish_reason = choice["finish_reason"]

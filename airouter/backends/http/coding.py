"""Content codings of upstream answers. The router asks for identity; an upstream that
compresses anyway (gzip, deflate) is decoded in bounded pieces: at most DECODED_MAX bytes, and
beyond DECODED_FREE at most DECODED_RATIO times the compressed bytes read, so that a gzip bomb
is refused after about 1 MiB of output. A gzip body of several members is decoded whole; bytes
after the compressed body, or a body cut short, are errors. Other codings are refused."""

from __future__ import annotations

import zlib

DECODED_PIECE = 256 * 1024
DECODED_MAX = 64 * 1024 * 1024
DECODED_FREE = 1024 * 1024
DECODED_RATIO = 100


class CodingError(Exception):
    """The body is not what its Content-Encoding says, or decodes past the bound."""


class Decoder:
    """One compressed body: `decode` each piece read, `finish` at the body's end."""

    __slots__ = ("_inflate", "_gzip", "_encoded", "_decoded")

    def __init__(self, gzip: bool) -> None:
        self._gzip = gzip
        self._inflate = zlib.decompressobj(16 + zlib.MAX_WBITS if gzip else zlib.MAX_WBITS)
        self._encoded = self._decoded = 0

    @staticmethod
    def for_coding(coding: str) -> Decoder | None:
        """The decoder a Content-Encoding needs (None for identity); CodingError if unknown."""
        coding = coding.strip().lower()
        if coding in ("identity", ""):
            return None
        if coding in ("gzip", "x-gzip", "deflate"):
            return Decoder(coding != "deflate")
        raise CodingError(f"unsupported content-coding {coding!r}")

    def decode(self, data: bytes) -> bytes:
        inflate = self._inflate
        out: list[bytes] = []
        try:
            while True:
                piece = inflate.decompress(data, DECODED_PIECE)
                self._encoded += len(data) - len(inflate.unconsumed_tail)
                self._decoded += len(piece)
                if self._decoded > DECODED_FREE and (
                    self._decoded > DECODED_MAX or self._decoded > DECODED_RATIO * self._encoded
                ):
                    raise CodingError("a compressed body decodes past the bound")
                out.append(piece)
                data = inflate.unconsumed_tail
                if inflate.eof:
                    data = inflate.unused_data
                    if not data:
                        break
                    if not self._gzip:
                        raise CodingError("bytes after the compressed body")
                    inflate = self._inflate = zlib.decompressobj(16 + zlib.MAX_WBITS)
                elif not data and len(piece) < DECODED_PIECE:
                    break
        except zlib.error as e:
            raise CodingError(f"a malformed compressed body: {e}") from None
        return out[0] if len(out) == 1 else b"".join(out)

    def finish(self) -> None:
        """The body ended: an error if a member was begun and not ended."""
        if self._encoded and not self._inflate.eof:
            raise CodingError("a compressed body cut short")

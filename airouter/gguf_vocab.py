"""A GGUF file's vocabulary as a `tokenizers.Tokenizer`: read only the metadata block
(tokenizer.ggml.*), never the weights. Byte-level BPE ("gpt2", what SmolLM2, Llama 3, Qwen
and most recent models use) is rebuilt exactly; other vocabularies go through llama.cpp."""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any, BinaryIO

# GGUF value types.
_SCALARS = {
    0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?",
    10: "<Q", 11: "<q", 12: "<d",
}
_STRING, _ARRAY = 8, 9
_CONTROL = 3  # tokenizer.ggml.token_type: a special token such as <|im_start|>
# llama.cpp's pre-tokenizer names whose regex is the GPT-2 one after splitting every digit.
_DIGITS_FIRST = {"smollm", "starcoder", "refact", "command-r", "codeshell", "exaone", "minerva"}


class GGUFError(ValueError):
    pass


def _read(f: BinaryIO, fmt: str) -> Any:
    size = struct.calcsize(fmt)
    data = f.read(size)
    if len(data) != size:
        raise GGUFError("truncated GGUF metadata")
    return struct.unpack(fmt, data)[0]


def _string(f: BinaryIO) -> str:
    n = _read(f, "<Q")
    data = f.read(n)
    if len(data) != n:
        raise GGUFError("truncated GGUF metadata")
    return data.decode("utf-8", "replace")


def _value(f: BinaryIO, vtype: int) -> Any:
    if vtype == _STRING:
        return _string(f)
    if vtype == _ARRAY:
        etype, n = _read(f, "<I"), _read(f, "<Q")
        if etype == _STRING:
            return [_string(f) for _ in range(n)]
        if etype in _SCALARS:
            fmt = _SCALARS[etype]
            size = struct.calcsize(fmt)
            data = f.read(size * n)
            if len(data) != size * n:
                raise GGUFError("truncated GGUF metadata")
            return list(struct.unpack(f"<{n}{fmt[1]}", data))
        return [_value(f, etype) for _ in range(n)]
    if vtype not in _SCALARS:
        raise GGUFError(f"unknown GGUF value type {vtype}")
    return _read(f, _SCALARS[vtype])


def read_metadata(path: str | Path, prefix: str = "tokenizer.") -> dict[str, Any]:
    """The metadata keys starting with `prefix`, and the context length (others are read
    past, not kept)."""
    with open(path, "rb") as f:
        if f.read(4) != b"GGUF":
            raise GGUFError(f"{path} is not a GGUF file")
        version = _read(f, "<I")
        if version < 2:
            raise GGUFError(f"GGUF version {version} is not supported")
        _read(f, "<Q")  # tensor count
        out: dict[str, Any] = {}
        for _ in range(_read(f, "<Q")):
            key = _string(f)
            value = _value(f, _read(f, "<I"))
            if key.startswith(prefix) or key.endswith(".context_length"):
                out[key] = value
        return out


def build(path: str | Path) -> Any:
    """A tokenizers.Tokenizer for the GGUF file's byte-level BPE vocabulary."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    meta = read_metadata(path)
    kind = meta.get("tokenizer.ggml.model")
    if kind != "gpt2":
        raise GGUFError(f"{path}: tokenizer model {kind!r} is not byte-level BPE")
    tokens: list[str] = meta["tokenizer.ggml.tokens"]
    merges = [tuple(m.split(" ", 1)) for m in meta.get("tokenizer.ggml.merges", [])]
    vocab = {t: i for i, t in enumerate(tokens)}
    tok = Tokenizer(models.BPE(vocab, merges, fuse_unk=False))
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if meta.get("tokenizer.ggml.pre") in _DIGITS_FIRST:
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Digits(individual_digits=True), byte_level]
        )
    else:
        tok.pre_tokenizer = byte_level
    tok.decoder = decoders.ByteLevel()
    types = meta.get("tokenizer.ggml.token_type") or []
    special = [t for t, ty in zip(tokens, types, strict=False) if ty == _CONTROL]
    if special:
        tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in special])
    return tok


class LlamaVocab:
    """Fallback for other vocabularies: llama.cpp's own tokenizer (vocab_only loads no weights)."""

    def __init__(self, path: str | Path) -> None:
        from llama_cpp import Llama

        self.llm = Llama(model_path=str(path), vocab_only=True, verbose=False)

    def encode_ids(self, text: str, add_special: bool) -> list[int]:
        return list(self.llm.tokenize(text.encode(), add_bos=add_special, special=True))

    def decode_ids(self, ids: list[int]) -> str:
        return bytes(self.llm.detokenize(ids)).decode("utf-8", "replace")

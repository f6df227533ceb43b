"""Token counts for model aliases that name a tokenizer: loaded once at start-up, shared by
the limits (prompt tokens before a request is sent), usage for backends that return no counts,
and POST /tokenize and /detokenize."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airouter.config import Config, ConfigError
from airouter.templates import ChatTemplate, PromptError, TemplateConfigError, load_template

if TYPE_CHECKING:
    from airouter.config import ModelConfig

log = logging.getLogger("airouter")
# Texts longer than this (characters) are counted on a thread, not on the event loop
# (about a millisecond of encoding).
OFFLOAD_CHARS = 16_384


class Tokenizer:
    """One loaded vocabulary: a `tokenizers.Tokenizer` or, for GGUF vocabularies that are not
    byte-level BPE, llama.cpp's."""

    def __init__(self, impl: Any, max_model_len: int | None = None, llama: bool = False) -> None:
        self.impl = impl
        self.max_model_len = max_model_len
        self._llama = llama

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        if self._llama:
            return self.impl.encode_ids(text, add_special_tokens)  # type: ignore[no-any-return]
        return list(self.impl.encode(text, add_special_tokens=add_special_tokens).ids)

    def count(self, text: str) -> int:
        return len(self.encode(text)) if text else 0

    def decode(self, ids: list[int]) -> str:
        if self._llama:
            return self.impl.decode_ids(ids)  # type: ignore[no-any-return]
        return str(self.impl.decode(ids, skip_special_tokens=False))

    def token_strs(self, ids: list[int]) -> list[str]:
        """Each id's token as the vocabulary writes it (vLLM's `token_strs`)."""
        if self._llama:
            return [self.decode([i]) for i in ids]
        return [self.impl.id_to_token(i) or "" for i in ids]

    def valid_ids(self, ids: list[int]) -> bool:
        size = self.impl.llm.n_vocab() if self._llama else self.impl.get_vocab_size(True)
        return all(0 <= i < size for i in ids)


def _load(path: str) -> Tokenizer:
    from tokenizers import Tokenizer as HFTokenizer

    p = Path(path)
    if p.suffix == ".gguf":
        from airouter import gguf_vocab

        meta = gguf_vocab.read_metadata(p)
        ctx = next((v for k, v in meta.items() if k.endswith(".context_length")), None)
        try:
            return Tokenizer(gguf_vocab.build(p), ctx)
        except gguf_vocab.GGUFError:
            return Tokenizer(gguf_vocab.LlamaVocab(p), ctx, llama=True)
    max_len = None
    if p.is_dir():
        cfg = p / "tokenizer_config.json"
        if cfg.exists():
            value = json.loads(cfg.read_text(encoding="utf-8")).get("model_max_length")
            max_len = value if isinstance(value, int) and value < 1 << 40 else None
        p = p / "tokenizer.json"
    return Tokenizer(HFTokenizer.from_file(str(p)), max_len)


_loaded: dict[str, Tokenizer] = {}


def load_all(cfg: Config) -> None:
    """Load every configured tokenizer (once per path); ConfigError names the model."""
    for alias, m in cfg.models.items():
        if m.tokenizer and m.tokenizer not in _loaded:
            try:
                _loaded[m.tokenizer] = _load(m.tokenizer)
            except Exception as e:
                raise ConfigError(
                    f"models.{alias}.tokenizer: cannot load {m.tokenizer!r}: {e}"
                ) from None


def for_model(model: ModelConfig) -> Tokenizer | None:
    if not model.tokenizer:
        return None
    tok = _loaded.get(model.tokenizer)
    if tok is None:
        tok = _loaded[model.tokenizer] = _load(model.tokenizer)
    return tok


def count_tokens(model: ModelConfig, text: str) -> int | None:
    """Exact tokens in `text` for this model, or None when it has no tokenizer."""
    tok = for_model(model)
    return None if tok is None else tok.count(text)


async def count_async(model: ModelConfig, text: str) -> int | None:
    tok = for_model(model)
    if tok is None:
        return None
    if len(text) < OFFLOAD_CHARS:
        return tok.count(text)
    return await asyncio.get_running_loop().run_in_executor(None, tok.count, text)


def estimate(text: str) -> int:
    """Tokens in `text` without a tokenizer: about four bytes of UTF-8 each."""
    return (_utf8_len(text) + 3) // 4


def _utf8_len(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode())


def _content(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text"
        )
    return ""


def prompt_text(body: dict[str, Any]) -> tuple[str, int]:
    """The text a request's prompt is made of, and any tokens it gives as ids."""
    messages = body.get("messages")
    if isinstance(messages, list):
        return "\n".join(_content(m.get("content")) for m in messages if isinstance(m, dict)), 0
    value = body.get("prompt", body.get("input"))
    if isinstance(value, str):
        return value, 0
    if isinstance(value, list):
        if value and all(isinstance(v, int) for v in value):
            return "", len(value)
        texts = [v for v in value if isinstance(v, str)]
        ids = sum(len(v) for v in value if isinstance(v, list))
        return "\n".join(texts), ids
    return "", 0


_templates: dict[int, ChatTemplate | None] = {}


def chat_template(model: ModelConfig) -> ChatTemplate | None:
    """The model's own chat template (prompt_format, tokenizer_config or template_file), if
    it has one; compiled once. TemplateConfigError if it cannot be loaded."""
    key = id(model)
    if key not in _templates:
        if model.prompt_format or model.tokenizer_config or model.template_file:
            _templates[key] = load_template(
                format=model.prompt_format, tokenizer_config=model.tokenizer_config,
                template_file=model.template_file,
            )
        else:
            _templates[key] = None
    return _templates[key]


def _rendered(model: ModelConfig, body: dict[str, Any]) -> str | None:
    """The prompt a template-rendering backend will send, for an exact count; None when the
    model has no template or the messages do not render (the backend then answers 400)."""
    messages = body.get("messages")
    if not isinstance(messages, list):
        return None
    try:
        template = chat_template(model)
        if template is None:
            return None
        return template.render(messages, add_generation_prompt=True)
    except (PromptError, TemplateConfigError):
        return None


def estimated_prompt(body: dict[str, Any]) -> int:
    """Prompt tokens without a tokenizer: the ids given as such and an estimate of the text
    (`estimate(prompt_text(body))`, chat messages measured without joining them)."""
    messages = body.get("messages")
    if not isinstance(messages, list):
        text, ids = prompt_text(body)
        return ids + estimate(text)
    size = -1  # one separator fewer than messages
    for m in messages:
        if isinstance(m, dict):
            content = m.get("content")
            size += 1 + _utf8_len(content if isinstance(content, str) else _content(content))
    return (max(size, 0) + 3) // 4


async def prompt_tokens(model: ModelConfig, body: dict[str, Any]) -> int:
    """Prompt tokens to charge before the request is sent: exact where the model has a
    tokenizer (chat messages as its chat template renders them), else an estimate; the
    backend's own count corrects it at the end."""
    if not model.tokenizer:
        return estimated_prompt(body)
    rendered = _rendered(model, body)
    if rendered is not None:
        return await count_async(model, rendered) or 0
    text, ids = prompt_text(body)
    counted = await count_async(model, text)
    return ids + (estimate(text) if counted is None else counted)

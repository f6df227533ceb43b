"""POST /tokenize and /detokenize, in vLLM's request and response shapes, for model aliases
that name a tokenizer (other models: 400)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import msgspec

from airouter.config import ModelConfig
from airouter.errors import InvalidRequest
from airouter.exchange import Exchange
from airouter.templates import ChatTemplate, PromptError, TemplateConfigError
from airouter.tokenizers import OFFLOAD_CHARS, Tokenizer, chat_template, for_model

if TYPE_CHECKING:
    from airouter.auth import ClientKey
    from airouter.lifecycle import Holder


class TokenizeRequest(msgspec.Struct, kw_only=True):
    model: str | None = None
    prompt: str | None = None
    messages: list[dict[str, Any]] | None = None
    add_special_tokens: bool | None = None  # vLLM: true for prompts, false for messages
    add_generation_prompt: bool = True
    return_token_strs: bool = False


class TokenizeResponse(msgspec.Struct, omit_defaults=True):
    count: int
    max_model_len: int | None
    tokens: list[int]
    token_strs: list[str] | None = None


class DetokenizeRequest(msgspec.Struct, kw_only=True):
    tokens: list[int]
    model: str | None = None


class DetokenizeResponse(msgspec.Struct):
    prompt: str


_encode = msgspec.json.Encoder().encode


def _decode(data: bytes, typ: type[Any]) -> Any:
    try:
        return msgspec.json.decode(data, type=typ)
    except msgspec.ValidationError as e:
        msg, _, path = str(e).rpartition(" - at ")
        param = path.strip("`").removeprefix("$").lstrip(".") or None
        raise InvalidRequest(msg or str(e), param=param, code="invalid_value") from None
    except msgspec.DecodeError:
        raise InvalidRequest("The body is not valid JSON.", code="invalid_json") from None


def _template(model: ModelConfig, alias: str) -> ChatTemplate:
    try:
        t = chat_template(model)
    except TemplateConfigError as e:
        raise InvalidRequest(str(e), param="model") from None
    if t is None:
        raise InvalidRequest(f"The model '{alias}' has no chat template; send `prompt`.",
                             param="messages", code="chat_not_configured")
    return t


class _Base:
    def __init__(self, holder: Holder) -> None:
        self.holder = holder

    def _tokenizer(self, key: ClientKey, model: str | None) -> tuple[Tokenizer, ModelConfig, str]:
        target = self.holder.state.models.resolve(model, key)
        tok = for_model(target.model)
        if tok is None:
            raise InvalidRequest(
                f"The model '{target.alias}' has no tokenizer configured.",
                param="model", code="tokenizer_not_configured",
            )
        return tok, target.model, target.alias

    async def __call__(self, x: Exchange, key: ClientKey | None) -> None:
        assert key is not None
        state = self.holder.state
        data = await x.body(state.body_limit, state.body_timeout)
        x.send_json(200, await self.handle(key, data))

    async def handle(self, key: ClientKey, data: bytes) -> bytes:
        raise NotImplementedError


class TokenizeEndpoint(_Base):
    async def handle(self, key: ClientKey, data: bytes) -> bytes:
        req: TokenizeRequest = _decode(data, TokenizeRequest)
        tok, model, alias = self._tokenizer(key, req.model)
        if (req.prompt is None) == (req.messages is None):
            raise InvalidRequest("Send exactly one of `prompt` and `messages`.",
                                 param="prompt", code="invalid_value")
        if req.messages is not None:
            try:
                text = _template(model, alias).render(
                    req.messages, add_generation_prompt=req.add_generation_prompt
                )
            except PromptError as e:
                raise InvalidRequest(str(e), param=e.param or "messages") from None
            special = bool(req.add_special_tokens)
        else:
            assert req.prompt is not None
            text = req.prompt
            special = req.add_special_tokens is not False
        if len(text) < OFFLOAD_CHARS:
            ids = tok.encode(text, special)
        else:
            import asyncio

            ids = await asyncio.get_running_loop().run_in_executor(None, tok.encode, text, special)
        strs = tok.token_strs(ids) if req.return_token_strs else None
        return _encode(TokenizeResponse(len(ids), tok.max_model_len, ids, strs))


class DetokenizeEndpoint(_Base):
    async def handle(self, key: ClientKey, data: bytes) -> bytes:
        req: DetokenizeRequest = _decode(data, DetokenizeRequest)
        tok, _, _ = self._tokenizer(key, req.model)
        if not tok.valid_ids(req.tokens):
            raise InvalidRequest("A token id is outside the model's vocabulary.",
                                 param="tokens", code="invalid_value")
        return _encode(DetokenizeResponse(tok.decode(req.tokens)))

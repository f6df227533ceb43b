"""POST /v1/messages/count_tokens (Anthropic): the prompt's tokens, by the model's tokenizer."""

from __future__ import annotations

from typing import Any

import msgspec

from airouter.auth import ClientKey
from airouter.backends.base import Target
from airouter.doors import anthropic
from airouter.errors import InvalidRequest
from airouter.exchange import Exchange
from airouter.lifecycle import Holder
from airouter.protocol.fields import parse_object
from airouter.tokenizers import prompt_tokens

_encode = msgspec.json.Encoder().encode


async def count_prompt_tokens(target: Target, chat: dict[str, Any]) -> int | None:
    """The prompt tokens of a chat request by the target model's tokenizer (the messages as its
    chat template renders them, when it has one), or None when it has no tokenizer."""
    if not target.model.tokenizer:
        return None
    return await prompt_tokens(target.model, chat)


class CountTokensEndpoint:
    def __init__(self, holder: Holder) -> None:
        self.holder = holder

    async def __call__(self, x: Exchange, key: ClientKey | None) -> None:
        assert key is not None
        state = self.holder.state
        chat, req = anthropic.to_chat(
            parse_object(await x.body(state.body_limit, state.body_timeout)), count_only=True
        )
        target = state.models.resolve(req.model, key)
        n = await count_prompt_tokens(target, chat)
        if n is None:
            raise InvalidRequest(
                f"Token counting is not available for the model '{target.alias}': it has "
                "no tokenizer configured.",
                param="model",
                code="unsupported_model",
            )
        x.send_json(200, _encode({"input_tokens": n}))

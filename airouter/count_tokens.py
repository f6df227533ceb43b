"""POST /v1/messages/count_tokens (Anthropic): the prompt's tokens, by the model's tokenizer."""

from __future__ import annotations

from typing import Any

import msgspec

from airouter.backends.base import Target
from airouter.doors import anthropic
from airouter.errors import InvalidRequest, RouterError
from airouter.identity import RequestHeaders
from airouter.lifecycle import Holder
from airouter.protocol.fields import parse_object
from airouter.rsgi import ClientGone, HTTPProtocol, Scope, read_body, send_error, send_json
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

    async def __call__(self, scope: Scope, proto: HTTPProtocol) -> None:
        state = self.holder.state
        h = RequestHeaders(scope)
        rh = [("x-request-id", h.request_id)]
        try:
            key = state.keys.authenticate(h.authorization, h.api_key)
            chat, req = anthropic.to_chat(
                parse_object(await read_body(proto, state.body_limit)), count_only=True
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
            send_json(proto, 200, _encode({"input_tokens": n}), rh)
        except RouterError as e:
            send_error(proto, e, rh, anthropic.error_json)
        except ClientGone:
            return

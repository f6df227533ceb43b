"""Request views: decode only what routing and validation need; everything else passes through."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

import msgspec

from airouter.errors import InvalidRequest
from airouter.protocol.endpoints import Endpoint

Role = Literal["system", "developer", "user", "assistant", "tool", "function"]
Probability = Annotated[float, msgspec.Meta(ge=0, le=1)]
PositiveInt = Annotated[int, msgspec.Meta(ge=1)]


class View(msgspec.Struct, kw_only=True):
    """Unknown fields are allowed: they pass through to the backend untouched."""


class StreamOptions(View, kw_only=True):
    include_usage: bool | None = None


class Message(View, kw_only=True):
    role: Role
    content: str | list[dict[str, Any]] | None = None


class Sampling(View, kw_only=True):
    model: str | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    n: Annotated[int, msgspec.Meta(ge=1, le=128)] | None = None
    max_tokens: PositiveInt | None = None
    max_completion_tokens: PositiveInt | None = None
    temperature: Annotated[float, msgspec.Meta(ge=0, le=2)] | None = None
    top_p: Probability | None = None
    presence_penalty: Annotated[float, msgspec.Meta(ge=-2, le=2)] | None = None
    frequency_penalty: Annotated[float, msgspec.Meta(ge=-2, le=2)] | None = None
    seed: int | None = None
    stop: str | Annotated[list[str], msgspec.Meta(max_length=4)] | None = None


class ChatRequest(Sampling, kw_only=True):
    messages: Annotated[list[Message], msgspec.Meta(min_length=1)]
    logprobs: bool | None = None
    top_logprobs: Annotated[int, msgspec.Meta(ge=0, le=20)] | None = None


# msgspec allows one array type per union, so mixed lists are accepted here and the backend judges.
Prompt = str | list[str | int | list[int]]


class CompletionRequest(Sampling, kw_only=True):
    prompt: Prompt
    echo: bool | None = None


class EmbeddingRequest(View, kw_only=True):
    input: Prompt
    model: str | None = None
    encoding_format: Literal["float", "base64"] | None = None
    dimensions: PositiveInt | None = None


Request = ChatRequest | CompletionRequest | EmbeddingRequest

_VIEWS: dict[Endpoint, type[Request]] = {
    Endpoint.CHAT: ChatRequest,
    Endpoint.COMPLETIONS: CompletionRequest,
    Endpoint.EMBEDDINGS: EmbeddingRequest,
}

_decode_any = msgspec.json.Decoder().decode
_PATH = re.compile(r" - at `\$(.*)`$")


def _param(path: str) -> str | None:
    # `$.messages[0].role` -> "messages[0].role"; msgspec reports a missing field on the parent.
    p = path.lstrip(".")
    return p or None


MAX_DEPTH = 128


def _depth_over(obj: Any, limit: int) -> bool:
    stack: list[tuple[Any, int]] = [(obj, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > limit:
            return True
        children = node.values() if isinstance(node, dict) else node
        for child in children:
            if isinstance(child, (dict, list)):
                stack.append((child, depth + 1))
    return False


def decode(endpoint: Endpoint, data: bytes) -> tuple[dict[str, Any], Request]:
    """Decode and validate a request body; raises InvalidRequest with `param` set."""
    try:
        body = _decode_any(data)
    except msgspec.DecodeError as e:
        raise InvalidRequest(
            f"We could not parse the JSON body of your request: {e}", code="invalid_json"
        ) from None
    except UnicodeDecodeError:
        raise InvalidRequest(
            "We could not parse the JSON body of your request: it is not valid UTF-8.",
            code="invalid_json",
        ) from None
    except RecursionError:
        raise InvalidRequest(
            "We could not parse the JSON body of your request: it is nested too deeply.",
            code="invalid_json",
        ) from None
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.", code="invalid_json")
    # The decoder stops near Python's recursion limit; a body just under it would still blow
    # the stack later (re-encoding it for the backend, rendering a template). Bracket counting
    # is C-fast, so only bodies that could be that deep are walked.
    if data.count(b"[") + data.count(b"{") > MAX_DEPTH and _depth_over(body, MAX_DEPTH):
        raise InvalidRequest(
            f"We could not parse the JSON body of your request: it is nested more than "
            f"{MAX_DEPTH} levels deep.",
            code="invalid_json",
        )
    try:
        view = msgspec.convert(body, _VIEWS[endpoint])
    except msgspec.ValidationError as e:
        text = str(e)
        m = _PATH.search(text)
        message = text[: m.start()] if m else text
        param = _param(m.group(1)) if m else None
        missing = re.match(r"Object missing required field `([^`]+)`", message)
        if missing:
            param = f"{param}.{missing.group(1)}" if param else missing.group(1)
            message = f"Missing required parameter: '{param}'."
        else:
            message = f"Invalid value for '{param}': {message}." if param else f"{message}."
        raise InvalidRequest(message, param=param, code="invalid_value") from None
    except RecursionError:
        raise InvalidRequest(
            "The request body is nested too deeply.", code="invalid_json"
        ) from None
    _check_combinations(view)
    return body, view


def _check_combinations(view: Request) -> None:
    """Fields that are valid alone but not together; OpenAI refuses these, so do we."""
    if isinstance(view, Sampling) and view.stream_options is not None and not view.stream:
        raise InvalidRequest(
            "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
            param="stream_options",
            code="invalid_value",
        )
    if isinstance(view, ChatRequest) and view.top_logprobs is not None and not view.logprobs:
        raise InvalidRequest(
            "The 'top_logprobs' parameter is only allowed when 'logprobs' is true.",
            param="top_logprobs",
            code="invalid_value",
        )

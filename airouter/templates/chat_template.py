"""ChatTemplate: a prompt format compiled once, rendered per request."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jinja2

from airouter.templates.environment import RaisedByTemplate, compile_template
from airouter.templates.errors import PromptError
from airouter.templates.formats import PromptFormat
from airouter.templates.messages import fold_tool_turns, normalise_messages

# what a template can throw at data it did not expect (e.g. None + str in a custom template)
_DATA_ERRORS = (TypeError, ValueError, LookupError, AttributeError, ArithmeticError)


class ChatTemplate:
    """Renders OpenAI chat messages into one prompt string.

    The template is compiled at construction (start-up); :meth:`render` is the
    per-request work. Variables seen by the template follow transformers'
    ``apply_chat_template``: ``messages``, ``tools`` (None when not given),
    ``documents`` (None), ``add_generation_prompt``, ``bos_token``, ``eos_token``,
    plus ``extra_context`` and per-call keyword arguments.
    """

    __slots__ = ("_format", "_template", "_context")

    def __init__(
        self,
        prompt_format: PromptFormat,
        *,
        extra_context: Mapping[str, Any] | None = None,
        origin: str | None = None,
    ) -> None:
        self._format = prompt_format
        self._template = compile_template(
            prompt_format.template, origin=origin or prompt_format.name
        )
        self._context: dict[str, Any] = {
            "bos_token": prompt_format.bos_token,
            "eos_token": prompt_format.eos_token,
            **(extra_context or {}),
        }

    @property
    def format(self) -> PromptFormat:
        return self._format

    @property
    def name(self) -> str:
        return self._format.name

    @property
    def bos_token(self) -> str:
        return self._format.bos_token

    @property
    def eos_token(self) -> str:
        return self._format.eos_token

    @property
    def stop_tokens(self) -> tuple[str, ...]:
        return self._format.stop_tokens

    @property
    def supports_tools(self) -> bool:
        return self._format.supports_tools

    def render(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        add_generation_prompt: bool = True,
        tools: Sequence[Mapping[str, Any]] | None = None,
        **kwargs: Any,
    ) -> str:
        """The prompt for ``messages``; PromptError if they cannot be expressed."""
        fmt = self._format
        tool_list = _check_tools(tools, fmt)
        normalised = normalise_messages(messages, tool_call_id_length=fmt.tool_call_id_length)
        if not fmt.native_tool_turns:
            normalised = fold_tool_turns(normalised)
        context = {
            **self._context,
            **kwargs,
            "messages": normalised,
            "tools": tool_list,
            "documents": None,
            "add_generation_prompt": add_generation_prompt,
        }
        try:
            return self._template.render(context)
        except RaisedByTemplate as exc:
            raise PromptError(str(exc.message)) from exc
        except (jinja2.TemplateError, *_DATA_ERRORS) as exc:
            raise PromptError(
                f"chat template {fmt.name!r} cannot render these messages: {exc}"
            ) from exc


def _check_tools(
    tools: Sequence[Mapping[str, Any]] | None, fmt: PromptFormat
) -> list[dict[str, Any]] | None:
    # an empty tools list means "no tools", as in vLLM
    if not tools:
        return None
    if not fmt.supports_tools:
        raise PromptError(f"prompt format {fmt.name!r} does not support tools", param="tools")
    if isinstance(tools, str | bytes) or not isinstance(tools, Sequence):
        raise PromptError("tools must be a list of tool objects", param="tools")
    checked: list[dict[str, Any]] = []
    for i, tool in enumerate(tools):
        if not isinstance(tool, Mapping):
            raise PromptError(f"tools[{i}] must be an object", param="tools")
        checked.append(dict(tool))
    return checked

"""Built-in prompt formats: template source plus the model family's special tokens."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from importlib import resources

from airouter.templates.errors import TemplateConfigError


@dataclass(frozen=True, slots=True)
class PromptFormat:
    """Everything needed to turn chat messages into one model family's prompt string.

    ``template`` is jinja2 source in Hugging Face chat-template style. ``stop_tokens``
    are the strings that end a generated turn (pass them to the backend as stop words).
    ``supports_tools``: the template can render a request's ``tools``. ``native_tool_turns``:
    the template renders ``tool`` messages and assistant ``tool_calls`` itself; when false
    they are folded into plain user/assistant turns before rendering.
    ``tool_call_id_length``: tool-call ids are shortened to this many alphanumerics first.
    """

    name: str
    template: str
    bos_token: str = ""
    eos_token: str = ""
    stop_tokens: tuple[str, ...] = ()
    supports_tools: bool = True
    native_tool_turns: bool = True
    tool_call_id_length: int | None = None
    reference: str = ""


@dataclass(frozen=True, slots=True)
class _Spec:
    bos_token: str
    eos_token: str
    stop_tokens: tuple[str, ...]
    reference: str
    tools: bool = False
    tool_call_id_length: int | None = None


_SPECS: dict[str, _Spec] = {
    "llama3": _Spec(
        "<|begin_of_text|>",
        "<|eot_id|>",
        ("<|eot_id|>", "<|end_of_text|>"),
        "meta-llama/Meta-Llama-3-8B-Instruct tokenizer_config.json chat_template",
    ),
    "llama3.1": _Spec(
        "<|begin_of_text|>",
        "<|eot_id|>",
        ("<|eot_id|>", "<|eom_id|>", "<|end_of_text|>"),
        "meta-llama/Llama-3.1-8B-Instruct tokenizer_config.json chat_template",
        tools=True,
    ),
    "llama2": _Spec(
        "<s>",
        "</s>",
        ("</s>",),
        "meta-llama/Llama-2-7b-chat-hf tokenizer_config.json chat_template",
    ),
    "mistral": _Spec(
        "<s>",
        "</s>",
        ("</s>",),
        "mistralai/Mistral-7B-Instruct-v0.3 tokenizer_config.json chat_template (v3 tokenizer)",
        tools=True,
        tool_call_id_length=9,
    ),
    "chatml": _Spec(
        "",
        "<|im_end|>",
        ("<|im_end|>", "<|endoftext|>"),
        "ChatML as in transformers' former default template / teknium/OpenHermes-2.5-Mistral-7B",
    ),
    "gemma": _Spec(
        "<bos>",
        "<eos>",
        ("<end_of_turn>", "<eos>"),
        "google/gemma-3-*-it tokenizer_config.json chat_template (text parts)",
    ),
    "phi3": _Spec(
        "<s>",
        "<|endoftext|>",
        ("<|end|>", "<|endoftext|>"),
        "microsoft/Phi-3.5-mini-instruct tokenizer_config.json chat_template",
    ),
}

BUILTIN_FORMATS: tuple[str, ...] = tuple(_SPECS)


@functools.cache
def get_format(name: str) -> PromptFormat:
    """The built-in format ``name``; TemplateConfigError naming the known ones if unknown."""
    spec = _SPECS.get(name)
    if spec is None:
        known = ", ".join(BUILTIN_FORMATS)
        raise TemplateConfigError(f"unknown prompt format {name!r}; known formats: {known}")
    source = (
        resources.files("airouter.templates").joinpath(f"{name}.j2").read_text(encoding="utf-8")
    )
    return PromptFormat(
        name=name,
        template=source,
        bos_token=spec.bos_token,
        eos_token=spec.eos_token,
        stop_tokens=spec.stop_tokens,
        supports_tools=spec.tools,
        native_tool_turns=spec.tools,
        tool_call_id_length=spec.tool_call_id_length,
        reference=spec.reference,
    )

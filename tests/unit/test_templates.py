"""Tests for airouter.templates: built-in prompt formats, HF chat templates, loading."""

from __future__ import annotations

import dataclasses
import json
from importlib import resources
from pathlib import Path
from typing import Any

import jinja2
import jinja2.ext
import pytest
from jinja2.sandbox import ImmutableSandboxedEnvironment

from airouter.templates import (
    BUILTIN_FORMATS,
    ChatTemplate,
    PromptError,
    PromptFormat,
    TemplateConfigError,
    get_format,
    load_template,
)

DATA = Path(__file__).resolve().parent.parent / "data" / "templates"
TOKENIZER_CONFIG = DATA / "tokenizer_config.json"

CONVERSATION: list[dict[str, Any]] = [
    {"role": "system", "content": "You are a terse assistant."},
    {"role": "user", "content": "What is the capital of France?"},
    {"role": "assistant", "content": "Paris."},
    {"role": "user", "content": "And of Italy?"},
]
SINGLE_USER: list[dict[str, Any]] = [{"role": "user", "content": "Hello!"}]
TEXT_PARTS: list[dict[str, Any]] = [
    {"role": "system", "content": [{"type": "text", "text": "Answer in English."}]},
    {
        "role": "user",
        "content": [
            {"type": "text", "text": "Describe this:"},
            {"type": "text", "text": "A cat on a mat."},
        ],
    },
]

# Reference renderings (add_generation_prompt=True) of each family's official chat template,
# produced with jinja2 set up as transformers sets it up:
#   llama3   meta-llama/Meta-Llama-3-8B-Instruct        tokenizer_config.json chat_template
#   llama3.1 meta-llama/Llama-3.1-8B-Instruct           tokenizer_config.json chat_template
#   llama2   meta-llama/Llama-2-7b-chat-hf              tokenizer_config.json chat_template
#   mistral  mistralai/Mistral-7B-Instruct-v0.3         tokenizer_config.json chat_template
#   chatml   teknium/OpenHermes-2.5-Mistral-7B / transformers' former ChatML default
#   gemma    google/gemma-3-*-it                        tokenizer_config.json chat_template
#   phi3     microsoft/Phi-3.5-mini-instruct            tokenizer_config.json chat_template
# Text parts are joined with "\n", so the TEXT_PARTS reference is the official rendering of
# the same conversation with "Describe this:\nA cat on a mat." as a plain string.
EXPECTED: dict[str, tuple[str, str, str]] = {
    "llama3": (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
        "You are a terse assistant.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nWhat is the capital of France?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nParis.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nAnd of Italy?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n",
        "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHello!<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n",
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
        "Answer in English.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nDescribe this:\nA cat on a mat.<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n",
    ),
    "llama3.1": (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
        "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n"
        "You are a terse assistant.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nWhat is the capital of France?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nParis.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nAnd of Italy?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n",
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
        "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nHello!<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n",
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
        "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n"
        "Answer in English.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nDescribe this:\nA cat on a mat.<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n",
    ),
    "llama2": (
        "<s>[INST] <<SYS>>\nYou are a terse assistant.\n<</SYS>>\n\n"
        "What is the capital of France? [/INST] Paris. </s><s>[INST] And of Italy? [/INST]",
        "<s>[INST] Hello! [/INST]",
        "<s>[INST] <<SYS>>\nAnswer in English.\n<</SYS>>\n\n"
        "Describe this:\nA cat on a mat. [/INST]",
    ),
    "mistral": (
        "<s>[INST] What is the capital of France?[/INST] Paris.</s>"
        "[INST] You are a terse assistant.\n\nAnd of Italy?[/INST]",
        "<s>[INST] Hello![/INST]",
        "<s>[INST] Answer in English.\n\nDescribe this:\nA cat on a mat.[/INST]",
    ),
    "chatml": (
        "<|im_start|>system\nYou are a terse assistant.<|im_end|>\n"
        "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n"
        "<|im_start|>assistant\nParis.<|im_end|>\n"
        "<|im_start|>user\nAnd of Italy?<|im_end|>\n"
        "<|im_start|>assistant\n",
        "<|im_start|>user\nHello!<|im_end|>\n<|im_start|>assistant\n",
        "<|im_start|>system\nAnswer in English.<|im_end|>\n"
        "<|im_start|>user\nDescribe this:\nA cat on a mat.<|im_end|>\n"
        "<|im_start|>assistant\n",
    ),
    "gemma": (
        "<bos><start_of_turn>user\nYou are a terse assistant.\n\n"
        "What is the capital of France?<end_of_turn>\n"
        "<start_of_turn>model\nParis.<end_of_turn>\n"
        "<start_of_turn>user\nAnd of Italy?<end_of_turn>\n"
        "<start_of_turn>model\n",
        "<bos><start_of_turn>user\nHello!<end_of_turn>\n<start_of_turn>model\n",
        "<bos><start_of_turn>user\nAnswer in English.\n\n"
        "Describe this:\nA cat on a mat.<end_of_turn>\n<start_of_turn>model\n",
    ),
    "phi3": (
        "<|system|>\nYou are a terse assistant.<|end|>\n"
        "<|user|>\nWhat is the capital of France?<|end|>\n"
        "<|assistant|>\nParis.<|end|>\n"
        "<|user|>\nAnd of Italy?<|end|>\n"
        "<|assistant|>\n",
        "<|user|>\nHello!<|end|>\n<|assistant|>\n",
        "<|system|>\nAnswer in English.<|end|>\n"
        "<|user|>\nDescribe this:\nA cat on a mat.<|end|>\n"
        "<|assistant|>\n",
    ),
}

CASES: dict[str, list[dict[str, Any]]] = {
    "conversation": CONVERSATION,
    "single_user": SINGLE_USER,
    "text_parts": TEXT_PARTS,
}

WEATHER_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}
TOOL_CONVERSATION: list[dict[str, Any]] = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Weather in Paris?"},
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "call_abc123XYZ987",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
            }
        ],
    },
    {"role": "tool", "tool_call_id": "call_abc123XYZ987", "content": "21 °C, sunny"},
]


def _reference_render(source: str, **context: Any) -> str:
    """Render like transformers' apply_chat_template, built by hand."""

    def raise_exception(message: str) -> None:
        raise jinja2.TemplateError(message)

    def tojson(
        value: Any,
        ensure_ascii: bool = False,
        indent: int | None = None,
        separators: tuple[str, str] | None = None,
        sort_keys: bool = False,
    ) -> str:
        return json.dumps(
            value,
            ensure_ascii=ensure_ascii,
            indent=indent,
            separators=separators,
            sort_keys=sort_keys,
        )

    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    return env.from_string(source).render(**context)


# --- built-in formats -------------------------------------------------------------------


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("name", list(EXPECTED))
def test_builtin_matches_official_template(name: str, case: str) -> None:
    expected = EXPECTED[name][list(CASES).index(case)]
    template = load_template(format=name)
    assert template.render(CASES[case], add_generation_prompt=True) == expected


def test_every_builtin_format_has_reference_renderings() -> None:
    assert set(BUILTIN_FORMATS) == set(EXPECTED)


# llama.cpp's tests/test-chat-template.cpp renders this conversation through the official
# templates (bos_token ""); an independent check of whitespace handling.
LLAMA_CPP_CONVERSATION: list[dict[str, Any]] = [
    {"role": "system", "content": "You are a helpful assistant"},
    {"role": "user", "content": "Hello"},
    {"role": "assistant", "content": "Hi there"},
    {"role": "user", "content": "Who are you"},
    {"role": "assistant", "content": "   I am an assistant   "},
    {"role": "user", "content": "Another question"},
]
LLAMA_CPP_EXPECTED = {
    "llama3": "<|start_header_id|>system<|end_header_id|>\n\nYou are a helpful assistant<|eot_id|>"
    "<|start_header_id|>user<|end_header_id|>\n\nHello<|eot_id|>"
    "<|start_header_id|>assistant<|end_header_id|>\n\nHi there<|eot_id|>"
    "<|start_header_id|>user<|end_header_id|>\n\nWho are you<|eot_id|>"
    "<|start_header_id|>assistant<|end_header_id|>\n\nI am an assistant<|eot_id|>"
    "<|start_header_id|>user<|end_header_id|>\n\nAnother question<|eot_id|>"
    "<|start_header_id|>assistant<|end_header_id|>\n\n",
    "mistral": "[INST] Hello[/INST] Hi there</s>[INST] Who are you[/INST] I am an assistant</s>"
    "[INST] You are a helpful assistant\n\nAnother question[/INST]",
    "chatml": "<|im_start|>system\nYou are a helpful assistant<|im_end|>\n"
    "<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\nHi there<|im_end|>\n"
    "<|im_start|>user\nWho are you<|im_end|>\n"
    "<|im_start|>assistant\n   I am an assistant   <|im_end|>\n"
    "<|im_start|>user\nAnother question<|im_end|>\n<|im_start|>assistant\n",
    "phi3": "<|system|>\nYou are a helpful assistant<|end|>\n<|user|>\nHello<|end|>\n"
    "<|assistant|>\nHi there<|end|>\n<|user|>\nWho are you<|end|>\n"
    "<|assistant|>\n   I am an assistant   <|end|>\n<|user|>\nAnother question<|end|>\n"
    "<|assistant|>\n",
}


@pytest.mark.parametrize("name", list(LLAMA_CPP_EXPECTED))
def test_builtin_matches_llama_cpp_expectations(name: str) -> None:
    fmt = dataclasses.replace(get_format(name), bos_token="")
    assert ChatTemplate(fmt).render(LLAMA_CPP_CONVERSATION) == LLAMA_CPP_EXPECTED[name]


@pytest.mark.parametrize(
    ("name", "bos", "eos", "stops"),
    [
        ("llama3", "<|begin_of_text|>", "<|eot_id|>", ("<|eot_id|>", "<|end_of_text|>")),
        (
            "llama3.1",
            "<|begin_of_text|>",
            "<|eot_id|>",
            ("<|eot_id|>", "<|eom_id|>", "<|end_of_text|>"),
        ),
        ("llama2", "<s>", "</s>", ("</s>",)),
        ("mistral", "<s>", "</s>", ("</s>",)),
        ("chatml", "", "<|im_end|>", ("<|im_end|>", "<|endoftext|>")),
        ("gemma", "<bos>", "<eos>", ("<end_of_turn>", "<eos>")),
        ("phi3", "<s>", "<|endoftext|>", ("<|end|>", "<|endoftext|>")),
    ],
)
def test_builtin_format_tokens(name: str, bos: str, eos: str, stops: tuple[str, ...]) -> None:
    fmt = get_format(name)
    assert isinstance(fmt, PromptFormat)
    assert (fmt.name, fmt.bos_token, fmt.eos_token, fmt.stop_tokens) == (name, bos, eos, stops)
    template = load_template(format=name)
    assert (template.bos_token, template.eos_token, template.stop_tokens) == (bos, eos, stops)
    with pytest.raises(dataclasses.FrozenInstanceError):
        fmt.name = "other"  # type: ignore[misc]


@pytest.mark.parametrize("name", BUILTIN_FORMATS)
def test_builtin_templates_are_package_data(name: str) -> None:
    source = resources.files("airouter.templates").joinpath(f"{name}.j2").read_text("utf-8")
    assert source == get_format(name).template


def test_add_generation_prompt_false() -> None:
    chatml = load_template(format="chatml")
    rendered = chatml.render(SINGLE_USER, add_generation_prompt=False)
    assert rendered == "<|im_start|>user\nHello!<|im_end|>\n"
    phi3 = load_template(format="phi3")
    assert (
        phi3.render(SINGLE_USER, add_generation_prompt=False)
        == "<|user|>\nHello!<|end|>\n<|endoftext|>"
    )


def test_developer_role_is_system() -> None:
    messages = [{"role": "developer", "content": "Rules."}, {"role": "user", "content": "Hi"}]
    rendered = load_template(format="chatml").render(messages)
    assert rendered.startswith("<|im_start|>system\nRules.<|im_end|>\n")


@pytest.mark.parametrize("name", ["llama2", "mistral", "gemma"])
def test_non_alternating_roles_rejected_like_official(name: str) -> None:
    messages = [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]
    with pytest.raises(PromptError, match="alternate user/assistant"):
        load_template(format=name).render(messages)


def test_llama31_date_string_override() -> None:
    template = load_template(format="llama3.1", extra_context={"date_string": "01 Jan 2025"})
    assert "Today Date: 01 Jan 2025\n\n" in template.render(SINGLE_USER)
    assert "Today Date: 02 Feb 2025\n\n" in template.render(SINGLE_USER, date_string="02 Feb 2025")


def test_llama31_tools_and_ipython_turns_match_official() -> None:
    rendered = load_template(format="llama3.1").render(TOOL_CONVERSATION, tools=[WEATHER_TOOL])
    tool_json = json.dumps(WEATHER_TOOL, indent=4)
    assert rendered == (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
        "Environment: ipython\nCutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n"
        "Be brief.<|eot_id|><|start_header_id|>user<|end_header_id|>\n\n"
        "Given the following functions, please respond with a JSON for a function call with its "
        "proper arguments that best answers the given prompt.\n\n"
        'Respond in the format {"name": function name, "parameters": dictionary of argument name '
        "and its value}.Do not use variables.\n\n" + tool_json + "\n\nWeather in Paris?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
        '{"name": "get_weather", "parameters": {"city": "Paris"}}<|eot_id|>'
        # the official template JSON-encodes string tool results
        '<|start_header_id|>ipython<|end_header_id|>\n\n"21 °C, sunny"<|eot_id|>'
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )


def test_llama31_rejects_parallel_tool_calls() -> None:
    calls = TOOL_CONVERSATION[2]["tool_calls"] * 2
    messages = [*TOOL_CONVERSATION[:2], {"role": "assistant", "content": None, "tool_calls": calls}]
    with pytest.raises(PromptError, match="only supports single tool-calls"):
        load_template(format="llama3.1").render(messages)


def test_mistral_tools_match_official_with_ids_shortened_to_nine() -> None:
    follow_up = [
        {"role": "assistant", "content": "21 °C and sunny."},
        {"role": "user", "content": "And Rome?"},
    ]
    rendered = load_template(format="mistral").render(
        [*TOOL_CONVERSATION, *follow_up], tools=[WEATHER_TOOL]
    )
    assert rendered == (
        "<s>[INST] Weather in Paris?[/INST]"
        '[TOOL_CALLS] [{"name": "get_weather", "arguments": {"city": "Paris"}, '
        '"id": "123XYZ987"}]</s>'
        '[TOOL_RESULTS] {"content": 21 °C, sunny, "call_id": "123XYZ987"}[/TOOL_RESULTS]'
        " 21 °C and sunny.</s>"
        '[AVAILABLE_TOOLS] [{"type": "function", "function": {"name": "get_weather", '
        '"description": "Current weather for a city", "parameters": {"type": "object", '
        '"properties": {"city": {"type": "string"}}, "required": ["city"]}}}][/AVAILABLE_TOOLS]'
        "[INST] Be brief.\n\nAnd Rome?[/INST]"
    )


def test_tool_turns_folded_for_formats_without_tool_syntax() -> None:
    messages = [
        *TOOL_CONVERSATION[1:],
        {"role": "tool", "tool_call_id": "call_2", "content": "humid"},
    ]
    rendered = load_template(format="chatml").render(messages)
    assert rendered == (
        "<|im_start|>user\nWeather in Paris?<|im_end|>\n"
        '<|im_start|>assistant\n{"name": "get_weather", "arguments": {"city": "Paris"}}<|im_end|>\n'
        "<|im_start|>user\n21 °C, sunny\n\nhumid<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    # gemma's alternation check accepts the folded conversation
    assert load_template(format="gemma").render(messages).endswith("<start_of_turn>model\n")


def test_tools_rejected_by_formats_without_tool_syntax() -> None:
    with pytest.raises(PromptError, match="does not support tools") as info:
        load_template(format="llama3").render(SINGLE_USER, tools=[WEATHER_TOOL])
    assert info.value.param == "tools"
    assert not load_template(format="llama3").supports_tools
    assert load_template(format="llama3.1").supports_tools


# --- message validation -----------------------------------------------------------------


def test_image_part_rejected() -> None:
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is this?"},
                {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}},
            ],
        }
    ]
    with pytest.raises(
        PromptError, match=r"messages\[0\]\.content\[1\] has type 'image_url'"
    ) as info:
        load_template(format="chatml").render(messages)
    assert isinstance(info.value, ValueError)
    assert info.value.param == "messages"


@pytest.mark.parametrize(
    ("messages", "match"),
    [
        ([], "at least one message"),
        ("hello", "must be a list"),
        ([{"role": "wizard", "content": "x"}], r"messages\[0\]\.role 'wizard'"),
        ([{"role": "user"}], r"messages\[0\]\.content is required"),
        ([{"role": "user", "content": 3}], "string or a list"),
        (["hi"], r"messages\[0\] must be an object"),
        ([{"role": "user", "content": [{"type": "text", "text": 1}]}], r"\.text must be a string"),
    ],
)
def test_invalid_messages(messages: Any, match: str) -> None:
    with pytest.raises(PromptError, match=match):
        load_template(format="chatml").render(messages)


def test_render_does_not_mutate_messages() -> None:
    messages = json.loads(json.dumps(TOOL_CONVERSATION))
    snapshot = json.loads(json.dumps(messages))
    load_template(format="mistral").render(messages, tools=[WEATHER_TOOL])
    load_template(format="chatml").render(messages)
    assert messages == snapshot


# --- Hugging Face chat templates --------------------------------------------------------


def _config_template() -> str:
    return str(json.loads(TOKENIZER_CONFIG.read_text("utf-8"))["chat_template"])


@pytest.mark.parametrize("with_tools", [False, True])
@pytest.mark.parametrize("add_generation_prompt", [False, True])
def test_tokenizer_config_renders_like_transformers(
    with_tools: bool, add_generation_prompt: bool
) -> None:
    template = load_template(tokenizer_config=TOKENIZER_CONFIG)
    tools = [WEATHER_TOOL] if with_tools else None
    # transformers' convention: tool-call arguments are objects, not JSON strings
    hf_messages = json.loads(json.dumps(TOOL_CONVERSATION))
    hf_messages[2]["tool_calls"][0]["function"]["arguments"] = {"city": "Paris"}
    hf_messages[2]["content"] = ""
    expected = _reference_render(
        _config_template(),
        messages=hf_messages,
        tools=tools,
        documents=None,
        add_generation_prompt=add_generation_prompt,
        bos_token="<|endoftext|>",
        eos_token="<|im_end|>",
    )
    rendered = template.render(
        TOOL_CONVERSATION, tools=tools, add_generation_prompt=add_generation_prompt
    )
    assert rendered == expected
    assert "<tool_call>\n" + '{"name":"get_weather","arguments":{"city":"Paris"}}' in rendered
    assert "21 °C" in rendered  # tojson keeps non-ASCII, like transformers
    if with_tools:
        assert '\n{"name": "get_weather", "description": "Current weather for a city"' in rendered


def test_tokenizer_config_tokens_from_added_token_dicts() -> None:
    template = load_template(tokenizer_config=TOKENIZER_CONFIG)
    assert template.bos_token == "<|endoftext|>"
    assert template.eos_token == "<|im_end|>"
    assert template.stop_tokens == ("<|im_end|>",)
    assert template.supports_tools
    assert template.name == str(TOKENIZER_CONFIG)


def test_raise_exception_surfaces_as_prompt_error() -> None:
    template = load_template(tokenizer_config=TOKENIZER_CONFIG)
    bad_tool = {"type": "retrieval", "function": {"name": "x"}}
    with pytest.raises(PromptError) as info:
        template.render(SINGLE_USER, tools=[bad_tool])
    assert str(info.value) == "Only function tools are supported, got: retrieval"
    assert info.value.param == "messages"


def test_template_runtime_failure_is_prompt_error() -> None:
    fmt = PromptFormat(name="custom", template="{{ messages[0]['content'] + 1 }}")
    with pytest.raises(PromptError, match="chat template 'custom' cannot render"):
        ChatTemplate(fmt).render(SINGLE_USER)


def test_hf_environment_extras() -> None:
    source = (
        "{% generation %}{{ messages[0]['content'] }}{% endgeneration %}"
        "{% for m in messages %}{% if loop.index > 1 %}{% break %}{% endif %}"
        "|{{ m.role }}{% endfor %}"
        "|{{ strftime_now('%Y') | length }}|{{ {'k': 'é'} | tojson(indent=1) }}|{{ extra }}"
    )
    template = ChatTemplate(PromptFormat(name="t", template=source), extra_context={"extra": "E"})
    rendered = template.render([*SINGLE_USER, {"role": "assistant", "content": "x"}])
    assert rendered == 'Hello!|user|4|{\n "k": "é"\n}|E'


def test_sandbox_blocks_unsafe_access() -> None:
    fmt = PromptFormat(name="t", template="{{ messages.__class__.__mro__ }}")
    with pytest.raises(PromptError):
        ChatTemplate(fmt).render(SINGLE_USER)


def test_chat_template_list_form_picks_default(tmp_path: Path) -> None:
    config = {
        "chat_template": [
            {"name": "tool_use", "template": "TOOLS"},
            {"name": "default", "template": "DEFAULT {{ messages | length }}"},
        ],
        "eos_token": "</s>",
    }
    path = tmp_path / "tokenizer_config.json"
    path.write_text(json.dumps(config), "utf-8")
    assert load_template(tokenizer_config=path).render(SINGLE_USER) == "DEFAULT 1"


def test_chat_template_list_form_without_default(tmp_path: Path) -> None:
    path = tmp_path / "tokenizer_config.json"
    path.write_text(json.dumps({"chat_template": [{"name": "rag", "template": "x"}]}), "utf-8")
    with pytest.raises(TemplateConfigError, match="none named 'default'"):
        load_template(tokenizer_config=path)


def test_chat_template_jinja_next_to_config(tmp_path: Path) -> None:
    (tmp_path / "tokenizer_config.json").write_text('{"bos_token": null}', "utf-8")
    (tmp_path / "chat_template.jinja").write_text("{{ messages[0].content }}!", "utf-8")
    template = load_template(tokenizer_config=tmp_path / "tokenizer_config.json")
    assert template.render(SINGLE_USER) == "Hello!!"
    assert template.bos_token == ""


# --- loader -----------------------------------------------------------------------------


def test_unknown_format_lists_known_formats() -> None:
    with pytest.raises(TemplateConfigError) as info:
        load_template(format="vicuna")
    message = str(info.value)
    assert "'vicuna'" in message
    for name in BUILTIN_FORMATS:
        assert name in message


def test_template_file_standalone_and_with_format_tokens() -> None:
    path = DATA / "custom.jinja"
    bare = load_template(template_file=path)
    assert bare.render(SINGLE_USER) == "### User:\nHello!\n### Assistant:\n"
    with_tokens = load_template(template_file=str(path), format="llama2")
    assert with_tokens.render(SINGLE_USER) == "<s>### User:\nHello!</s>\n### Assistant:\n"
    assert with_tokens.stop_tokens == ("</s>",)
    assert with_tokens.name == str(path)


def test_template_file_with_tokenizer_config_tokens() -> None:
    template = load_template(template_file=DATA / "custom.jinja", tokenizer_config=TOKENIZER_CONFIG)
    assert template.render(SINGLE_USER, add_generation_prompt=False) == (
        "<|endoftext|>### User:\nHello!<|im_end|>\n"
    )


def test_missing_template_file_names_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope.jinja"
    with pytest.raises(TemplateConfigError, match=f"cannot read template file {missing}"):
        load_template(template_file=missing)


def test_missing_tokenizer_config_names_path(tmp_path: Path) -> None:
    missing = tmp_path / "tokenizer_config.json"
    with pytest.raises(TemplateConfigError, match=f"cannot read tokenizer config {missing}"):
        load_template(tokenizer_config=missing)


def test_template_syntax_error_names_path_and_line() -> None:
    path = DATA / "broken.jinja"
    with pytest.raises(TemplateConfigError, match=f"chat template {path}: syntax error at line"):
        load_template(template_file=path)


def test_tokenizer_config_syntax_error_names_path(tmp_path: Path) -> None:
    path = tmp_path / "tokenizer_config.json"
    path.write_text(json.dumps({"chat_template": "{% if %}"}), "utf-8")
    with pytest.raises(TemplateConfigError, match=f"chat template {path}: syntax error"):
        load_template(tokenizer_config=path)


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ("{not json", "is not valid JSON"),
        ("[1, 2]", "must hold a JSON object"),
        ('{"eos_token": "</s>"}', "has no chat_template"),
        ('{"chat_template": "x", "eos_token": 5}', "eos_token must be a string or an AddedToken"),
        ('{"chat_template": 5}', "chat_template must be a string or a list"),
    ],
)
def test_bad_tokenizer_config(tmp_path: Path, content: str, match: str) -> None:
    path = tmp_path / "tokenizer_config.json"
    path.write_text(content, "utf-8")
    with pytest.raises(TemplateConfigError, match=match) as info:
        load_template(tokenizer_config=path)
    assert str(path) in str(info.value)


def test_loader_argument_errors() -> None:
    with pytest.raises(TemplateConfigError, match="not both"):
        load_template(format="chatml", tokenizer_config=TOKENIZER_CONFIG)
    with pytest.raises(TemplateConfigError, match="no prompt template"):
        load_template()
    with pytest.raises(
        TemplateConfigError, match="pass a tokenizer_config.json as tokenizer_config"
    ):
        load_template(template_file=TOKENIZER_CONFIG)


def test_template_compiled_once(monkeypatch: pytest.MonkeyPatch) -> None:
    from airouter.templates.environment import compile_template

    compiled: list[str] = []

    def counting(source: str, *, origin: str) -> jinja2.Template:
        compiled.append(origin)
        return compile_template(source, origin=origin)

    monkeypatch.setattr("airouter.templates.chat_template.compile_template", counting)
    template = load_template(format="chatml")
    for _ in range(3):
        template.render(CONVERSATION)
    assert compiled == ["chatml"]

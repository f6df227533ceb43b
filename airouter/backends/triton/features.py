"""What the router adds to Triton models, which only take a prompt and return text: tools,
structured outputs, reasoning, logprobs and n. A request is read once into Features, which
then shape the prompt, the model's inputs and how its output is read back."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any

from tritonclient.grpc import service_pb2

from airouter.backends.triton.logprobs import logprob_source
from airouter.backends.triton.models import GenParams, ModelInfo, _add, build_generate
from airouter.config import ModelConfig
from airouter.errors import InvalidRequest
from airouter.output.choice import ChoiceStream
from airouter.output.chunks import ChunkWriter
from airouter.output.events import OutputParser, chain
from airouter.output.guided_calls import (
    CallArray,
    NamedCall,
    call_array_schema,
    named_call_schema,
)
from airouter.output.parsers import reasoning_parser, tool_parser
from airouter.templates import ChatTemplate, PromptError

MAX_TOP_LOGPROBS = 20  # OpenAI's limit for chat; completions allow 5
_TRTLLM_GUIDE = ("guided_decoding_guide_type", "guided_decoding_guide")


@dataclass(slots=True)
class Features:
    n: int = 1
    # Tools rendered into the prompt, and whether the model's call markup is read back.
    tools: list[dict[str, Any]] | None = None
    parse_tools: bool = False
    # The prompt format cannot show tools, but guided decoding forces the call: the tools are
    # described in the system message instead.
    describe_tools: bool = False
    parallel: bool = True
    # A call forced by guided decoding: the model writes the named function's arguments, or
    # (required) a JSON array of calls, instead of its own markup.
    named: str | None = None
    required: bool = False
    # ("json", None) or ("json_schema", schema): what guided decoding constrains the output to.
    guide: tuple[str, dict[str, Any] | None] | None = None
    # Without guided decoding, a JSON answer is asked for in the system prompt.
    instruction: str | None = None
    logprobs: bool = False
    top_logprobs: int = 0


def guided_decoding(info: ModelInfo, mc: ModelConfig) -> str | None:
    """How this model takes a guide: "trtllm" (declared inputs), a vLLM sampling-parameters
    field ("guided_decoding" or "structured_outputs"), or None."""
    if mc.guided_decoding == "off":
        return None
    if info.kind == "vllm":
        return "structured_outputs" if mc.guided_decoding == "structured_outputs" else (
            "guided_decoding"
        )
    if all(info.has(k) for k in _TRTLLM_GUIDE):
        return "trtllm"
    return None


def _unsupported(message: str, param: str) -> InvalidRequest:
    return InvalidRequest(message, param=param, code="unsupported_parameter")


def _function_tools(tools: Any) -> list[dict[str, Any]]:
    if not isinstance(tools, list):
        raise InvalidRequest("'tools' must be a list of tool objects.", param="tools")
    for i, t in enumerate(tools):
        fn = t.get("function") if isinstance(t, dict) else None
        if not isinstance(t, dict) or t.get("type") != "function" or not isinstance(fn, dict):
            raise InvalidRequest(
                f"tools[{i}] must be a function tool: {{\"type\": \"function\", \"function\": "
                "{...}}.",
                param=f"tools[{i}]",
            )
        if not isinstance(fn.get("name"), str) or not fn["name"]:
            raise InvalidRequest(
                f"tools[{i}].function.name must be a non-empty string.",
                param=f"tools[{i}].function.name",
            )
        params = fn.get("parameters")
        if params is not None and not isinstance(params, dict):
            raise InvalidRequest(
                f"tools[{i}].function.parameters must be a JSON schema object.",
                param=f"tools[{i}].function.parameters",
            )
    return tools


def read_features(
    body: dict[str, Any],
    chat: bool,
    alias: str,
    info: ModelInfo,
    template: ChatTemplate | None,
    mc: ModelConfig,
) -> Features:
    """Validate the feature fields of a request against what the model can do (400s)."""
    f = Features(n=body.get("n") or 1)
    guided = guided_decoding(info, mc)
    f.parallel = body.get("parallel_tool_calls") is not False
    _read_tools(f, body, chat, alias, template, mc, guided)
    _read_response_format(f, body, chat, alias, guided)
    _read_logprobs(f, body, chat, alias, logprob_source(info, mc))
    return f


def _read_tools(
    f: Features,
    body: dict[str, Any],
    chat: bool,
    alias: str,
    template: ChatTemplate | None,
    mc: ModelConfig,
    guided: str | None,
) -> None:
    tools = body.get("tools")
    choice = body.get("tool_choice")
    if not tools:
        if choice not in (None, "none", "auto"):
            raise InvalidRequest(
                "'tool_choice' other than 'none' or 'auto' requires 'tools'.",
                param="tool_choice",
            )
        return
    if not chat:
        raise _unsupported("'tools' is a chat completions parameter.", "tools")
    tools = _function_tools(tools)
    if choice is None:
        choice = "auto"
    if choice == "none":
        return
    # A template that never mentions `tools` would silently leave them out of the prompt.
    expressible = template is None or (
        template.supports_tools and "tools" in template.format.template
    )
    # `required` or a named function under guided decoding: the guide makes the call, so the
    # model's own call markup (tool_parser) and a tool-aware format are not needed.
    forced = guided is not None and choice != "auto"
    if not forced and (mc.tool_parser is None or not expressible):
        why = "no tool_parser configured" if mc.tool_parser is None else (
            f"its prompt format '{template.name if template else ''}' cannot express tools"
        )
        raise _unsupported(f"The model '{alias}' does not support tools ({why}).", "tools")
    f.tools = tools
    f.describe_tools = not expressible
    if choice == "auto":
        f.parse_tools = True
    elif choice == "required":
        if guided:
            f.required = True
            f.guide = ("json_schema", call_array_schema(tools, f.parallel))
        else:
            f.parse_tools = True
    elif (
        isinstance(choice, dict)
        and choice.get("type") == "function"
        and isinstance(choice.get("function"), dict)
        and isinstance(choice["function"].get("name"), str)
    ):
        name = choice["function"]["name"]
        chosen = [t for t in tools if t["function"]["name"] == name]
        if not chosen:
            raise InvalidRequest(
                f"tool_choice names the function '{name}', which is not in 'tools'.",
                param="tool_choice",
            )
        # Only the chosen function is shown to the model.
        f.tools = chosen
        if guided:
            f.named = name
            f.guide = ("json_schema", named_call_schema(chosen[0]["function"].get("parameters")))
        else:
            f.parse_tools = True
    else:
        raise InvalidRequest(
            "tool_choice must be 'none', 'auto', 'required' or "
            '{"type": "function", "function": {"name": ...}}.',
            param="tool_choice",
        )


def _read_response_format(
    f: Features, body: dict[str, Any], chat: bool, alias: str, guided: str | None
) -> None:
    rf = body.get("response_format")
    if rf is None:
        return
    kind = rf.get("type") if isinstance(rf, dict) else None
    if kind == "text":
        return
    if kind not in ("json_object", "json_schema"):
        raise InvalidRequest(
            "response_format.type must be 'text', 'json_object' or 'json_schema'.",
            param="response_format",
        )
    assert isinstance(rf, dict)
    schema: dict[str, Any] | None = None
    strict = False
    if kind == "json_schema":
        js = rf.get("json_schema")
        if not isinstance(js, dict) or not isinstance(js.get("name"), str):
            raise InvalidRequest(
                "response_format.json_schema must be an object with a 'name'.",
                param="response_format.json_schema",
            )
        raw = js.get("schema", {"type": "object"})
        if not isinstance(raw, dict):
            raise InvalidRequest(
                "response_format.json_schema.schema must be a JSON schema object.",
                param="response_format.json_schema.schema",
            )
        schema, strict = raw, js.get("strict") is True
    if f.guide is not None:
        return  # a forced tool call already constrains the answer
    if guided:
        f.guide = ("json_schema", schema) if schema is not None else ("json", None)
        return
    if strict or not chat:
        raise _unsupported(
            f"The model '{alias}' has no guided decoding, so it cannot guarantee "
            f"response_format '{kind}'"
            + (" with strict: true." if strict else " on /v1/completions."),
            "response_format",
        )
    f.instruction = "Answer with one JSON object and nothing else" + (
        ", following this JSON schema:\n" + json.dumps(schema, ensure_ascii=False)
        if schema is not None
        else "."
    )


def _read_logprobs(
    f: Features, body: dict[str, Any], chat: bool, alias: str, source: str | None
) -> None:
    lp = body.get("logprobs")
    top = body.get("top_logprobs")
    if chat:
        if top is not None and lp is not True:
            raise InvalidRequest("'top_logprobs' requires 'logprobs': true.", param="top_logprobs")
        if lp not in (None, False, True):
            raise InvalidRequest("'logprobs' must be a boolean.", param="logprobs")
        want = lp is True
        limit = MAX_TOP_LOGPROBS
    else:
        if top is not None:
            raise InvalidRequest(
                "'top_logprobs' is a chat completions parameter.", param="top_logprobs"
            )
        want = lp is not None and lp is not False
        top, limit = lp, 5
    if not want:
        return
    if top is None:
        top = 0
    if not isinstance(top, int) or isinstance(top, bool) or not 0 <= top <= limit:
        param = "top_logprobs" if chat else "logprobs"
        raise InvalidRequest(f"'{param}' must be an integer from 0 to {limit}.", param=param)
    if source is None:
        raise _unsupported(
            f"'logprobs' is not supported by the model '{alias}' (its backend returns none).",
            "logprobs",
        )
    if source == "trtllm" and top:
        param = "top_logprobs" if chat else "logprobs"
        raise _unsupported(
            f"The model '{alias}' returns only the sampled token's logprob; "
            f"'{param}' must be 0.",
            param,
        )
    f.logprobs, f.top_logprobs = True, top


def render_prompt(
    body: dict[str, Any], chat: bool, alias: str, template: ChatTemplate | None, f: Features
) -> str:
    """The prompt text: the chat template applied to the messages (and tools), or the
    completion prompt as given."""
    if chat:
        if template is None:
            raise InvalidRequest(
                f"The model '{alias}' has no chat prompt format configured; "
                "use /v1/completions.",
                param="model",
                code="chat_not_configured",
            )
        messages = body["messages"]
        instruction = f.instruction
        if f.describe_tools:
            instruction = _tools_instruction(f.tools or [])
        if instruction is not None:
            messages = _with_instruction(messages, instruction)
        tools = None if f.describe_tools else f.tools
        try:
            return template.render(messages, add_generation_prompt=True, tools=tools)
        except PromptError as e:
            raise InvalidRequest(str(e), param=e.param) from None
    prompt = body["prompt"]
    if isinstance(prompt, list):
        if len(prompt) == 1 and isinstance(prompt[0], str):
            return prompt[0]
        raise InvalidRequest(
            "This model's backend takes one prompt string.",
            param="prompt",
            code="unsupported_parameter",
        )
    return str(prompt)


def _tools_instruction(tools: list[dict[str, Any]]) -> str:
    functions = [t["function"] for t in tools]
    return (
        "Answer by calling a function. The functions, as JSON schemas:\n"
        + json.dumps(functions, ensure_ascii=False)
    )


def _with_instruction(messages: list[dict[str, Any]], text: str) -> list[dict[str, Any]]:
    first = messages[0] if messages else None
    if isinstance(first, dict) and first.get("role") in ("system", "developer"):
        content = first.get("content")
        if isinstance(content, str):
            return [{**first, "content": content + "\n\n" + text}, *messages[1:]]
        if isinstance(content, list):
            part = {"type": "text", "text": text}
            return [{**first, "content": [*content, part]}, *messages[1:]]
    return [{"role": "system", "content": text}, *messages]


def sampling_extra(info: ModelInfo, mc: ModelConfig, f: Features) -> dict[str, Any]:
    """Fields added to a vLLM model's sampling_parameters."""
    extra: dict[str, Any] = {}
    if info.kind != "vllm":
        return extra
    if f.guide is not None:
        kind, schema = f.guide
        guide: dict[str, Any] = {"json": schema} if kind == "json_schema" else {"json_object": True}
        # A JSON string: what every release of the backend parses (newer ones take objects too).
        extra[guided_decoding(info, mc) or "guided_decoding"] = json.dumps(guide)
    if f.logprobs:
        extra["logprobs"] = f.top_logprobs
    return extra


def build_requests(
    info: ModelInfo,
    prompt: bytes,
    params: GenParams,
    request_id: str,
    mc: ModelConfig,
    f: Features,
) -> list[service_pb2.ModelInferRequest]:
    """One request per choice; with a seed, choice i samples with seed + i."""
    extra = sampling_extra(info, mc, f)
    reqs = []
    for i in range(f.n):
        p = params if params.seed is None else dataclasses.replace(params, seed=params.seed + i)
        rid = request_id if f.n == 1 else f"{request_id}-{i}"
        req = build_generate(info, prompt, p, rid, stream=info.decoupled, extra=extra)
        add_inputs(req, info, f)
        reqs.append(req)
    return reqs


def add_inputs(req: service_pb2.ModelInferRequest, info: ModelInfo, f: Features) -> None:
    """Inputs beyond the sampling fields: the TensorRT-LLM guide, the logprobs flag."""
    if f.guide is not None and info.kind != "vllm":
        kind, schema = f.guide
        _add(req, info, "guided_decoding_guide_type", [kind.encode()])
        if schema is not None:
            _add(req, info, "guided_decoding_guide", [json.dumps(schema).encode()])
    if f.logprobs:
        _add(req, info, "return_logprobs" if info.kind == "vllm" else "return_log_probs", [True])


def choice_stream(writer: ChunkWriter, mc: ModelConfig, f: Features, chat: bool) -> ChoiceStream:
    """How one choice's text is read back: guided calls, or the model's reasoning and tool
    markup through its configured parsers."""
    parser: OutputParser | None = None
    if f.named is not None:
        parser = NamedCall(f.named)
    elif f.required:
        parser = CallArray([t["function"]["name"] for t in f.tools or ()])
    elif chat:
        # A guided answer is constrained from its first token: it has no thinking.
        think = mc.reasoning_parser if f.guide is None else None
        reasoning = reasoning_parser(think) if think else None
        tools = None
        if f.parse_tools and mc.tool_parser:
            tools = tool_parser(mc.tool_parser, [t["function"]["name"] for t in f.tools or ()])
        parser = chain(reasoning, tools) if reasoning and tools else reasoning or tools
    return ChoiceStream(
        writer,
        parser,
        parallel=f.parallel,
        logprobs=f.logprobs,
        top_logprobs=f.top_logprobs,
        chat=chat,
    )

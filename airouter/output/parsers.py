"""The output parsers by name: the one table of the formats a model's `tool_parser` and
`reasoning_parser` settings may name, each with its implementation.

Config validation reads the names here; a backend makes a fresh parser for each output with
`tool_parser` and `reasoning_parser`. A format's module is imported when a parser of it is
first made, so reading the names (the config, at start-up) loads no parser. What each format
reads: the docstrings of reasoning.py and of the modules in tools/.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType

from airouter.output.events import OutputParser

__all__ = ["REASONING_PARSERS", "TOOL_PARSERS", "reasoning_parser", "tool_parser"]

# A tool-call parser for one output, given the callable function names (None: any name).
ToolFactory = Callable[[Sequence[str] | None], OutputParser]
ReasoningFactory = Callable[[], OutputParser]


def _hermes(tools: Sequence[str] | None) -> OutputParser:
    from airouter.output.tools.hermes import HermesParser

    return HermesParser(tools)


def _llama3_json(tools: Sequence[str] | None) -> OutputParser:
    from airouter.output.tools.llama3 import Llama3JsonParser

    return Llama3JsonParser(tools)


def _mistral(tools: Sequence[str] | None) -> OutputParser:
    from airouter.output.tools.mistral import MistralParser

    return MistralParser(tools)


def _pythonic(tools: Sequence[str] | None) -> OutputParser:
    from airouter.output.tools.pythonic import PythonicParser

    return PythonicParser(tools)


def _deepseek_r1() -> OutputParser:
    from airouter.output.reasoning import ThinkParser

    return ThinkParser(implicit=True)  # the output starts inside the thinking


def _qwen3() -> OutputParser:
    from airouter.output.reasoning import ThinkParser

    return ThinkParser(implicit=False)  # thinking only where the output opens `<think>`


TOOL_PARSERS: Mapping[str, ToolFactory] = MappingProxyType({
    "hermes": _hermes,
    "llama3_json": _llama3_json,
    "mistral": _mistral,
    "pythonic": _pythonic,
})
REASONING_PARSERS: Mapping[str, ReasoningFactory] = MappingProxyType({
    "deepseek_r1": _deepseek_r1,
    "qwen3": _qwen3,
})


def _unknown(kind: str, name: str, known: Mapping[str, object]) -> ValueError:
    return ValueError(f"unknown {kind} parser {name!r} (known: {', '.join(sorted(known))})")


def tool_parser(name: str, tools: Sequence[str] | None = None) -> OutputParser:
    """A fresh tool-call parser of format `name` for one output; `ValueError` if there is no
    such format. `tools` lists the callable function names (None: any name; empty: none, so
    every call stays text). Each format's module states its policy for malformed calls."""
    factory = TOOL_PARSERS.get(name)
    if factory is None:
        raise _unknown("tool", name, TOOL_PARSERS)
    return factory(tools)


def reasoning_parser(name: str) -> OutputParser:
    """A fresh reasoning parser of format `name`; `ValueError` if there is no such format."""
    factory = REASONING_PARSERS.get(name)
    if factory is None:
        raise _unknown("reasoning", name, REASONING_PARSERS)
    return factory()

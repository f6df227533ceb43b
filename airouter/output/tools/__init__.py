"""Tool-call parsers, one module per output format; ``make_tool_parser`` picks one by name."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from airouter.output.events import TOOL_PARSERS, OutputParser
from airouter.output.tools.hermes import HermesParser
from airouter.output.tools.llama3 import Llama3JsonParser
from airouter.output.tools.mistral import MistralParser
from airouter.output.tools.pythonic import PythonicParser

__all__ = ["make_tool_parser"]


_FORMATS: dict[str, Callable[[Sequence[str] | None], OutputParser]] = {
    "hermes": HermesParser,
    "llama3_json": Llama3JsonParser,
    "mistral": MistralParser,
    "pythonic": PythonicParser,
}


def make_tool_parser(name: str, tools: Sequence[str] | None = None) -> OutputParser:
    """A fresh parser for format ``name``; ``ValueError`` if there is no such format."""
    try:
        factory = _FORMATS[name]
    except KeyError:
        known = ", ".join(sorted(TOOL_PARSERS))
        raise ValueError(f"unknown tool parser {name!r} (known: {known})") from None
    return factory(tools)


assert _FORMATS.keys() == TOOL_PARSERS, "TOOL_PARSERS must list exactly the formats here"

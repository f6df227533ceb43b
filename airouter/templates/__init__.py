"""Prompt rendering for backends that take a prompt string: OpenAI chat messages in, text out."""

from __future__ import annotations

from airouter.templates.chat_template import ChatTemplate
from airouter.templates.errors import PromptError, TemplateConfigError
from airouter.templates.formats import BUILTIN_FORMATS, PromptFormat, get_format
from airouter.templates.loader import load_template

__all__ = [
    "BUILTIN_FORMATS",
    "ChatTemplate",
    "PromptError",
    "PromptFormat",
    "TemplateConfigError",
    "get_format",
    "load_template",
]

"""Errors raised while loading chat templates and rendering prompts."""

from __future__ import annotations


class PromptError(ValueError):
    """The request's messages (or tools) cannot be rendered into a prompt.

    Raised per request; the router maps it to HTTP 400 with ``param`` naming the
    offending request field ("messages" unless stated otherwise).
    """

    def __init__(self, message: str, *, param: str = "messages") -> None:
        super().__init__(message)
        self.message = message
        self.param = param


class TemplateConfigError(ValueError):
    """A prompt format or chat template is misconfigured (raised at router start-up)."""

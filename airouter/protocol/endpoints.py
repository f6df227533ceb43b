"""The OpenAI endpoints a call is for."""

from __future__ import annotations

import enum


class Endpoint(enum.Enum):
    CHAT = "chat.completions"
    COMPLETIONS = "completions"
    EMBEDDINGS = "embeddings"

"""Shared inputs for the micro-benchmarks: realistic bodies and a Target built from a config."""

from __future__ import annotations

import pytest

from airouter import config
from airouter.backends.base import Target
from airouter.state import State
from bench import bodies

CONFIG = f"""
[server]
api_keys = ["{bodies.CLIENT_KEY}"]

[backends.up]
type = "openai"
base_url = "http://127.0.0.1:9/v1"

[models.{bodies.ALIAS_SSE}]
backend = "up"
backend_model = "{bodies.UPSTREAM_MODEL}"
"""


@pytest.fixture(scope="session")
def target() -> Target:
    """A Target the way the router builds one: parsed config -> State -> model map lookup."""
    state = State.build(config.parse(CONFIG))
    t = state.models.lookup(bodies.ALIAS_SSE)
    assert t is not None
    return t

"""One place applies a default max_tokens: the alias's, else its backend's; the client's own
value and embeddings are left alone, and the client's body is never edited."""

from __future__ import annotations

from airouter import config
from airouter.backends import create_backend
from airouter.protocol.endpoints import Endpoint
from airouter.routing import ModelMap, request_for

TOML = """
[backends.t]
type = "triton"
url = "127.0.0.1:8001"
health_interval = 0

[backends.o]
type = "openai"
base_url = "http://127.0.0.1:9/v1"
health_interval = 0

[models.capped]
backend = "t"
max_tokens = 64

[models.plain]
backend = "t"

[models.upstream]
backend = "o"
"""


def models() -> ModelMap:
    cfg = config.parse(TOML)
    return ModelMap(cfg, {name: create_backend(name, b) for name, b in cfg.backends.items()})


def test_the_alias_then_the_backend_default_applies() -> None:
    m = models()
    body = {"messages": []}

    def sent(alias: str, endpoint: Endpoint = Endpoint.CHAT, b: dict[str, object] = body
             ) -> object:
        t = m.lookup(alias)
        assert t is not None
        return request_for(endpoint, b, t).get("max_tokens")

    assert sent("capped") == 64
    assert sent("plain") == 512
    assert sent("plain", Endpoint.COMPLETIONS) == 16
    assert sent("upstream") is None  # an OpenAI-compatible upstream applies its own
    assert sent("plain", Endpoint.EMBEDDINGS) is None
    assert sent("capped", b={"max_tokens": 5}) == 5
    assert sent("capped", b={"max_completion_tokens": 5}) is None
    assert body == {"messages": []}

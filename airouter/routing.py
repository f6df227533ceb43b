"""Model aliases to targets: exact names first, then the most specific glob pattern."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Awaitable, Callable, Mapping
from fnmatch import fnmatchcase
from typing import Any

import msgspec

from airouter.auth import ClientKey
from airouter.backends.base import Backend, Call, Reply, Target
from airouter.bounds import bounded
from airouter.config import GLOB_CHARS, Config, is_pattern
from airouter.errors import InvalidRequest, ModelNotFound, RouterError
from airouter.fairness.claim import claim
from airouter.protocol.endpoints import Endpoint


def _specificity(pattern: str) -> tuple[int, int]:
    # More literal characters first; then fewer wildcards.
    literal = sum(1 for c in pattern if c not in GLOB_CHARS)
    wild = len(pattern) - literal
    return (-literal, wild)

log = logging.getLogger("airouter")


class ModelMap:
    """Resolves the model a client names; the client never learns about models it may not use."""

    def __init__(self, cfg: Config, backends: Mapping[str, Backend]) -> None:
        self._exact: dict[str, Target] = {}
        self._patterns: list[tuple[str, str]] = []  # (pattern, alias key in cfg.models)
        self._cfg = cfg
        self._backends = backends
        self._cache: dict[str, Target] = {}
        self.default: Target | None = None
        for alias, m in cfg.models.items():
            if is_pattern(alias):
                self._patterns.append((alias, alias))
                continue
            t = self._target(alias, alias)
            self._exact[alias] = t
            if m.default:
                self.default = t
        self._patterns.sort(key=lambda p: _specificity(p[0]))

    def _target(self, name: str, key: str) -> Target:
        m = self._cfg.models[key]
        return Target(
            alias=name,
            label=key,
            backend_model=m.backend_model or name,
            backend=self._backends[m.backend],
            model=m,
            model_repl=b'"model":' + msgspec.json.encode(name).replace(b"\\", b"\\\\"),
        )

    @property
    def aliases(self) -> list[str]:
        """Exact aliases, in config order (patterns cannot be listed)."""
        return list(self._exact)

    def lookup(self, name: str) -> Target | None:
        t = self._exact.get(name) or self._cache.get(name)
        if t is not None:
            return t
        for pattern, key in self._patterns:
            if fnmatchcase(name, pattern):
                t = self._target(name, key)
                # Bounded in count and in name length: a client could send megabyte names.
                if len(self._cache) < 10_000 and len(name) <= 256:
                    self._cache[name] = t
                return t
        return None

    def resolve(self, name: str | None, key: ClientKey) -> Target:
        if name is None:
            if self.default is None:
                raise InvalidRequest(
                    "You must provide a model parameter.", param="model", code="missing_model"
                )
            t = self.default
        else:
            found = self.lookup(name)
            if found is None:
                raise _not_found(name)
            t = found
        # Out-of-scope models answer exactly like unknown ones (404), as OpenAI does.
        if not key.allows(t.alias):
            raise _not_found(t.alias)
        return t


def _not_found(name: str) -> ModelNotFound:
    return ModelNotFound(
        f"The model '{name}' does not exist or you do not have access to it.", param="model"
    )


def request_for(endpoint: Endpoint, body: dict[str, Any], target: Target) -> dict[str, Any]:
    """The request as `target` gets it: the client's body plus the default max_tokens, the
    alias's or else its backend's (a copy when one is added: the client's body stays as sent).
    The one place a default max_tokens is applied."""
    default_max = target.model.max_tokens or target.backend.default_max_tokens.get(endpoint)
    if (default_max is not None and endpoint is not Endpoint.EMBEDDINGS
            and body.get("max_tokens") is None and body.get("max_completion_tokens") is None):
        return {**body, "max_tokens": default_max}
    return body


def open_call(
    models: ModelMap,
    call: Call,
    client_body: dict[str, Any],
    key: ClientKey,
    switched: Callable[[Call], None],
) -> Awaitable[Reply]:
    """Open `call` on its target; when every node of it is down, on its fallbacks, each with a
    call of its own built from the client's request (`switched` hears of each). A target
    without fallbacks is the backend's own coroutine: one frame fewer on every await."""
    claim(key.name, key.share, call.target.model, call.stats)
    if not call.target.model.fallbacks:
        return call.target.backend.open(call)
    return _with_fallbacks(models, call, client_body, key, switched)


async def _with_fallbacks(
    models: ModelMap,
    call: Call,
    client_body: dict[str, Any],
    key: ClientKey,
    switched: Callable[[Call], None],
) -> Reply:
    fallbacks = call.target.model.fallbacks  # not empty: open_call checked
    try:
        return await call.target.backend.open(call)
    except RouterError as e:
        if not e.retryable:
            raise
        first = e
    for alias in fallbacks:
        target = models.lookup(alias)
        if target is None or not key.allows(target.alias):
            continue
        log.warning(
            "model %s unavailable (%s); falling back to %s",
            bounded(call.target.alias),
            bounded(first.message),
            alias,
        )
        # Each target starts from the client's request, with its own defaults; what the
        # backends learn (stats) is the request's, whichever target serves it.
        retry = dataclasses.replace(
            call, target=target, body=request_for(call.endpoint, client_body, target)
        )
        switched(retry)
        try:
            return await target.backend.open(retry)
        except RouterError as e:
            if not e.retryable:
                raise
    raise first

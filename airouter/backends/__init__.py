"""Backends: the small interface every backend implements, and the factory from config."""

from __future__ import annotations

from airouter.backends.base import Backend, Call, Endpoint, Reply
from airouter.backends.observer import QUIET, NodeObserver
from airouter.config import BackendConfig, OpenAIBackendConfig

__all__ = ["Backend", "Call", "Endpoint", "Reply", "create_backend"]


def create_backend(name: str, cfg: BackendConfig, observer: NodeObserver = QUIET) -> Backend:
    if isinstance(cfg, OpenAIBackendConfig):
        from airouter.backends.openai.backend import OpenAIHttpBackend

        return OpenAIHttpBackend(name, cfg, observer)
    from airouter.backends.triton.backend import TritonGrpcBackend

    return TritonGrpcBackend(name, cfg, observer)

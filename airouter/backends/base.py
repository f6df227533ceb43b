"""The Backend interface: one call in, either a whole JSON answer or a stream of chunks out."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from airouter.protocol.endpoints import Endpoint

__all__ = ["Backend", "Call", "Endpoint", "Reply", "Stats", "Target"]

if TYPE_CHECKING:
    from airouter.backends.nodes import NodePool
    from airouter.config import ModelConfig
    from airouter.errors import RouterError


@dataclass(slots=True, frozen=True, eq=False)
class Target:
    """Where a request goes: the alias the client sees and the model name the backend knows."""

    alias: str
    backend_model: str
    # The configured alias or glob pattern: bounded, so safe as a metric label.
    label: str
    backend: Backend
    model: ModelConfig
    # `"model":"<alias>"` as a re.sub template, precomputed once for rewriting responses.
    model_repl: bytes = field(repr=False)


@dataclass(slots=True)
class Stats:
    """What a backend learned while serving a call, for metrics, traces and the access log."""

    node: str = ""
    response_model: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    finish_reason: str | None = None
    cached_tokens: int | None = None  # usage.prompt_tokens_details.cached_tokens, when sent
    queued: float = 0.0  # seconds spent waiting for a full node's slot


@dataclass(slots=True, frozen=True)
class Call:
    """One client request, decoded and validated, on its way to a backend: input only
    (backends build what they send from it; a fallback target gets a new Call). `stats` is
    where the backend reports back."""

    endpoint: Endpoint
    target: Target
    body: dict[str, Any]
    stream: bool
    include_usage: bool
    # Forwarded to the backend (request id, trace context), names in lower case as HTTP/2 and
    # gRPC metadata need them.
    headers: dict[str, str] = field(default_factory=dict)
    stats: Stats = field(default_factory=Stats)


async def _noop() -> None:
    return None


class Finishing(Protocol):
    """A reply's `sse` that can tell, once it handed out events, that its next step ends it
    without waiting (the upstream's end marker came with them): its consumer may send those
    last events and the stream's end in one write."""

    @property
    def finished(self) -> bool: ...


class Reply:
    """A backend's answer, already speaking the alias.

    Exactly one of `body` (a whole JSON response), `chunks` (batches of JSON chunk payloads,
    without SSE framing and without the final [DONE]) and `sse` (whole SSE events, already
    framed, without [DONE]; only for streaming clients) is set. `aclose()` releases the
    backend's resources (`aclose` given here) and cancels its work if the stream was not
    consumed to the end, then runs the clean-up steps others added with `on_close`.
    """

    __slots__ = ("body", "chunks", "sse", "fault", "_steps", "_closed")

    def __init__(
        self,
        body: bytes | None = None,
        chunks: AsyncIterator[list[bytes]] | None = None,
        sse: AsyncIterator[bytes] | None = None,
        aclose: Callable[[], Awaitable[None]] = _noop,
        fault: RouterError | None = None,
    ) -> None:
        self.body = body
        self.chunks = chunks
        self.sse = sse
        # Set by the consumer when the answer failed after it began: the node is held to it.
        self.fault = fault
        self._steps: list[Callable[[], Awaitable[None] | None]] = [aclose]
        self._closed = False

    def on_close(self, step: Callable[[], Awaitable[None] | None]) -> None:
        """Run `step` (a function or a coroutine function) when the reply closes: after the
        backend's own clean-up (the innermost resource), then the last added first."""
        self._steps.append(step)

    async def aclose(self) -> None:
        """Every step runs once, even when one before it raised or was cancelled; the first
        failure is raised after the last step."""
        if self._closed:
            return
        self._closed = True
        first: BaseException | None = None
        steps = self._steps
        # Steps often refer to the reply (failover's settle does): let go of them, so the
        # reply is freed when the request ends, not at the next cyclic collection.
        self._steps = []
        for step in (steps[0], *reversed(steps[1:])):
            try:
                result = step()
                if result is not None:  # a coroutine function's step
                    await result
            except BaseException as e:  # held: raised once the other steps ran
                first = first or e
        if first is not None:
            raise first


class Backend(ABC):
    """A backend serves calls. Implementations never see the client's API key."""

    name: str
    pool: NodePool  # its nodes: health, balancing, concurrency slots
    provider = "unknown"  # gen_ai.provider.name in traces
    # max_tokens for a request that sets none and whose alias sets none (routing.request_for
    # applies it); absent: the request goes without, and the backend decides.
    default_max_tokens: Mapping[Endpoint, int] = {}

    async def start(self) -> None:
        """Open connections; called once at start-up, inside the event loop."""

    async def aclose(self) -> None:
        """Close connections; called once at shutdown."""

    def check(self, model: ModelConfig) -> None:
        """Validate a model's backend-specific settings at start-up (compile templates, ...).
        Raises ValueError with a message naming what is wrong."""

    async def prepare(self, target: Target) -> None:
        """Warm up for a target after start() (look up model interfaces); never raises."""

    @abstractmethod
    async def open(self, call: Call) -> Reply:
        """Send `call`. Errors before the answer starts are raised as RouterError;
        errors after it started are raised from the `chunks` iterator."""

    def health(self) -> dict[str, Any]:
        return {"status": "ok"}

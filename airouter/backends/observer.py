"""What the node pool tells the world: each node's up/down verdict. Observability implements
it (a Prometheus gauge), the app wires it in; backends never see the metrics library."""

from __future__ import annotations

from typing import Protocol


class NodeObserver(Protocol):
    def node_state(self, backend: str, node: str, up: bool) -> None:
        """`node` (a label from `node_label`) of `backend` is now up or not."""

    def prefix_cache(self, backend: str, node: str, predicted: bool, confirmed: bool) -> None:
        """A prefix-routed answer's usage said whether the engine reused cached prompt tokens
        (`confirmed`); `predicted`: the router's index expected it to."""

    def engine_load(self, backend: str, node: str, load: dict[str, float] | None) -> None:
        """What the node's engine metrics said (waiting, running, kv_usage); None: unreadable."""

    def queue_length(self, backend: str, priority: int, delta: int) -> None:
        """A request of `priority` began (1) or stopped (-1) waiting for a full node's slot."""

    def queue_wait(
        self, backend: str, key: str, priority: int, seconds: float, outcome: str
    ) -> None:
        """A request of `key` waited `seconds` for a slot of a limited node, and was then
        granted, shed (a higher priority took its place), refused (full), timed out, or left."""

    def stream_resume(self, backend: str, outcome: str) -> None:
        """A stream broke off mid-answer on a backend that resumes them: `outcome` resumed
        (another node finished it), failed (none could), not_resumable or no_retries."""


class Quiet:
    """Tells no one: validating a config builds backends that never serve."""

    def node_state(self, backend: str, node: str, up: bool) -> None:
        return None

    def prefix_cache(self, backend: str, node: str, predicted: bool, confirmed: bool) -> None:
        return None

    def engine_load(self, backend: str, node: str, load: dict[str, float] | None) -> None:
        return None

    def queue_length(self, backend: str, priority: int, delta: int) -> None:
        return None

    def queue_wait(
        self, backend: str, key: str, priority: int, seconds: float, outcome: str
    ) -> None:
        return None

    def stream_resume(self, backend: str, outcome: str) -> None:
        return None


QUIET = Quiet()

"""What the node pool tells the world: each node's up/down verdict. Observability implements
it (a Prometheus gauge), the app wires it in; backends never see the metrics library."""

from __future__ import annotations

from typing import Protocol


class NodeObserver(Protocol):
    def node_state(self, backend: str, node: str, up: bool) -> None:
        """`node` (a label from `node_label`) of `backend` is now up or not."""


class Quiet:
    """Tells no one: validating a config builds backends that never serve."""

    def node_state(self, backend: str, node: str, up: bool) -> None:
        return None


QUIET = Quiet()

"""The node pool's verdicts as the `airouter_backend_node_up` gauge."""

from __future__ import annotations

from typing import Any

from airouter.observability import metrics


class NodeGauge:
    """A `NodeObserver`: one gauge child per node, made on its first verdict."""

    __slots__ = ("_children",)

    def __init__(self) -> None:
        self._children: dict[tuple[str, str], Any] = {}

    def node_state(self, backend: str, node: str, up: bool) -> None:
        child = self._children.get((backend, node))
        if child is None:
            child = self._children[backend, node] = metrics.NODE_UP.labels(backend, node)
        child.set(1 if up else 0)

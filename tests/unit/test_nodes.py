"""The node pool's verdicts: panic routing and health checks that time out on busy nodes."""

from __future__ import annotations

import time

from airouter.backends.node import Node, NodeSpec, node_label
from airouter.backends.nodes import NodePool


def pool(n: int, **kw: object) -> NodePool:
    return NodePool("b", [NodeSpec(f"http://10.0.0.{i}:80") for i in range(n)], **kw)  # type: ignore[arg-type]


def eject(p: NodePool, node: Node) -> None:
    for _ in range(p.eject_after):
        p.failed(node, "500")


def picks(p: NodePool, times: int = 20) -> set[str]:
    out = set()
    for _ in range(times):
        node = p.pick()
        assert node is not None
        out.add(node.url)
        node.served += 1
    return out


def test_single_ejected_node_is_still_tried() -> None:
    p = pool(1)
    eject(p, p.nodes[0])
    assert not p.nodes[0].available(time.monotonic())
    assert p.pick() is p.nodes[0]
    assert p.pick(exclude=[p.nodes[0]]) is None


def test_panic_threshold_zero_refuses_when_none_is_available() -> None:
    p = pool(1, panic_threshold=0.0)
    eject(p, p.nodes[0])
    assert p.pick() is None


def test_below_the_threshold_every_node_is_tried() -> None:
    p = pool(3)
    eject(p, p.nodes[0])
    # 2 of 3 available: above 50%, the ejected node gets nothing.
    assert picks(p) == {p.nodes[1].url, p.nodes[2].url}
    p.checked(p.nodes[1], False)
    p.checked(p.nodes[1], False)  # down after unhealthy_after = 2
    # 1 of 3 available: panic, all three take requests.
    assert picks(p) == {n.url for n in p.nodes}


def test_timed_out_check_counts_only_against_an_idle_node() -> None:
    p = pool(1, unhealthy_after=1)
    node = p.nodes[0]
    p.answering(node)  # an answer under way
    p.checked(node, None)
    assert node.healthy
    node.answering -= 1
    node.completed += 1  # it finished since the last check
    p.checked(node, None)
    assert node.healthy
    p.checked(node, None)  # nothing answered since: a timeout is a failure again
    assert not node.healthy


def test_refused_check_counts_even_while_answering() -> None:
    p = pool(1, unhealthy_after=1)
    node = p.nodes[0]
    p.answering(node)
    p.checked(node, False)
    assert not node.healthy
    p.checked(node, True)
    assert node.healthy


def test_node_label_is_host_port_without_secrets() -> None:
    assert node_label("https://user:sk-secret@api.example.com/v1?key=sk-2") == "api.example.com:443"
    assert node_label("http://127.0.0.1:8080/v1") == "127.0.0.1:8080"
    assert node_label("http://[::1]:9000") == "[::1]:9000"
    assert node_label("10.0.0.1:8001") == "10.0.0.1:8001"
    assert node_label("triton.local:8001") == "triton.local:8001"
    assert node_label("dns:///triton.local:8001") == "dns:///triton.local:8001"


class Verdicts:
    def __init__(self) -> None:
        self.seen: list[tuple[str, str, bool]] = []

    def node_state(self, backend: str, node: str, up: bool) -> None:
        self.seen.append((backend, node, up))


def test_pool_reports_verdicts_by_node_label() -> None:
    heard = Verdicts()
    p = NodePool("b", [NodeSpec("http://u:pw@10.0.0.9:81/v1")], eject_after=1, observer=heard)
    p.start_checks(lambda n: None, 0)  # type: ignore[arg-type,return-value]
    p.failed(p.nodes[0], "500")
    p.succeeded(p.nodes[0])
    assert heard.seen == [("b", "10.0.0.9:81", True), ("b", "10.0.0.9:81", False),
                          ("b", "10.0.0.9:81", True)]
    assert p.status()[0]["url"] == "10.0.0.9:81"

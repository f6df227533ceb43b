"""Reads every node's engine metrics in the background, off the request path: one small
HTTP/1.0 GET per node every `metrics_interval` seconds, bounded in time and size."""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Sequence
from urllib.parse import urlsplit

from airouter.backends.engine_metrics import EngineLoad, parse_metrics
from airouter.backends.node import Node
from airouter.backends.nodes import NodePool
from airouter.config import NodeConfig

log = logging.getLogger("airouter.nodes")

MAX_BYTES = 4 * 1024 * 1024  # a Triton server with many models writes a long page
QUIET_FOR = 60.0  # one warning per node per minute at most


def metrics_url(node_url: str, provider: str, configured: str | None) -> str | None:
    """Where a node's engine metrics are: the node's `metrics_url`, else {origin}/metrics for
    an openai node, else port 8002 of a Triton node's host."""
    if configured:
        return configured
    if provider == "openai":
        parts = urlsplit(node_url)
        return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}/metrics"
    addr = node_url.rpartition("/")[2].rpartition("@")[2]  # host:8001, dns:///host:8001
    if addr.startswith("[") and "]" in addr:
        host = addr[: addr.index("]") + 1]
    else:
        host = addr.rpartition(":")[0] or addr
    return f"http://{host}:8002/metrics" if host else None


async def fetch_text(url: str, seconds: float) -> str:
    """GET `url` (http or https), the whole body as text. Raises OSError, TimeoutError or
    ValueError (a status other than 200, a page too large)."""
    parts = urlsplit(url)
    tls = parts.scheme == "https"
    port = parts.port or (443 if tls else 80)
    host = parts.hostname or ""
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    async with asyncio.timeout(seconds):
        reader, writer = await asyncio.open_connection(
            host, port, ssl=ssl.create_default_context() if tls else None
        )
        try:
            # HTTP/1.0: no chunked encoding, the body ends when the connection does.
            writer.write(f"GET {path} HTTP/1.0\r\nHost: {parts.netloc}\r\n"
                         "Accept: text/plain\r\n\r\n".encode())
            data = await reader.read(MAX_BYTES + 1)
            while len(data) <= MAX_BYTES:
                more = await reader.read(MAX_BYTES + 1 - len(data))
                if not more:
                    break
                data += more
        finally:
            writer.close()
    if len(data) > MAX_BYTES:
        raise ValueError("metrics page too large")
    head, _, body = data.partition(b"\r\n\r\n")
    status = head.split(b" ", 2)
    if len(status) < 2 or status[1] != b"200":
        raise ValueError(f"status {status[1:2]!r}")
    return body.decode("utf-8", "replace")


class EngineScraper:
    """One task per backend: reads every node at once, each within `timeout`, and hands the
    pool's prefix balancer (and the observer) what it read."""

    def __init__(self, pool: NodePool, urls: Sequence[str | None], interval: float,
                 timeout: float) -> None:
        self.pool = pool
        self.urls = list(urls)
        self.interval = interval
        self.timeout = timeout
        self._warned = [0.0] * len(urls)
        self._task: asyncio.Task[None] | None = None

    @classmethod
    def for_nodes(cls, pool: NodePool, provider: str, configs: Sequence[NodeConfig],
                  interval: float, timeout: float) -> EngineScraper:
        urls = [metrics_url(n.url, provider, c.metrics_url)
                for n, c in zip(pool.nodes, configs, strict=True)]
        return cls(pool, urls, interval, timeout)

    def start(self) -> None:
        if self.interval > 0 and any(self.urls):
            self._task = asyncio.create_task(self.run())

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()

    async def run(self) -> None:
        while True:
            await self.scrape_once()
            await asyncio.sleep(self.interval)

    async def scrape_once(self) -> None:
        await asyncio.gather(*(self._read(i, n) for i, n in enumerate(self.pool.nodes)))

    async def _read(self, i: int, node: Node) -> None:
        url = self.urls[i]
        if url is None:
            return
        load: EngineLoad | None
        why = ""
        try:
            load = parse_metrics(await fetch_text(url, self.timeout), time.monotonic())
            if not load.known:
                why, load = "no queue or KV cache family the router knows", None
        except (OSError, TimeoutError, ValueError) as e:
            why, load = str(e) or type(e).__name__, None
        pool = self.pool
        pool.engine_read(node, load)  # saturation: hold requests while the engine is full
        if pool.prefix is not None:
            pool.prefix.engine_read(node, load)
        pool.observer.engine_load(pool.backend, node.label, None if load is None else {
            k: float(v) for k, v in load.as_dict().items() if isinstance(v, int | float)})
        if load is None:
            now = time.monotonic()
            if now - self._warned[i] >= QUIET_FOR:
                self._warned[i] = now
                log.warning("backend %s: node %s: engine metrics unreadable (%s); balancing "
                            "on the router's own in-flight count", pool.backend, node.label,
                            why[:200])

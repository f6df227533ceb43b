"""Opening an upstream connection: directly, through an HTTP forward proxy (http://
upstreams: the proxy gets the requests in absolute-form), or through a CONNECT tunnel with
TLS to the upstream over it (https:// upstreams)."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable
from typing import TypeVar, cast

from airouter.upstream import Proxy

P = TypeVar("P", bound=asyncio.Protocol)

MAX_CONNECT_HEAD = 16384  # bytes of a proxy's answer to CONNECT read at most


class ProxyRefused(ConnectionError):
    """The proxy did not open the tunnel (a non-2xx answer, or not HTTP)."""


class _Tunnel(asyncio.Protocol):
    """Reads the proxy's answer to CONNECT: its head, nothing past it."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.buffer = b""
        self.done: asyncio.Future[int] = loop.create_future()

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if self.done.done():
            return
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(self.buffer) > MAX_CONNECT_HEAD:
                self.done.set_exception(ProxyRefused("the proxy's answer is too long"))
            return
        status = self.buffer.split(b"\r\n", 1)[0].split(b" ", 2)
        if len(status) < 2 or not status[0].startswith(b"HTTP/1.") or not status[1].isdigit():
            self.done.set_exception(ProxyRefused("the proxy's answer is not HTTP"))
        elif end + 4 != len(self.buffer) and status[1].startswith(b"2"):
            # The upstream cannot speak before the TLS hello.
            self.done.set_exception(ProxyRefused("the proxy sent bytes past its answer"))
        else:
            self.done.set_result(int(status[1]))

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_exception(ProxyRefused("the proxy closed the connection"))


def _authority(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def open_connection(factory: Callable[[], P], host: str, port: int,
                          tls: ssl.SSLContext | None, proxy: Proxy | None) -> P:
    """A connected protocol from `factory` to host:port, with TLS when `tls` is set, through
    `proxy` when set. Raises OSError (ssl.SSLError, ProxyRefused included) on failure; the
    caller bounds the time."""
    loop = asyncio.get_running_loop()
    if proxy is None or tls is None:
        # Direct, or plain HTTP to the proxy (the requests carry the absolute URL).
        target = (host, port) if proxy is None else (proxy.host, proxy.port)
        _, protocol = await loop.create_connection(
            factory, *target, ssl=tls, server_hostname=host if tls is not None else None
        )
        return protocol
    transport, tunnel = await loop.create_connection(lambda: _Tunnel(loop), proxy.host,
                                                     proxy.port)
    try:
        authority = _authority(host, port)
        head = f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n"
        if proxy.authorization is not None:
            head += f"Proxy-Authorization: {proxy.authorization}\r\n"
        transport.write((head + "\r\n").encode("latin-1"))
        status = await tunnel.done
        if not 200 <= status < 300:
            raise ProxyRefused(f"the proxy answered CONNECT with HTTP {status}")
        protocol = factory()
        tls_transport = await loop.start_tls(transport, protocol, tls, server_hostname=host)
        if tls_transport is None:
            raise ProxyRefused("the TLS handshake through the proxy failed")
    except BaseException:
        transport.abort()
        raise
    protocol.connection_made(cast(asyncio.BaseTransport, tls_transport))
    return protocol

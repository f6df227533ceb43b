"""One upstream node's address and the request heads for it, made once."""

from __future__ import annotations

import base64
from collections.abc import Mapping
from urllib.parse import unquote, urlsplit

from airouter.upstream import Proxy, quoted_path, quoted_query


class Origin:
    """One node's address and the request heads for it, made once."""

    def __init__(self, base_url: str, headers: Mapping[str, str],
                 proxy: Proxy | None = None) -> None:
        u = urlsplit(base_url)
        self.tls = u.scheme == "https"
        self.host = u.hostname or "127.0.0.1"
        self.port = u.port or (443 if self.tls else 80)
        self.proxy = proxy
        default = (self.tls and self.port == 443) or (not self.tls and self.port == 80)
        host = self.host if ":" not in self.host else f"[{self.host}]"
        authority = host if default else f"{host}:{self.port}"
        # The base URL's path (percent-encoded) before each request's path, its query after;
        # a plain-HTTP request to a proxy names the whole URL (absolute-form).
        self.prefix = quoted_path(u.path.rstrip("/"))
        if proxy is not None and not self.tls:
            self.prefix = f"http://{authority}{self.prefix}"
        self.query = "?" + quoted_query(u.query) if u.query else ""
        fields = {"Host": authority, "Accept-Encoding": "identity", **headers}
        if u.username is not None and not any(k.lower() == "authorization" for k in fields):
            basic = f"{unquote(u.username)}:{unquote(u.password or '')}".encode()
            fields["Authorization"] = "Basic " + base64.b64encode(basic).decode()
        if proxy is not None and not self.tls and proxy.authorization is not None:
            fields["Proxy-Authorization"] = proxy.authorization
        self.fields = "".join(f"{k}: {v}\r\n" for k, v in fields.items()).encode("latin-1")
        self._heads: dict[tuple[bytes, str], bytes] = {}

    def head(self, method: bytes, path: str) -> bytes:
        """`METHOD /path HTTP/1.1` and the fixed fields, up to (not including) the variable
        ones; cached per path."""
        key = (method, path)
        head = self._heads.get(key)
        if head is None:
            head = self._heads[key] = (
                method + b" " + (self.prefix + path + self.query).encode() + b" HTTP/1.1\r\n"
                + self.fields
            )
        return head

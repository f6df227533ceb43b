"""One upstream node's address and the request heads for it, made once."""

from __future__ import annotations

import base64
from collections.abc import Mapping
from urllib.parse import unquote, urlsplit


class Origin:
    """One node's address and the request heads for it, made once."""

    def __init__(self, base_url: str, headers: Mapping[str, str]) -> None:
        u = urlsplit(base_url)
        self.tls = u.scheme == "https"
        self.host = u.hostname or "127.0.0.1"
        self.port = u.port or (443 if self.tls else 80)
        self.prefix = u.path.rstrip("/")
        default = (self.tls and self.port == 443) or (not self.tls and self.port == 80)
        host = self.host if ":" not in self.host else f"[{self.host}]"
        authority = host if default else f"{host}:{self.port}"
        fields = {"Host": authority, "Accept-Encoding": "identity", **headers}
        if u.username is not None and not any(k.lower() == "authorization" for k in fields):
            basic = f"{unquote(u.username)}:{unquote(u.password or '')}".encode()
            fields["Authorization"] = "Basic " + base64.b64encode(basic).decode()
        self.fields = "".join(f"{k}: {v}\r\n" for k, v in fields.items()).encode("latin-1")
        self._heads: dict[tuple[bytes, str], bytes] = {}

    def head(self, method: bytes, path: str) -> bytes:
        """`METHOD /path HTTP/1.1` and the fixed fields, up to (not including) the variable
        ones; cached per path."""
        key = (method, path)
        head = self._heads.get(key)
        if head is None:
            head = self._heads[key] = (
                method + b" " + (self.prefix + path).encode() + b" HTTP/1.1\r\n" + self.fields
            )
        return head

"""How an `openai` backend reaches its upstreams: the base URL's path and query as sent, the
TLS context (a private CA, a client certificate) and which forward proxy, if any, carries
the connection (the backend's `proxy`, else the environment as curl reads it)."""

from __future__ import annotations

import base64
import ipaddress
import os
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import quote, unquote, urlsplit

# What a path may hold unencoded (RFC 3986 pchar and /); `%` stays, so `%20` is kept as is.
_PATH_SAFE = "/%:@!$&'()*+,;=-._~"
_QUERY_SAFE = _PATH_SAFE + "?"


def quoted_path(path: str) -> str:
    """A base URL's path percent-encoded for a request line: spaces and non-ASCII become
    %XX (UTF-8), an existing %XX is left alone."""
    return quote(path, safe=_PATH_SAFE)


def quoted_query(query: str) -> str:
    return quote(query, safe=_QUERY_SAFE)


def base_url_problem(url: str) -> str | None:
    """Why `url` cannot be an openai backend's base URL, or None."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "is not a valid URL"
    try:
        port = parts.port
    except ValueError:
        return "has an invalid port"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "is not a valid http/https URL"
    if port == 0:
        return "has an invalid port"
    if "#" in url:
        return "must not have a fragment (#...)"
    return None


def client_context(ca_file: str | None, cert_file: str | None,
                   key_file: str | None) -> ssl.SSLContext:
    """The TLS context for a backend's https upstreams: verification on, against `ca_file`
    alone when set (else the system's store), with a client certificate when set. Raises
    OSError or ssl.SSLError when a file cannot be read or used."""
    ctx = ssl.create_default_context(cafile=ca_file)
    if cert_file is not None:
        # A key that needs a password is refused, never prompted for on the terminal.
        ctx.load_cert_chain(cert_file, key_file, password=_no_password)
    return ctx


def tls_problem(ca_file: str | None, cert_file: str | None,
                key_file: str | None) -> tuple[str, str] | None:
    """(the key at fault, why) when these settings cannot make a TLS context, or None."""
    if (cert_file is None) != (key_file is None):
        key = "tls_key_file" if key_file is None else "tls_cert_file"
        return key, "tls_cert_file and tls_key_file go together: set both or neither"
    for key, path in (("tls_ca_file", ca_file), ("tls_cert_file", cert_file),
                      ("tls_key_file", key_file)):
        if path is not None and not os.path.isfile(path):
            return key, f"no such file: {path}"
    for key, path in (("tls_ca_file", ca_file), ("tls_cert_file", cert_file)):
        if path is None:
            continue
        try:  # PEM certificates, read as a CA bundle would be
            ssl.create_default_context(cafile=path)
        except (OSError, ValueError) as e:
            return key, f"cannot load {path} as PEM certificates: {e}"
    try:
        client_context(ca_file, cert_file, key_file)
    except (OSError, ValueError) as e:
        return "tls_key_file", f"cannot load the key {key_file} for {cert_file}: {e}"
    return None


def _no_password() -> bytes:
    raise ValueError("the key file is encrypted (a password-protected key is not supported)")


@dataclass(frozen=True)
class Proxy:
    """An HTTP forward proxy: where it listens, and its Proxy-Authorization if any."""

    host: str
    port: int
    authorization: str | None = None

    def __repr__(self) -> str:  # never the credentials
        return f"Proxy({self.host}:{self.port})"


def proxy_problem(url: str) -> str | None:
    """Why `url` cannot be a `proxy` setting, or None ("" means no proxy)."""
    if url == "":
        return None
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError:
        return "is not a valid http://host:port URL"
    if parts.scheme != "http" or not parts.hostname or parts.path not in ("", "/") \
            or parts.query or "#" in url:
        return "is not a valid http://host:port URL (only http:// proxies are supported)"
    return None


def parse_proxy(url: str) -> Proxy:
    """A proxy URL as curl takes it (no scheme means http://); ValueError when unusable
    (the message never quotes the URL: it may hold a password)."""
    if "://" not in url:
        url = "http://" + url
    problem = proxy_problem(url)
    if problem is not None:
        raise ValueError(f"the proxy URL {problem}")
    parts = urlsplit(url)
    auth = None
    if parts.username is not None:
        user = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
        auth = "Basic " + base64.b64encode(user.encode()).decode()
    return Proxy(parts.hostname or "", parts.port or 80, auth)


def _env(env: Mapping[str, str], *names: str) -> str | None:
    for name in names:
        value = env.get(name)
        if value:
            return value
    return None


def bypassed(host: str, no_proxy: str) -> bool:
    """curl's NO_PROXY rules: a comma (or space) separated list; `*` alone matches every
    host; a name matches itself and its subdomains (a leading dot is ignored); an IP address
    or CIDR block matches addresses only. Case-insensitive; ports are not compared."""
    host = host.strip("[]").rstrip(".").lower()
    entries = [e for e in no_proxy.replace(" ", ",").split(",") if e]
    if entries == ["*"]:
        return True
    try:
        address: ipaddress.IPv4Address | ipaddress.IPv6Address | None = \
            ipaddress.ip_address(host)
    except ValueError:
        address = None
    for entry in entries:
        entry = entry.strip("[]").lstrip(".").rstrip(".").lower()
        if not entry:
            continue
        if address is not None:
            try:
                if address in ipaddress.ip_network(entry, strict=False):
                    return True
            except ValueError:
                pass
            continue
        if host == entry or host.endswith("." + entry):
            return True
    return False


def choose_proxy(url: str, setting: str | None,
                 env: Mapping[str, str] | None = None) -> Proxy | None:
    """The proxy for the upstream at `url`: the backend's `proxy` when set ("" = none, the
    environment ignored), else curl's environment: https_proxy/HTTPS_PROXY for https://,
    http_proxy (and, unlike curl, HTTP_PROXY: the router is no CGI program) for http://,
    all_proxy/ALL_PROXY for either, unless no_proxy/NO_PROXY names the host. ValueError for
    a proxy URL that cannot be used."""
    if setting is not None:
        return parse_proxy(setting) if setting else None
    env = os.environ if env is None else env
    parts = urlsplit(url)
    if parts.scheme == "https":
        found = _env(env, "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY")
    else:
        found = _env(env, "http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY")
    if found is None:
        return None
    no_proxy = _env(env, "no_proxy", "NO_PROXY")
    if no_proxy and bypassed(parts.hostname or "", no_proxy):
        return None
    return parse_proxy(found)

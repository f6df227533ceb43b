"""Client API keys: bearer parsing, constant-time comparison, and per-key model scope."""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass, field
from fnmatch import fnmatchcase

from airouter.config import Config, unnamed_label
from airouter.errors import Unauthorized
from airouter.fairness.claim import share_of


@dataclass(slots=True, eq=False)
class ClientKey:
    """A configured client key. `name` is safe to log; the key itself never is."""

    name: str
    digest: bytes
    patterns: tuple[str, ...] = ("*",)
    # (priority, weight) when a full backend queues it; None: its model's, else normal and 1.
    share: tuple[int | None, float | None] = (None, None)
    _allowed: dict[str, bool] = field(default_factory=dict, repr=False)

    @property
    def unrestricted(self) -> bool:
        return "*" in self.patterns

    def allows(self, alias: str) -> bool:
        if self.unrestricted:
            return True
        ok = self._allowed.get(alias)
        if ok is None:
            ok = any(fnmatchcase(alias, p) for p in self.patterns)
            if len(self._allowed) < 4096:
                self._allowed[alias] = ok
        return ok


ANONYMOUS = ClientKey("anonymous", b"")


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


class KeyStore:
    """Looks keys up by their SHA-256 digest, then confirms with hmac.compare_digest.

    Hashing first means the lookup's timing depends only on the digest, never on how many
    leading characters of a guess match a real key.
    """

    def __init__(self, cfg: Config) -> None:
        self._by_digest: dict[bytes, ClientKey] = {}
        for i, key in enumerate(cfg.server.api_keys):
            d = _digest(key)
            # Named by position only: a label is published (metrics, logs, /v1/usage) and
            # must carry nothing computed from the key that a guess could be tested against.
            self._by_digest[d] = ClientKey(unnamed_label(i), d)
        for name, kc in cfg.keys.items():
            d = _digest(kc.key)
            self._by_digest[d] = ClientKey(name, d, tuple(kc.models), share_of(kc))
        self.enabled = bool(self._by_digest)
        mk = cfg.server.metrics_key
        self._metrics_digest = _digest(mk) if mk else None

    def authorize_metrics(self, authorization: str | None) -> None:
        """/metrics and the /health detail: open unless [server] metrics_key is set."""
        want = self._metrics_digest
        if want is None:
            return
        scheme, _, value = (authorization or "").partition(" ")
        token = value.strip() if scheme.lower() == "bearer" else ""
        if not token:
            raise Unauthorized(
                "Missing metrics key. Send it as 'Authorization: Bearer <key>'.",
                headers={"WWW-Authenticate": "Bearer"},
            )
        if not hmac.compare_digest(hashlib.sha256(token.encode()).digest(), want):
            raise Unauthorized(
                "Incorrect metrics key provided.", headers={"WWW-Authenticate": "Bearer"}
            )

    def authenticate(self, authorization: str | None, api_key: str | None) -> ClientKey:
        if not self.enabled:
            return ANONYMOUS
        token: str | None = None
        if authorization is not None:
            scheme, _, value = authorization.partition(" ")
            if scheme.lower() == "bearer":
                token = value.strip()
        elif api_key is not None:
            token = api_key.strip()
        if not token:
            raise Unauthorized(
                "Missing API key. Send it as 'Authorization: Bearer <key>' or 'x-api-key: <key>'."
            )
        d = hashlib.sha256(token.encode()).digest()
        found = self._by_digest.get(d)
        if found is None or not hmac.compare_digest(found.digest, d):
            raise Unauthorized("Incorrect API key provided.")
        return found

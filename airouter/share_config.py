"""The config tables of limits and shares: `[keys.NAME]` and the limits `[models.ALIAS]`
shares with it, and a backend's per-priority queue timeouts. Documented in backends.toml."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

Count = Annotated[int, msgspec.Meta(ge=1)]
Seconds = Annotated[float, msgspec.Meta(gt=0)]
Priority = Literal["high", "normal", "low"]


class _Base(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, omit_defaults=True):
    pass


class LimitsConfig(_Base):
    """Limits on a key or (shared by every key) on a model alias; unset = no limit."""

    rpm: Count | None = None
    tpm: Count | None = None
    max_concurrent: Count | None = None


class ShareConfig(LimitsConfig, kw_only=True):
    """When a backend's nodes are full, waiting requests go by priority, then by weighted fair
    share across keys. A key's own settings win; a model's apply to keys that set none;
    unset: normal, weight 1."""

    priority: Priority | None = None
    weight: Annotated[float, msgspec.Meta(gt=0)] | None = None


class KeyConfig(ShareConfig, kw_only=True):
    key: str
    models: list[str] = msgspec.field(default_factory=lambda: ["*"])
    budget_tokens: Count | None = None
    budget_period: Literal["day", "month"] | None = None  # unset: a lifetime budget
    admin: bool = False  # GET /v1/usage shows every key


class QueueTimeouts(_Base):
    """`[backends.NAME.queue_timeouts]`: how long a request of each priority may wait for a
    full node; unset: the backend's queue_timeout."""

    high: Seconds | None = None
    normal: Seconds | None = None
    low: Seconds | None = None

    def per_priority(self, default: float) -> tuple[float, float, float]:
        """(high, normal, low), in the order of fairness.scheduler's priorities."""
        return (self.high or default, self.normal or default, self.low or default)

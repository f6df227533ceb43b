"""Usage per key and the limits store's health, for Prometheus (multiprocess-safe)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

KEY_TOKENS = Counter(
    "airouter_key_tokens", "Tokens used per client key name and model alias.",
    ["key", "model", "kind"],
)
KEY_REQUESTS = Counter(
    "airouter_key_requests", "Requests admitted per client key name and model alias.",
    ["key", "model"],
)
KEY_REJECTED = Counter(
    "airouter_key_rejected", "Requests refused by a limit, per client key name and reason.",
    ["key", "reason"],
)
LIMITS_UP = Gauge(
    "airouter_limits_backend_up",
    "1 while the shared limits store answers, else 0 (lowest over the workers).",
    ["store"],  # labelled, so only processes that use a store report it
    multiprocess_mode="livemin",
)

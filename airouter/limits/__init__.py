"""Per-key and per-model limits (requests, tokens per minute, concurrency, token budgets),
shared across workers (in the main process) or across replicas (in Redis)."""

from __future__ import annotations

from airouter.limits.limiter import Limiter, Ticket

__all__ = ["Limiter", "Ticket"]

"""Which counters a request touches, and what a refusal or an admission tells the client."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from airouter.config import Config, LimitsConfig
from airouter.errors import RateLimited, RouterError
from airouter.limits.engine import LEASES, TOTAL, WINDOW, Check, Outcome

PREFIX = "airouter:lim:"
# Window keys name their layout (w2: buckets with their sum and oldest second), so replicas of
# a version with another layout, during a rolling upgrade, never read each other's.
LAYOUT = ":w2"
REQUESTS, TOKENS, CONCURRENT, BUDGET = "requests", "tokens", "concurrent", "budget"
_WHAT = {
    REQUESTS: "requests per min (RPM)",
    TOKENS: "tokens per min (TPM)",
    CONCURRENT: "concurrent requests",
}
_PERIOD_TTL = {"day": 2 * 86400, "month": 32 * 86400}


_ONE: dict[str, Check] = {}


class QuotaExceeded(RouterError):
    status = 429
    type = "insufficient_quota"
    code = "insufficient_quota"


@dataclass(slots=True, frozen=True)
class Rule:
    """One limit of one scope: `owner` is "key NAME" or "model ALIAS" for messages."""

    what: str
    kind: str
    key: str
    limit: int
    owner: str
    period: str | None = None  # budgets: "day", "month" or None (lifetime)

    @property
    def one(self) -> Check:
        """The check for one request, built once."""
        c: Check | None = _ONE.get(self.key)
        if c is None:
            c = _ONE[self.key] = Check(self.kind, self.key, self.limit, 1)
        return c

    def check(self, amount: int, period_id: str = "") -> Check:
        if amount == 1 and self.kind != TOTAL:
            return self.one
        if self.kind == TOTAL:
            return Check(TOTAL, self.key + period_id, self.limit, amount,
                         _PERIOD_TTL.get(self.period or "", 0))
        return Check(self.kind, self.key, self.limit, amount)


def rules_for(scope: str, name: str, lc: LimitsConfig, owner: str) -> list[Rule]:
    base = f"{PREFIX}{scope}:{name}:"
    out: list[Rule] = []
    budget = getattr(lc, "budget_tokens", None)
    if budget is not None:
        period = getattr(lc, "budget_period", None)
        out.append(Rule(BUDGET, TOTAL, base + "budget:", budget, owner, period))
    if lc.rpm is not None:
        out.append(Rule(REQUESTS, WINDOW, base + "rpm" + LAYOUT, lc.rpm, owner))
    if lc.tpm is not None:
        out.append(Rule(TOKENS, WINDOW, base + "tpm" + LAYOUT, lc.tpm, owner))
    if lc.max_concurrent is not None:
        out.append(Rule(CONCURRENT, LEASES, base + "conc", lc.max_concurrent, owner))
    return out


class Rules:
    """Every configured limit, by key name and by model label, built once at start-up."""

    def __init__(self, cfg: Config) -> None:
        self.keys = {
            name: r for name, k in cfg.keys.items() if (r := rules_for("k", name, k, f"key {name}"))
        }
        self.models = {
            alias: r
            for alias, m in cfg.models.items()
            if (r := rules_for("m", alias, m, f"model {alias} (all keys)"))
        }
        self.active = bool(self.keys or self.models)
        self._day = -1
        self._ids = {"day": "", "month": ""}

    def period_id(self, period: str | None) -> str:
        if period is None:
            return "all"
        day = int(time.time() // 86400)
        if day != self._day:
            t = time.gmtime(day * 86400)
            self._ids = {"day": time.strftime("%Y-%m-%d", t), "month": time.strftime("%Y-%m", t)}
            self._day = day
        return self._ids[period]

    def for_request(self, key: str, label: str) -> list[Rule]:
        return self.keys.get(key, []) + self.models.get(label, [])

    def checks(self, rules: list[Rule], prompt_tokens: int) -> list[Check]:
        out = []
        for r in rules:
            if r.what == BUDGET:
                out.append(r.check(prompt_tokens, self.period_id(r.period)))
            else:
                out.append(r.check(prompt_tokens if r.what == TOKENS else 1))
        return out


def duration(seconds: float) -> str:
    """OpenAI's reset style: 20ms, 1.2s, 6m0s."""
    if seconds <= 0:
        return "0s"
    if seconds < 1:
        return f"{max(1, math.ceil(seconds * 1000))}ms"
    if seconds < 60:
        return f"{math.ceil(seconds * 10) / 10:g}s"
    m, s = divmod(math.ceil(seconds), 60)
    return f"{m}m{s}s"


_RESETS: dict[int, str] = {}


def reset_header(seconds: float) -> str:
    """duration(seconds) for the header; the usual values (a window's reset is under 60 s)
    are formatted once."""
    if seconds <= 0 or seconds >= 60:
        return duration(seconds)
    # What duration() depends on: milliseconds under a second, tenths above.
    k = math.ceil(seconds * 1000) if seconds < 1 else 1000 + math.ceil(seconds * 10)
    b = _RESETS.get(k)
    if b is None:
        b = _RESETS[k] = duration(seconds)
    return b


def refusal(rule: Rule, check: Check, out: Outcome, alias: str) -> RouterError:
    used = out.used[out.failed]
    hdrs = {}
    if rule.what == BUDGET:
        period = f"per {rule.period}" if rule.period else "in total"
        return QuotaExceeded(
            f"You exceeded your current quota: {rule.owner} has a budget of {rule.limit} tokens "
            f"{period}; Used {used}, Requested {check.amount}.",
        )
    if math.isinf(out.wait):
        msg = (
            f"Request too large for {alias} on {_WHAT[rule.what]} for {rule.owner}: "
            f"Limit {rule.limit}, Requested {check.amount}. Make the input shorter."
        )
    else:
        msg = (
            f"Rate limit reached for {alias} on {_WHAT[rule.what]} for {rule.owner}: "
            f"Limit {rule.limit}, Used {used}, Requested {check.amount}. "
            f"Please try again in {duration(out.wait)}."
        )
        hdrs["Retry-After"] = str(max(1, math.ceil(out.wait)))
    return RateLimited(msg, headers=hdrs)

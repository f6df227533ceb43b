"""The in-memory limit counters (the semantics the Redis scripts share) and the policy text."""

from __future__ import annotations

import math

import pytest

from airouter.config import parse
from airouter.limits.engine import LEASE_TTL, LEASES, TOTAL, WINDOW, Check, Counters, Outcome
from airouter.limits.limiter import Plan
from airouter.limits.policy import QuotaExceeded, Rules, duration, refusal


class Clock:
    def __init__(self, t: float = 1_000_000.25) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def test_window_admits_exactly_the_limit_in_any_60_seconds() -> None:
    clock = Clock()
    c = Counters(clock)
    check = [Check(WINDOW, "k", 3, 1)]
    results = []
    for _ in range(3):
        results.append(c.admit(check, "").failed)
        clock.t += 10
    assert results == [-1, -1, -1]
    out = c.admit(check, "")
    assert out.failed == 0 and out.used == [3]
    # The oldest use (at t0, second 1_000_000) leaves the window at second 1_000_060.
    assert out.wait == pytest.approx(1_000_060 - clock.t)
    clock.t = 1_000_059.9
    assert c.admit(check, "").failed == 0
    clock.t = 1_000_060.0
    ok = c.admit(check, "")
    assert ok.failed == -1 and ok.used == [3]


def test_window_wait_counts_how_much_must_free() -> None:
    clock = Clock(100.0)
    c = Counters(clock)
    c.charge([(WINDOW, "t", 40, 0)])
    clock.t = 110.0
    c.charge([(WINDOW, "t", 40, 0)])
    clock.t = 120.0
    out = c.admit([Check(WINDOW, "t", 100, 50)], "")
    # 80 used; 50 more needs 30 freed: the first 40 (second 100) leave at 160.
    assert out.failed == 0 and out.wait == pytest.approx(40.0)
    assert out.reset == [pytest.approx(40.0)]
    big = c.admit([Check(WINDOW, "t", 100, 101)], "")
    assert big.failed == 0 and math.isinf(big.wait)


def test_failed_admission_applies_nothing() -> None:
    c = Counters(Clock())
    checks = [Check(WINDOW, "r", 10, 1), Check(TOTAL, "b", 5, 6)]
    out = c.admit(checks, "")
    assert out.failed == 1
    assert c.admit([Check(WINDOW, "r", 10, 0)], "", dry=True).used == [0]


def test_leases_release_and_expire() -> None:
    clock = Clock()
    c = Counters(clock)
    conc = [Check(LEASES, "c", 2, 1)]
    assert c.admit(conc, "a").failed == -1
    assert c.admit(conc, "b").failed == -1
    assert c.admit(conc, "x").failed == 0
    c.release(["c"], "a")
    assert c.admit(conc, "d").failed == -1
    # b is renewed, d is not: after the TTL only b still counts.
    clock.t += LEASE_TTL - 1
    c.renew(["c"], ["b"])
    clock.t += 2
    assert c.admit(conc, "e").used == [2]


def test_totals_expire_with_their_period() -> None:
    clock = Clock()
    c = Counters(clock)
    c.charge([(TOTAL, "b", 7, 10)])
    assert c.admit([Check(TOTAL, "b", 10, 3)], "").failed == -1
    assert c.admit([Check(TOTAL, "b", 10, 1)], "").failed == 0
    clock.t += 11
    assert c.admit([Check(TOTAL, "b", 10, 1)], "").used == [1]


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0s"), (0.0201, "21ms"), (1.2, "1.2s"), (1.21, "1.3s"), (59.95, "60s"), (360, "6m0s"),
     (61.5, "1m2s")],
)
def test_duration(seconds: float, text: str) -> None:
    assert duration(seconds) == text


CFG = """
[keys.a]
key = "sk-a"
rpm = 10
tpm = 1000
budget_tokens = 500
budget_period = "day"

[backends.b]
type = "openai"
base_url = "http://127.0.0.1:1/v1"

[models.m]
backend = "b"
rpm = 4
"""


def test_rules_and_headers_pick_the_tightest_scope() -> None:
    rules = Rules(parse(CFG)).for_request("a", "m")
    assert [r.what for r in rules] == ["budget", "requests", "tokens", "requests"]
    out = Outcome(-1, 0.0, [0, 5, 100, 3], [0.0, 30.0, 12.5, 2.0])
    h = dict(Plan(rules).headers(out))
    assert h["x-ratelimit-limit-requests"] == "4"
    assert h["x-ratelimit-remaining-requests"] == "1"
    assert h["x-ratelimit-reset-requests"] == "2s"
    assert h["x-ratelimit-remaining-tokens"] == "900"
    assert h["x-ratelimit-reset-tokens"] == "12.5s"


def test_refusals_in_openai_style() -> None:
    rules = Rules(parse(CFG)).for_request("a", "m")
    checks = Rules(parse(CFG)).checks(rules, 7)
    assert checks[0].key.endswith(":budget:" + Rules(parse(CFG)).period_id("day"))
    err = refusal(rules[1], checks[1], Outcome(1, 1.2, [0, 10, 0, 0], [0.0] * 4), "m")
    assert err.status == 429 and err.code == "rate_limit_exceeded"
    assert err.message == (
        "Rate limit reached for m on requests per min (RPM) for key a: Limit 10, Used 10, "
        "Requested 1. Please try again in 1.2s."
    )
    assert err.headers["Retry-After"] == "2"
    quota = refusal(rules[0], checks[0], Outcome(0, math.inf, [498, 0, 0, 0], [0.0] * 4), "m")
    assert isinstance(quota, QuotaExceeded)
    assert (quota.status, quota.type, quota.code) == (429, "insufficient_quota",
                                                      "insufficient_quota")
    assert "Used 498, Requested 7" in quota.message

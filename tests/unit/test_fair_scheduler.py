"""The fair admission scheduler: priorities, weighted shares, no burst credit, shedding and a
waiter's leaving, as a pure data structure."""

from __future__ import annotations

import itertools
import random
from collections import Counter

import pytest

from airouter.fairness.scheduler import HIGH, LOW, NORMAL, FairQueue

Big = 10_000


def drain(q: FairQueue[str]) -> list[str]:
    out = []
    while (item := q.pop()) is not None:
        out.append(item)
    return out


def test_empty_queue_answers_nothing() -> None:
    q: FairQueue[str] = FairQueue()
    assert q.pop() is None and q.peek() is None and len(q) == 0 and not q
    assert not q.remove("x")


def test_higher_priority_goes_first_whatever_the_arrival() -> None:
    q: FairQueue[str] = FairQueue()
    q.push("low1", "a", LOW, 1, Big)
    q.push("normal1", "a", NORMAL, 1, Big)
    q.push("low2", "b", LOW, 1, Big)
    q.push("high1", "c", HIGH, 1, Big)
    q.push("normal2", "b", NORMAL, 1, Big)
    assert q.peek() == "high1"
    assert drain(q) == ["high1", "normal1", "normal2", "low1", "low2"]


def test_one_key_is_served_in_arrival_order() -> None:
    q: FairQueue[str] = FairQueue()
    for i in range(10):
        q.push(f"r{i}", "a", NORMAL, 2.5, Big)
    assert drain(q) == [f"r{i}" for i in range(10)]


@pytest.mark.parametrize(("wa", "wb"), [(3, 1), (1, 3), (1, 1), (5, 2)])
def test_two_flooding_keys_share_by_weight(wa: float, wb: float) -> None:
    """Both keys keep many waiting (a flood, b arrived later): each window of grants splits
    as the weights do."""
    q: FairQueue[str] = FairQueue()
    for i in range(200):
        q.push(f"a{i}", "a", NORMAL, wa, Big)
    for i in range(200):
        q.push(f"b{i}", "b", NORMAL, wb, Big)
    served = [q.pop() or "" for _ in range(int(40 * (wa + wb)))]
    counts = Counter(s[0] for s in served)
    assert counts["a"] / counts["b"] == pytest.approx(wa / wb, rel=0.05)


def test_shares_hold_as_grants_and_arrivals_interleave() -> None:
    """A closed loop: each grant is answered by a new request of the same key (what a client
    keeping N in flight does): 3:1 over many rounds."""
    q: FairQueue[str] = FairQueue()
    seq = itertools.count()
    for _ in range(20):
        q.push(f"a{next(seq)}", "a", NORMAL, 3, Big)
        q.push(f"b{next(seq)}", "b", NORMAL, 1, Big)
    counts: Counter[str] = Counter()
    for _ in range(4000):
        got = q.pop()
        assert got is not None
        counts[got[0]] += 1
        q.push(f"{got[0]}{next(seq)}", got[0], NORMAL, 3 if got[0] == "a" else 1, Big)
    assert 2.9 <= counts["a"] / counts["b"] <= 3.1


def test_a_key_below_its_share_gets_all_it_asks_for() -> None:
    """b (weight 3) floods; a (weight 1) asks for one request in ten: each of a's requests
    goes next, or after at most one of b's."""
    q: FairQueue[str] = FairQueue()
    seq = itertools.count()
    for _ in range(50):
        q.push(f"b{next(seq)}", "b", NORMAL, 3, Big)
    for round_ in range(100):
        if round_ % 10 == 0:
            q.push(f"a{round_}", "a", NORMAL, 1, Big)
            order = [q.pop() or "" for _ in range(2)]
            assert f"a{round_}" in order
            for item in order:
                if item.startswith("b"):
                    q.push(f"b{next(seq)}", "b", NORMAL, 3, Big)
            continue
        got = q.pop() or ""
        assert got.startswith("b")
        q.push(f"b{next(seq)}", "b", NORMAL, 3, Big)


def test_an_idle_key_gets_no_burst_beyond_one_round() -> None:
    """a and b flood for a while, then c (same weight), idle until now, sends a burst: c gets
    one request per round like the others, not a catch-up run."""
    q: FairQueue[str] = FairQueue()
    seq = itertools.count()
    for _ in range(10):
        q.push(f"a{next(seq)}", "a", NORMAL, 1, Big)
        q.push(f"b{next(seq)}", "b", NORMAL, 1, Big)
    for _ in range(1000):  # a and b keep 10 each waiting
        got = q.pop() or ""
        q.push(f"{got[0]}{next(seq)}", got[0], NORMAL, 1, Big)
    for i in range(30):
        q.push(f"c{i}", "c", NORMAL, 1, Big)
    window = [q.pop() or "" for _ in range(12)]
    counts = Counter(s[0] for s in window)
    assert counts["c"] <= 5  # about a third: at most one round ahead of its share
    assert counts["a"] >= 3 and counts["b"] >= 3


def test_a_full_queue_refuses_an_arrival_of_the_same_or_lower_priority() -> None:
    q: FairQueue[str] = FairQueue()
    assert q.push("n1", "a", NORMAL, 1, 2) == (True, None)
    assert q.push("n2", "a", NORMAL, 1, 2) == (True, None)
    assert q.push("n3", "b", NORMAL, 1, 2) == (False, None)
    assert q.push("l1", "b", LOW, 1, 2) == (False, None)
    assert len(q) == 2
    assert q.push("x", "a", HIGH, 1, 0) == (False, None)  # no queue at all: nobody to shed


def test_shedding_displaces_the_newest_waiter_of_the_lowest_priority() -> None:
    q: FairQueue[str] = FairQueue()
    q.push("l1", "bulk", LOW, 1, 4)
    q.push("n1", "a", NORMAL, 1, 4)
    q.push("l2", "other", LOW, 5, 4)  # the newest low one, though first by its tag
    q.push("l3", "bulk", LOW, 1, 4)
    assert q.push("l3x", "bulk", LOW, 1, 4) == (False, None)
    assert q.push("h1", "vip", HIGH, 1, 4) == (True, "l3")
    assert q.push("n2", "a", NORMAL, 1, 4) == (True, "l2")
    assert q.push("h2", "vip", HIGH, 1, 4) == (True, "l1")
    assert q.push("h3", "vip", HIGH, 1, 4) == (True, "n2")  # then the newest normal one
    assert q.push("n3", "a", NORMAL, 1, 4) == (False, None)
    assert drain(q) == ["h1", "h2", "h3", "n1"]


def test_a_waiter_that_leaves_frees_its_place_at_once() -> None:
    q: FairQueue[str] = FairQueue()
    q.push("a1", "a", NORMAL, 1, 2)
    q.push("a2", "a", NORMAL, 1, 2)
    assert q.push("b1", "b", NORMAL, 1, 2) == (False, None)
    assert q.remove("a1") and "a1" not in q and len(q) == 1
    assert q.push("b1", "b", NORMAL, 1, 2) == (True, None)
    assert not q.remove("a1")
    assert drain(q) == ["b1", "a2"]  # b's first request before a's second


def test_a_leaving_waiter_gives_its_keys_round_back() -> None:
    """a queued two and withdrew its last: its next request is tagged as the second was."""
    q: FairQueue[str] = FairQueue()
    q.push("a1", "a", NORMAL, 1, Big)
    q.push("a2", "a", NORMAL, 1, Big)
    q.push("b1", "b", NORMAL, 1, Big)
    q.push("b2", "b", NORMAL, 1, Big)
    q.remove("a2")
    q.push("a3", "a", NORMAL, 1, Big)  # start 1, level with b2; earlier seq wins
    assert drain(q) == ["a1", "b1", "b2", "a3"]


def test_removed_entries_do_not_pile_up() -> None:
    q: FairQueue[str] = FairQueue()
    q.push("keep", "k", NORMAL, 1, Big)
    for i in range(5000):
        q.push(f"x{i}", "x", NORMAL, 1, Big)
        q.remove(f"x{i}")
    assert len(q._classes[NORMAL].heap) < 100
    assert drain(q) == ["keep"]


def test_random_operations_keep_the_invariants() -> None:
    """Against a plain model: the count, membership, priority order of pops, and that no
    waiter is lost or answered twice."""
    rng = random.Random(7)
    q: FairQueue[int] = FairQueue()
    present: dict[int, int] = {}
    next_id = 0
    for _ in range(20000):
        op = rng.random()
        if op < 0.5:
            prio = rng.choice((HIGH, NORMAL, LOW))
            ok, shed = q.push(next_id, rng.choice("abcd"), prio, rng.choice((0.5, 1, 3)), 30)
            if shed is not None:
                assert present.pop(shed) > prio
            if ok:
                present[next_id] = prio
            else:
                assert len(present) >= 30 and min(present.values()) <= prio
            next_id += 1
        elif op < 0.8:
            got = q.pop()
            if got is None:
                assert not present
            else:
                prio = present.pop(got)
                assert all(p >= prio for p in present.values())
        elif present:
            victim = rng.choice(list(present))
            assert q.remove(victim)
            del present[victim]
        assert len(q) == len(present)
        assert sum(q.waiting(p) for p in (HIGH, NORMAL, LOW)) == len(present)

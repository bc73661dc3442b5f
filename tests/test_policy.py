"""Self-healing decisions in policy.py, without a server: retirement, keepalive, breaker."""

from __future__ import annotations

import random

import pytest

from poolkeeper.policy import Backoff, Breaker, housekeeping_tick, plan_housekeeping
from poolkeeper.record import ConnectionRecord


def _rec(
    *, opened: float, used: float, checked: float, expires: float, gen: int = 0
) -> ConnectionRecord:
    rec = ConnectionRecord(object(), now=opened, expires_at=expires, generation=gen, backend_pid=1)
    rec.last_used = used
    rec.last_checked = checked
    return rec


def test_max_idle_retires_oldest_first_but_never_below_min_size() -> None:
    idle = [_rec(opened=0, used=0, checked=0, expires=1e9) for _ in range(5)]
    plan = plan_housekeeping(
        idle, now=100, total=5, min_size=2, max_idle=10, keepalive_interval=None, generation=0
    )
    assert plan.retire == idle[:3]
    assert plan.ping == []


def test_max_idle_counts_borrowed_connections_towards_min_size() -> None:
    idle = [_rec(opened=0, used=0, checked=0, expires=1e9) for _ in range(2)]
    # 4 open (2 borrowed): both idle ones can go, the borrowed two keep min_size=2.
    plan = plan_housekeeping(
        idle, now=100, total=4, min_size=2, max_idle=10, keepalive_interval=None, generation=0
    )
    assert plan.retire == idle


def test_expired_and_drained_connections_retire_even_at_min_size() -> None:
    expired = _rec(opened=0, used=99, checked=99, expires=50)
    drained = _rec(opened=0, used=99, checked=99, expires=1e9, gen=0)
    fresh = _rec(opened=0, used=99, checked=99, expires=1e9, gen=1)
    plan = plan_housekeeping(
        [expired, drained, fresh],
        now=100,
        total=3,
        min_size=3,
        max_idle=600,
        keepalive_interval=None,
        generation=1,
    )
    assert plan.retire == [expired, drained]


def test_keepalive_pings_only_connections_quiet_for_the_interval() -> None:
    quiet = _rec(opened=0, used=0, checked=60, expires=1e9)
    recent = _rec(opened=0, used=0, checked=95, expires=1e9)
    # A return is as good as a ping: the pool only stamps last_used then.
    returned = _rec(opened=0, used=95, checked=0, expires=1e9)
    plan = plan_housekeeping(
        [quiet, recent, returned],
        now=100,
        total=3,
        min_size=3,
        max_idle=None,
        keepalive_interval=30,
        generation=0,
    )
    assert plan.ping == [quiet]
    assert plan.retire == []


def test_housekeeping_runs_often_enough_for_the_shortest_interval() -> None:
    assert housekeeping_tick(
        max_lifetime=3600, max_idle=600, keepalive_interval=30, leak_threshold=None
    ) == pytest.approx(1.0)
    assert housekeeping_tick(
        max_lifetime=1.0, max_idle=None, keepalive_interval=None, leak_threshold=None
    ) == pytest.approx(0.25)
    assert housekeeping_tick(
        max_lifetime=None, max_idle=None, keepalive_interval=None, leak_threshold=None
    ) == pytest.approx(1.0)


def test_backoff_stays_within_half_and_all_of_the_capped_ceiling() -> None:
    backoff = Backoff(initial=0.05, cap=2.0, rng=random.Random(7))
    for attempt in range(40):
        ceiling = min(2.0, 0.05 * 2**attempt)
        assert ceiling / 2 <= backoff.next_delay() <= ceiling
    backoff.reset()
    assert backoff.next_delay() <= 0.05


def test_breaker_schedules_a_retry_for_the_moment_it_may_open() -> None:
    breaker = Breaker(0.5)
    assert breaker.opens_in(10.0) == float("inf")
    breaker.failure(10.0)
    assert breaker.opens_in(10.2) == pytest.approx(0.305)
    assert not breaker.is_open(10.2)
    assert breaker.is_open(10.5)
    assert breaker.opens_in(10.6) == float("inf")
    breaker.success()
    assert not breaker.is_open(11.0)
    assert breaker.opens_in(11.0) == float("inf")


def test_breaker_without_a_window_never_opens_but_remembers_when_failures_began() -> None:
    breaker = Breaker(None)
    breaker.failure(1.0)
    assert breaker.failing_since == 1.0
    assert not breaker.is_open(1e9)
    assert breaker.opens_in(2.0) == float("inf")


def test_probe_is_due_once_per_interval() -> None:
    breaker = Breaker(0.5, probe_interval=0.1)
    breaker.attempt(5.0)
    assert not breaker.probe_due(5.05)
    assert breaker.probe_due(5.11)

"""The pure decisions of policy.py: sizing, expiry jitter, back-off, breaker."""

from __future__ import annotations

import random

from poolkeeper.policy import Backoff, Breaker, connections_to_open, expiry


def test_grow_to_min_size_then_one_at_a_time_for_waiters() -> None:
    def to_open(total: int, opening: int, waiting: int, growth: int = 1) -> int:
        return connections_to_open(
            total=total, opening=opening, waiting=waiting, min_size=3, max_size=10, growth=growth
        )

    assert to_open(total=0, opening=0, waiting=0) == 3
    assert to_open(total=0, opening=0, waiting=5) == 3  # min_size's openings serve waiters too
    assert to_open(total=3, opening=0, waiting=0) == 0
    # Waiters: one attempt in flight, however many wait, until it is known that the
    # queue does not shrink on its own (growth > 1).
    assert to_open(total=3, opening=0, waiting=20) == 1
    assert to_open(total=4, opening=1, waiting=20) == 0
    assert to_open(total=3, opening=0, waiting=20, growth=4) == 4
    assert to_open(total=5, opening=2, waiting=20, growth=4) == 2
    assert to_open(total=3, opening=0, waiting=2, growth=4) == 2  # never more than wait
    assert to_open(total=9, opening=0, waiting=5, growth=4) == 1  # never past max_size
    assert to_open(total=10, opening=0, waiting=5, growth=4) == 0


def test_lifetimes_are_jittered_downwards_within_ten_percent() -> None:
    rng = random.Random(7)
    ends = [expiry(100.0, 1000.0, rng) for _ in range(200)]
    assert all(1000.0 <= end <= 1100.0 for end in ends)
    assert max(ends) - min(ends) > 50  # spread, not lock-step
    assert expiry(0.0, None) == float("inf")


def test_backoff_grows_exponentially_with_jitter_up_to_the_cap() -> None:
    backoff = Backoff(initial=0.1, cap=1.0, rng=random.Random(1))
    delays = [backoff.next_delay() for _ in range(8)]
    assert 0.05 <= delays[0] <= 0.1
    assert 0.1 <= delays[1] <= 0.2
    assert all(d <= 1.0 for d in delays)
    assert delays[-1] >= 0.5
    backoff.reset()
    assert backoff.next_delay() <= 0.1


def test_breaker_opens_after_the_window_and_closes_on_success() -> None:
    breaker = Breaker(window=0.5, probe_interval=0.1)
    assert not breaker.is_open(10.0)
    breaker.failure(10.0)
    assert not breaker.is_open(10.4)
    assert breaker.is_open(10.5)
    breaker.attempt(10.5)
    assert not breaker.probe_due(10.55)
    assert breaker.probe_due(10.7)
    breaker.success()
    assert not breaker.is_open(11.0)
    assert not Breaker(window=None).is_open(1e9)

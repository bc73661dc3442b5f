"""The pool's decisions, with no I/O: lifetimes, backoff, the circuit breaker, housekeeping.

The sync and async shells both consult this module; it is where fairness of
retirement, jitter and back-off live, and it is tested without a server.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Iterable

from poolkeeper.record import ConnectionRecord

__all__ = [
    "Backoff",
    "Breaker",
    "HousekeepingPlan",
    "connections_to_open",
    "expiry",
    "health_status",
    "housekeeping_tick",
    "plan_housekeeping",
    "silence_limit",
]

#: Lifetimes are shortened by up to this fraction, so connections opened together
#: (at start-up, after a restart) do not all retire in the same second.
LIFETIME_JITTER = 0.10


def expiry(now: float, max_lifetime: float | None, rng: random.Random | None = None) -> float:
    """When a connection opened at ``now`` should retire (``inf`` without a lifetime)."""
    if max_lifetime is None:
        return float("inf")
    draw = (rng or random).random()
    return now + max_lifetime * (1.0 - LIFETIME_JITTER * draw)


class Backoff:
    """Exponential back-off with jitter for reconnect attempts.

    Each delay is drawn between half and all of ``initial * 2**n`` (capped), so many
    processes that lost the same server do not reconnect in lock-step.
    """

    def __init__(
        self, initial: float = 0.05, cap: float = 2.0, rng: random.Random | None = None
    ) -> None:
        self.initial = initial
        self.cap = cap
        self._attempt = 0
        self._rng = rng or random.Random()

    def next_delay(self) -> float:
        """The delay before the next attempt; grows with each call until :meth:`reset`."""
        ceiling = min(self.cap, self.initial * (1 << self._attempt))
        self._attempt = min(self._attempt + 1, 30)
        jitter: float = self._rng.random()
        return ceiling * (0.5 + 0.5 * jitter)

    def reset(self) -> None:
        """Start again from the initial delay (after a success)."""
        self._attempt = 0


class Breaker:
    """Fail fast while the server is known to be down.

    Opens once connection attempts have failed without a success for ``window``
    seconds; closes on the first success. While open, a caller that cannot be
    served by an idle connection gets ``ConnectionFailed`` at once, after at most
    one probe attempt every ``probe_interval`` seconds.
    """

    def __init__(self, window: float | None, probe_interval: float = 0.1) -> None:
        self.window = window
        self.probe_interval = probe_interval
        self.failing_since: float | None = None
        self.last_attempt = float("-inf")
        #: The latest failure was the server's answer (a refusal), not its silence.
        self.refused = False

    def is_open(self, now: float) -> bool:
        """True while callers should fail fast."""
        return (
            self.window is not None
            and self.failing_since is not None
            and now - self.failing_since >= self.window
        )

    def opens_in(self, now: float) -> float:
        """Seconds until the breaker opens if failures go on (``inf`` if it never will,
        or is open already): a retry scheduled then lets waiting callers fail fast."""
        if self.window is None or self.failing_since is None:
            return float("inf")
        remaining = self.failing_since + self.window - now
        return remaining + 0.005 if remaining > 0 else float("inf")

    def probe_due(self, now: float) -> bool:
        """True if it is time to let one more connection attempt through."""
        return now - self.last_attempt >= self.probe_interval

    def attempt(self, now: float) -> None:
        """Note that a connection attempt starts."""
        self.last_attempt = now

    def failure(self, now: float, *, refused: bool = False) -> None:
        """Note a failed attempt; ``refused``: the server answered it with an error."""
        if self.failing_since is None:
            self.failing_since = now
        self.refused = refused

    def success(self) -> None:
        """Close the breaker."""
        self.failing_since = None
        self.refused = False


def connections_to_open(
    *, total: int, opening: int, waiting: int, min_size: int, max_size: int, growth: int
) -> int:
    """How many new connections to start now.

    ``total`` counts open connections plus those being opened. Enough to reach
    ``min_size``; beyond it, while callers wait, up to ``growth`` attempts in flight
    (and no more than there are waiting callers); never beyond ``max_size``.

    ``growth`` is 1 unless the queue is known not to shrink on its own: a caller in a
    burst of short requests is usually served by a returned connection sooner than by
    a new one, so opening for every waiter at once leaves the pool at ``max_size``
    for a burst that two connections would have served (psycopg_pool and HikariCP
    grow one connection at a time for the same reason).
    """
    want = max(min_size - total, min(waiting, growth) - opening, 0)
    return max(0, min(want, max_size - total))


@dataclasses.dataclass
class HousekeepingPlan:
    """What one housekeeping pass decided for the idle connections."""

    retire: list[ConnectionRecord] = dataclasses.field(default_factory=list)
    ping: list[ConnectionRecord] = dataclasses.field(default_factory=list)


def plan_housekeeping(
    idle: Iterable[ConnectionRecord],
    *,
    now: float,
    total: int,
    min_size: int,
    max_idle: float | None,
    keepalive_interval: float | None,
    generation: int,
) -> HousekeepingPlan:
    """Decide which idle connections to retire and which to ping.

    ``idle`` is ordered oldest-idle first. Retired: past their lifetime, from an
    older generation (``drain()``), or idle longer than ``max_idle`` while the
    pool would stay at or above ``min_size`` without them. Pinged: idle
    connections not used or pinged for ``keepalive_interval``.
    """
    plan = HousekeepingPlan()
    remaining = total
    for rec in idle:
        expired = now >= rec.expires_at or rec.generation < generation
        idle_too_long = (
            max_idle is not None and now - rec.last_used >= max_idle and remaining > min_size
        )
        if expired or idle_too_long:
            plan.retire.append(rec)
            remaining -= 1
        elif (
            keepalive_interval is not None
            and now - max(rec.last_used, rec.last_checked) >= keepalive_interval
        ):
            plan.ping.append(rec)
    return plan


def housekeeping_tick(
    *,
    max_lifetime: float | None,
    max_idle: float | None,
    keepalive_interval: float | None,
    leak_threshold: float | None,
) -> float:
    """How often housekeeping runs: often enough for the shortest interval configured."""
    intervals = [
        value
        for value in (max_lifetime, max_idle, keepalive_interval, leak_threshold)
        if value is not None
    ]
    shortest = min(intervals, default=4.0)
    return min(1.0, max(0.02, shortest / 4))


def health_status(
    *,
    closed: bool,
    breaker_open: bool,
    open_count: int,
    min_size: int,
    waiting: int,
    cannot_grow: bool = False,
) -> str:
    """``health()``'s verdict: ``closed``, ``down`` (server known unreachable),
    ``degraded`` (fewer than ``min_size`` open, callers waiting, or new connections
    refused while the open ones serve) or ``ok``."""
    if closed:
        return "closed"
    if breaker_open:
        return "down"
    if open_count < min_size or waiting or cannot_grow:
        return "degraded"
    return "ok"


def silence_limit(statement_timeout: float) -> float:
    """How long a statement may hear nothing from the server before the client gives up.

    The server cancels any statement at ``statement_timeout`` and says so at once, so
    silence well past it means the server or the path to it is gone: a hung host, or a
    middlebox that still ACKs (which TCP keepalives and ``tcp_user_timeout`` cannot see).
    """
    return statement_timeout + max(1.0, statement_timeout)

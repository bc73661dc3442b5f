"""Which replica a ``readonly=True`` borrow uses: the bookkeeping, no I/O.

``Database`` and ``AsyncDatabase`` keep one :class:`ReplicaRouter` per set of replica
pools. A replica is *usable* unless it was last seen down (a borrow from it failed)
or lagging (its replay lag, measured at most once per :data:`CHECK_EVERY` seconds,
exceeded ``max_replica_lag``). Reads go round-robin over the usable ones; a skipped
replica is tried again once its state is :data:`CHECK_EVERY` seconds old, so it
comes back by itself.

Round-robin rather than least-busy: each process sees only its own borrows, so
"least busy" from one process says little about the server, while round-robin
spreads every process's reads evenly and predictably.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

from poolkeeper.errors import ConfigurationError, NoReplicaAvailable

__all__ = ["CHECK_EVERY", "FALLBACKS", "ReplicaRouter", "check_replica_settings"]

#: Seconds a replica's measured lag, or its being down, is trusted before the next
#: read that picks it measures again.
CHECK_EVERY = 1.0

#: ``replica_fallback`` values: read the primary, or raise ``NoReplicaAvailable``.
FALLBACKS = ("primary", "fail")


def check_replica_settings(
    max_replica_lag: object, replica_fallback: object, replica_read_only: object
) -> None:
    """Raise ``ConfigurationError`` naming the setting if one is out of range."""
    if not isinstance(replica_read_only, bool):
        raise ConfigurationError(
            f"replica_read_only: {replica_read_only!r} must be True or False (True: "
            "replica sessions start with default_transaction_read_only=on)"
        )
    if max_replica_lag is not None and (
        isinstance(max_replica_lag, bool)
        or not isinstance(max_replica_lag, (int, float))
        or not max_replica_lag > 0
    ):
        raise ConfigurationError(
            f"max_replica_lag: must be a number of seconds > 0, or None to read from "
            f"replicas however far behind they are; got {max_replica_lag!r}"
        )
    if replica_fallback not in FALLBACKS:
        raise ConfigurationError(
            f"replica_fallback: must be 'primary' (read the primary while no replica is "
            f"usable) or 'fail' (raise NoReplicaAvailable); got {replica_fallback!r}"
        )


class _State:
    __slots__ = ("checked_at", "error", "lag", "state")

    def __init__(self) -> None:
        self.state = "unknown"  # unknown, ok, lagging, down
        self.lag: float | None = None
        self.checked_at = -CHECK_EVERY  # never: measure on first use
        self.error: str | None = None


class ReplicaRouter:
    """Round-robin over usable replicas, with each replica's last known state and lag."""

    def __init__(self, names: Sequence[str], max_lag: float | None, fallback: str) -> None:
        self.names = list(names)
        self.max_lag = max_lag
        self.fallback = fallback
        self._states = [_State() for _ in names]
        self._next = 0
        # Plain attribute updates from many threads; the lock keeps the cursor honest.
        self._lock = threading.Lock()

    def order(self) -> list[int]:
        """Replica indexes to try for this read, in round-robin order: those usable
        first, then those whose bad state is old enough to try again."""
        with self._lock:
            start = self._next
            count = len(self._states)
            self._next = (start + 1) % count if count else 0
        now = time.monotonic()
        rotation = [(start + k) % len(self._states) for k in range(len(self._states))]
        return [i for i in rotation if self._worth_trying(i, now)]

    def _worth_trying(self, index: int, now: float) -> bool:
        state = self._states[index]
        return state.state in ("ok", "unknown") or now - state.checked_at >= CHECK_EVERY

    def due(self, index: int) -> bool:
        """True if this replica's lag should be measured before it serves a read."""
        return time.monotonic() - self._states[index].checked_at >= CHECK_EVERY

    def measured(self, index: int, lag: float | None) -> bool:
        """Record a measured lag; return whether the replica may serve reads."""
        state = self._states[index]
        state.lag = lag
        state.error = None
        state.checked_at = time.monotonic()
        lagging = self.max_lag is not None and (lag is None or lag > self.max_lag)
        state.state = "lagging" if lagging else "ok"
        return not lagging

    def failed(self, index: int, exc: BaseException) -> None:
        """Record that borrowing from (or measuring) this replica failed."""
        state = self._states[index]
        state.state = "down"
        state.error = str(exc)
        state.checked_at = time.monotonic()

    def report(self, index: int) -> dict[str, object]:
        """This replica's routing fields for ``health()``: ``routing`` (ok, lagging,
        down or unknown), ``lag`` (seconds, as last measured) and ``routing_error``."""
        state = self._states[index]
        return {"routing": state.state, "lag": state.lag, "routing_error": state.error}

    def no_replica_error(self) -> NoReplicaAvailable:
        """What a read raises under ``replica_fallback="fail"``."""
        states = ", ".join(
            f"{name}: {s.state}" + (f" (lag {s.lag:.1f}s)" if s.lag is not None else "")
            for name, s in zip(self.names, self._states, strict=True)
        )
        limit = f"{self.max_lag}s" if self.max_lag is not None else "no limit"
        return NoReplicaAvailable(
            f"no replica can serve this read-only borrow ({states}; max_replica_lag="
            f"{limit}); wait for the replicas to recover or catch up, raise "
            "max_replica_lag, or pass replica_fallback='primary' to read the primary meanwhile"
        )

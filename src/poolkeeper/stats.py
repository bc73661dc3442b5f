"""``PoolStats``: an immutable snapshot of a pool's counters and gauges, and the wait sampler."""

from __future__ import annotations

import dataclasses
import itertools
from collections import deque
from collections.abc import Callable

__all__ = [
    "RING_MASK",
    "RING_SIZE",
    "ConnectTimes",
    "LockFreeCounter",
    "PoolStats",
    "UseTimes",
    "WaitRing",
    "WaitSamples",
]


class LockFreeCounter:
    """A counter safe to bump from many threads without a lock.

    ``itertools.count.__next__`` is atomic (a single C call), where ``x += 1`` on
    an attribute can lose increments when threads switch between load and store.
    """

    __slots__ = ("add", "ticks")

    def __init__(self) -> None:
        #: The underlying ``itertools.count``: hot paths call ``next(counter.ticks)``,
        #: which CPython specializes; a method call through an attribute it does not.
        self.ticks = itertools.count()
        #: Count one (the C-level ``__next__`` itself: no Python frame).
        self.add: Callable[[], object] = self.ticks.__next__

    @property
    def value(self) -> int:
        """How many so far."""
        # count's repr is "count(N)", N being the next value: the number counted.
        return int(repr(self.ticks)[6:-1])


class WaitSamples:
    """The last few thousand borrow waits (slow path only), for p50/p99 in stats."""

    __slots__ = ("_samples", "add")

    def __init__(self, size: int = 4096) -> None:
        self._samples: deque[float] = deque(maxlen=size)
        #: Record one wait, in seconds: the bound C-level ``deque.append``, since
        #: every contended borrow calls it.
        self.add: Callable[[float], None] = self._samples.append

    def percentiles(self) -> tuple[float, float, float]:
        """(p50, p99, max) in seconds over the recorded waits; zeros when none."""
        # copy() is one atomic step (the deque's own lock on free-threaded builds),
        # where sorting the live deque could see it change mid-iteration.
        return _percentiles(sorted(self._samples.copy()))

    def newest(self, count: int) -> list[float]:
        """The last ``count`` waits recorded (fewer if fewer are kept), oldest first."""
        if count <= 0:
            return []
        data = list(self._samples.copy())
        return data[-count:]


class ConnectTimes:
    """How long recent connects took (seconds), until a metrics exporter takes them.

    Appended once per connection opened (never on a borrow) and taken with
    :meth:`drain`, each sample once; the oldest are dropped when nobody drains.
    """

    __slots__ = ("_samples", "add")

    def __init__(self, size: int = 1024) -> None:
        self._samples: deque[float] = deque(maxlen=size)
        #: Record one connect, in seconds (the C-level ``deque.append``: thread-safe).
        self.add: Callable[[float], None] = self._samples.append

    def drain(self) -> list[float]:
        """Take every sample recorded since the last drain, oldest first."""
        taken: list[float] = []
        pop = self._samples.popleft
        while True:
            try:
                taken.append(pop())
            except IndexError:
                return taken


class UseTimes(ConnectTimes):
    """How long recent borrows held their connection (seconds, borrow to return), until
    a metrics exporter takes them with :meth:`drain`.

    A pool makes one only when an exporter asks for it (``PoolCore._use_times_sampler``);
    until then a return records nothing per borrow. Appended on every return after
    that, from any thread (the C-level ``deque.append``: one call, no lock); the oldest
    are dropped when more than ``size`` returns come between two drains.
    """

    __slots__ = ()

    def __init__(self, size: int = 4096) -> None:
        super().__init__(size)


#: Slots in a :class:`WaitRing`; a power of two, so a wait's slot is ``count & mask``.
RING_SIZE = 4096
RING_MASK = RING_SIZE - 1


class WaitRing:
    """The last :data:`RING_SIZE` borrow waits and how many there were in all, for a
    pool whose borrows all run on one thread (an ``AsyncPool``'s event loop).

    Recording is three plain stores the owner does inline (``samples[count & RING_MASK]
    = wait``, then ``count += 1``): no call, no lock, no counter object. The
    :class:`LockFreeCounter` and :class:`WaitSamples` calls were about a fifth of a contended
    async borrow's own bookkeeping; this saves about 400 instructions of it
    (docs/benchmarks.md). Not for threads: two recording at once could lose one.
    """

    __slots__ = ("count", "samples")

    def __init__(self) -> None:
        #: Waits recorded so far.
        self.count = 0
        #: Wait ``n`` (seconds) sits at ``samples[n & RING_MASK]`` until overwritten.
        self.samples = [0.0] * RING_SIZE

    def percentiles(self) -> tuple[float, float, float]:
        """(p50, p99, max) in seconds over the recorded waits; zeros when none."""
        return _percentiles(sorted(self.samples[: min(self.count, RING_SIZE)]))

    def since(self, cursor: int) -> tuple[int, list[float]]:
        """The count now, and the waits recorded after the first ``cursor`` (the
        newest :data:`RING_SIZE` of them at most), oldest first. Safe from another
        thread: the owner stores a sample before counting it."""
        count = self.count
        first = max(cursor, count - RING_SIZE)
        samples = self.samples
        return count, [samples[n & RING_MASK] for n in range(first, count)]


def _percentiles(data: list[float]) -> tuple[float, float, float]:
    if not data:
        return 0.0, 0.0, 0.0
    last = len(data) - 1
    return data[last // 2], data[min(last, round(last * 0.99))], data[last]


@dataclasses.dataclass(frozen=True)
class PoolStats:
    """A snapshot of one pool. Gauges are read without the pool lock, so they are
    consistent to within a borrow or two under load; counters (the times included)
    only ever grow, as Prometheus counters do: a rate is the difference of two
    snapshots (there is no "since the last read" reset, unlike psycopg_pool's
    ``pop_stats()``)."""

    name: str
    min_size: int
    max_size: int
    #: Connections open or being opened.
    size: int
    idle: int
    in_use: int
    opening: int
    waiting: int
    borrows: int
    waits: int
    timeouts: int
    wait_p50_ms: float
    wait_p99_ms: float
    wait_max_ms: float
    connections_opened: int
    connections_closed: int
    connect_errors: int
    checks_failed: int
    rollbacks: int
    resets: int
    leaks: int
    breaker_open: bool
    last_error: str | None
    #: Time borrowers spent waiting for a connection, in all (ms).
    wait_time_ms: float = 0.0
    #: Time connections spent lent, in all, counted as each comes back (ms).
    usage_time_ms: float = 0.0
    #: Time spent opening the ``connections_opened`` connections (and running
    #: ``configure=`` on them), in all (ms).
    connect_time_ms: float = 0.0
    #: Connections returned broken or closed (discarded, not lent again).
    returned_bad: int = 0
    #: Borrows refused at once because ``max_waiting`` callers already waited.
    refused: int = 0
    #: Waits that ended by cancellation or interruption (Ctrl-C, task.cancel()).
    cancelled: int = 0

    def as_dict(self) -> dict[str, object]:
        """The snapshot as a plain dict (for JSON, logs, metrics)."""
        return dataclasses.asdict(self)

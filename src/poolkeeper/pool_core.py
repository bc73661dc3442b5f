"""``PoolCore``: the state and bookkeeping ``Pool`` and ``AsyncPool`` share.

Everything here is free of waiting and I/O: the idle stack and lent map, the
counters, the breaker's view of the server, how a record is made, how errors
and stats read, what housekeeping should do, what a forked child forgets. The
I/O both pools do off the hot path is written once above this, in
``async_pool_base.py`` (``pool_base.py`` is generated from it); the shells add
how a caller waits (a lock or a future), how work runs in the background
(threads or tasks), and the borrow and return paths, which are the hot path and
written for each concurrency model.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
import warnings
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from poolkeeper import forking
from poolkeeper.config import PoolConfig
from poolkeeper.conninfo import wants_standby
from poolkeeper.drivers.base import IDLE
from poolkeeper.errors import (
    ConfigurationError,
    ConfigureFailed,
    ConnectionFailed,
    PoolClosed,
    PoolError,
    PoolTimeout,
    TooManyWaiters,
)
from poolkeeper.policy import (
    Breaker,
    HousekeepingPlan,
    connections_to_open,
    expiry,
    health_status,
    housekeeping_tick,
    plan_housekeeping,
)
from poolkeeper.record import ConnectionRecord
from poolkeeper.redact import redact
from poolkeeper.stats import ConnectTimes, LockFreeCounter, PoolStats, UseTimes

if TYPE_CHECKING:
    from typing_extensions import TypeVar as _DefaultingTypeVar

    #: The connection type a pool lends; a bare ``Pool`` lends ``Any``.
    ConnT = _DefaultingTypeVar("ConnT", default=Any)
else:
    # Typing only: the default matters to type checkers, and typing.TypeVar takes
    # ``default=`` only from Python 3.13.
    ConnT = TypeVar("ConnT")

__all__ = ["PoolCore"]

_log = logging.getLogger("poolkeeper.pool")
_monotonic = time.monotonic
#: ``expires_at`` of a record that must retire when it comes back (resize()).
_EXPIRED = float("-inf")

_refs = sys.getrefcount
_UNMEASURED = 1 << 30
# Where the GIL is off, reference counts are only approximate: trust them less.
_COUNTS_EXACT = getattr(sys, "_is_gil_enabled", lambda: True)()


def _held_by_borrower(rec: ConnectionRecord, idle_refs: int) -> bool:
    """Is a lent connection still referenced outside the pool? One the pool alone holds
    (the lent map's key is its one reference more than an idle one has) was lost by an
    interrupt between the borrow and the borrower's own variable: nobody can return it.
    """
    if not _COUNTS_EXACT or idle_refs == _UNMEASURED:
        return True  # counts not exact, or never measured: assume held
    return _refs(rec.conn) > idle_refs + 1


# Records a forked child inherited: kept alive so their finalisers never run there.
_orphans: list[ConnectionRecord] = []


class PoolCore:
    """State, counters and decisions shared by the sync and asyncio pools."""

    # Slots, not a __dict__: a pool has more attributes than CPython's shared-key
    # instance dicts hold (30), and the hot path reads a dozen of them per borrow.
    __slots__ = (
        "__weakref__",
        "_banked",
        "_borrow_ticks",
        "_breaker",
        "_check_after",
        "_check_state",
        "_clean_state",
        "_closed",
        "_closed_under_borrower",
        "_connect_times",
        "_connecting",
        "_driver",
        "_forked",
        "_generation",
        "_grow_wide",
        "_idle",
        "_idle_refs",
        "_last_error",
        "_leak_threshold",
        "_lent",
        "_max_size",
        "_may_refuse",
        "_opened",
        "_opening",
        "_record_use",
        "_records",
        "_reset_mode",
        "_return_state",
        "_settings_changed",
        "_stats_borrows",
        "_stats_cancelled",
        "_stats_checks_failed",
        "_stats_closed",
        "_stats_connect_errors",
        "_stats_leaks",
        "_stats_opened",
        "_stats_refused",
        "_stats_resets",
        "_stats_returned_bad",
        "_stats_rollbacks",
        "_stats_timeouts",
        "_status",
        "_timeout",
        "_total",
        "_totals_lock",
        "_totals_seen",
        "_use_times",
        "_user_check",
        "_waiters",
        "config",
        "meant_for_primary",
        "name",
    )

    #: Names used in messages: the class users build, and its singleton facade.
    _pool_class: ClassVar[str] = "Pool"
    _facade_class: ClassVar[str] = "Database"
    _open_hint: ClassVar[str] = "call pool.open() first, or use 'with Pool(...) as pool'"
    _close_hint: ClassVar[str] = "call pool.close() or use 'with Pool(...) as pool'"

    _waiters: deque[Any]

    @staticmethod
    def _resolve_config(dsn: Any, config: PoolConfig | None, options: dict[str, Any]) -> PoolConfig:
        """The constructors' arguments: either ``config=`` or a DSN and keyword settings."""
        if config is None:
            return PoolConfig.build(dsn, name=options.pop("name", None), **options)
        if dsn is not None or options:
            raise ConfigurationError(
                "config: pass either config= or dsn/keyword settings, not both"
            )
        return config

    def _setup_core(self, config: PoolConfig, driver: Any, *, open: bool) -> None:
        self.config = config
        self.name = config.name
        self._driver = driver
        self._status: Callable[[Any], int] = driver.status
        self._apply_return_states(config, driver)

        self._idle: deque[ConnectionRecord] = deque()
        # Keyed by the connection itself: drivers' classes hash by identity (checked
        # once per connection in _identity_ok), which is cheaper than calling id().
        self._lent: dict[Any, ConnectionRecord] = {}
        self._closed_under_borrower: set[Any] = set()
        # Every record the pool counts in _total: what housekeeping's audit checks
        # against the idle stack and the lent map (see _audit_slots).
        self._records: set[ConnectionRecord] = set()
        # References an idle connection has (see _audit_slots); large until measured.
        self._idle_refs = _UNMEASURED
        # Open connections plus connections being opened.
        self._total = 0
        self._opening = 0
        # Of those, how many an opener has started connecting (see _opening_wanted_locked).
        self._connecting = 0
        # No waiter was served while the last connection for waiters was opened: the
        # connections lent are not coming back soon, so grow num_workers at a time.
        self._grow_wide = False
        self._generation = 0
        self._closed = not open
        self._opened = False
        self._forked = False
        #: False for a pool meant for standbys: a read-only error there is no failover.
        self.meant_for_primary = not wants_standby(config.dsn, config.connect_kwargs)
        self._apply_check_settings()
        base = getattr(driver, "connection_base", None)
        cls = config.connection_class
        if cls is not None and base is not None and not issubclass(cls, base):
            raise ConfigurationError(
                f"connection_class: {cls.__name__} does not subclass {base.__qualname__}, "
                f"which a {self._pool_class} opens; pass a subclass of it, or use the "
                "other kind of pool"
            )

        self._breaker = Breaker(config.fail_fast_after)
        # Read on every contended borrow, so kept here rather than behind self.config:
        # the timeout, max_size (resize() updates it), and whether anything can refuse
        # a caller a place in the queue (max_waiting, or a server seen failing).
        self._timeout = config.timeout
        self._max_size = config.max_size
        self._may_refuse = bool(config.max_waiting)
        self._last_error: ConnectionFailed | None = None
        self._stats_borrows = LockFreeCounter()
        self._borrow_ticks = self._stats_borrows.ticks
        self._stats_timeouts = LockFreeCounter()
        self._stats_opened = LockFreeCounter()
        self._connect_times = ConnectTimes()
        # Each borrow's use time, once an exporter asks for them (_use_times_sampler):
        # until then putconn pays one None check for it.
        self._use_times: UseTimes | None = None
        self._record_use: Callable[[float], None] | None = None
        self._stats_closed = LockFreeCounter()
        self._stats_connect_errors = LockFreeCounter()
        self._stats_checks_failed = LockFreeCounter()
        self._stats_rollbacks = LockFreeCounter()
        self._stats_resets = LockFreeCounter()
        self._stats_leaks = LockFreeCounter()
        self._stats_returned_bad = LockFreeCounter()
        self._stats_refused = LockFreeCounter()
        self._stats_cancelled = LockFreeCounter()
        # Usage, wait and connect seconds of the connections closed so far (the live
        # ones carry their own: see ConnectionRecord), and the highest totals reported,
        # which keep the totals monotonic while a record is between two homes.
        self._totals_lock = threading.Lock()
        self._banked = [0.0, 0.0, 0.0]
        self._totals_seen = (0.0, 0.0, 0.0)
        forking.register(self)

    def _apply_return_states(self, config: PoolConfig, driver: Any) -> None:
        """What putconn compares a returned connection's state with."""
        self._return_state: Callable[[Any], object] = driver.return_state
        # reset="always" must take the slow path on every return: no state equals this.
        # ...and so must a reset callable, which runs on every return.
        every_return = config.reset == "always" or callable(config.reset)
        self._clean_state: object = object() if every_return else driver.clean_state
        # What return_state gives when a settings check is all a return needs (see
        # session_state.CHECK): putconn makes it inline, without the slow path.
        self._check_state: object = object() if every_return else driver.check_state
        self._settings_changed: Callable[[Any], bool] = driver.settings_changed

    def _apply_check_settings(self) -> None:
        check = self.config.check
        # Folded into each record's check_due, so the fast path keeps its one compare:
        # a user's check runs before every lend (-inf: always due), "auto" once a
        # connection has idled check_after, None never.
        if callable(check):
            self._check_after = float("-inf")
        elif check is None:
            self._check_after = float("inf")
        else:
            self._check_after = self.config.check_after
        self._user_check: Callable[[Any], object] | None = check if callable(check) else None
        self._leak_threshold = self.config.leak_threshold
        self._reset_mode = self.config.reset

    # -- public, shared -----------------------------------------------------------------

    @property
    def closed(self) -> bool:
        """True once ``close()`` was called (or the pool was made with ``open=False``)."""
        return self._closed

    def stats(self) -> PoolStats:
        """A snapshot of counters and gauges (takes no lock, never waits)."""
        waits, (p50, p99, worst) = self._wait_figures()
        usage_s, wait_s, connect_s = self._times()
        return PoolStats(
            name=self.name,
            min_size=self.config.min_size,
            max_size=self.config.max_size,
            size=self._total,
            idle=len(self._idle),
            in_use=len(self._lent),
            opening=self._opening,
            waiting=0 if self._closed else len(self._waiters),
            # A borrow that waited is counted once, as a wait (see getconn).
            borrows=self._stats_borrows.value + waits,
            waits=waits,
            timeouts=self._stats_timeouts.value,
            wait_p50_ms=p50 * 1000,
            wait_p99_ms=p99 * 1000,
            wait_max_ms=worst * 1000,
            connections_opened=self._stats_opened.value,
            connections_closed=self._stats_closed.value,
            connect_errors=self._stats_connect_errors.value,
            checks_failed=self._stats_checks_failed.value,
            rollbacks=self._stats_rollbacks.value,
            resets=self._stats_resets.value,
            leaks=self._stats_leaks.value,
            breaker_open=self._fail_fast(_monotonic()),
            last_error=str(self._last_error) if self._last_error else None,
            wait_time_ms=wait_s * 1000,
            usage_time_ms=usage_s * 1000,
            connect_time_ms=connect_s * 1000,
            returned_bad=self._stats_returned_bad.value,
            refused=self._stats_refused.value,
            cancelled=self._stats_cancelled.value,
        )

    def _bank(self, rec: ConnectionRecord) -> None:
        """``rec`` is closed: keep its times in the pool's totals."""
        with self._totals_lock:
            banked = self._banked
            banked[0] += rec.usage
            banked[1] += rec.waited
            banked[2] += rec.connect_s

    def _times(self) -> tuple[float, float, float]:
        """Total (usage, wait, connect) seconds: the closed connections' plus the live
        ones'. A record being pinged or handed over is in neither for a moment, so the
        highest totals seen so far stand in for a dip."""
        records = list(self._idle) + list(self._lent.values())
        with self._totals_lock:
            usage, waited, connect = self._banked
            usage += sum(rec.usage for rec in records)
            waited += sum(rec.waited for rec in records)
            connect += sum(rec.connect_s for rec in records)
            seen = self._totals_seen
            totals = (max(usage, seen[0]), max(waited, seen[1]), max(connect, seen[2]))
            self._totals_seen = totals
        return totals

    def _use_times_sampler(self) -> UseTimes:
        """The buffer of each return's use time (borrow to return, seconds), recording
        from now on for the pool's life; the same one for every caller."""
        with self._totals_lock:
            use_times = self._use_times
            if use_times is None:
                use_times = self._use_times = UseTimes()
                # Set after the buffer: a return that sees the callable finds it ready.
                self._record_use = use_times.add
            return use_times

    def _wait_figures(self) -> tuple[int, tuple[float, float, float]]:
        """Borrows that waited so far, and (p50, p99, max) of the recent waits in
        seconds. Each pool keeps these its own way: the sync pool from many threads,
        the asyncio pool from its one loop."""
        raise NotImplementedError

    def _waits_since(self, cursor: int) -> tuple[int, list[float]]:
        """Borrows that waited so far, and the waits (seconds) of those after the first
        ``cursor``, as far as the recent samples reach: for a metrics exporter that
        turns waits into a histogram at collection time."""
        raise NotImplementedError

    def health(self) -> dict[str, object]:
        """Answer at once: ``status`` is ``ok``, ``degraded`` (some connections missing,
        or callers waiting), ``down`` (the server is known unreachable) or ``closed``."""
        now = _monotonic()
        return {
            "status": health_status(
                closed=self._closed,
                breaker_open=self._fail_fast(now),
                open_count=self._open_count(),
                min_size=self.config.min_size,
                waiting=0 if self._closed else len(self._waiters),
                cannot_grow=self._breaker.is_open(now),
            ),
            "name": self.name,
            "size": self._total,
            "idle": len(self._idle),
            "in_use": len(self._lent),
            "waiting": 0 if self._closed else len(self._waiters),
            # Signs of trouble since the pool opened (monotonic counters).
            "timeouts": self._stats_timeouts.value,
            "refused": self._stats_refused.value,
            "returned_bad": self._stats_returned_bad.value,
            "last_error": str(self._last_error) if self._last_error else None,
        }

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return (
            f"<poolkeeper.{self._pool_class} {self.name!r} {state} "
            f"dsn={self.config.redacted_dsn()!r} "
            f"size={self._total} idle={len(self._idle)} in_use={len(self._lent)}>"
        )

    def __del__(self) -> None:
        """A pool dropped without ``close()``: warn as an unclosed file does, stop the
        background work and close the idle connections (borrowed ones stay with their
        borrowers)."""
        try:
            if not self._opened or self._closed or self._forked:
                return
        except AttributeError:
            return  # __init__ did not finish
        self._closed = True
        idle = list(self._idle)
        self._idle.clear()
        self._stop_after_drop(idle)
        # Last: a warnings filter may turn it into an error.
        warnings.warn(
            f"pool {self.name!r} was deleted without close(); {self._close_hint}",
            ResourceWarning,
            stacklevel=2,
            source=self,
        )

    def _stop_after_drop(self, idle: list[ConnectionRecord]) -> None:
        """The shell's part of ``__del__``: stop its background work, close ``idle``."""
        raise NotImplementedError

    # -- accounting and errors ----------------------------------------------------------

    def _open_count(self) -> int:
        return self._total - self._opening

    def _raise_if_closed(self) -> None:
        if self._forked:
            raise PoolClosed(
                f"pool {self.name!r} was created in the parent process and cannot be used "
                f"after fork(); create the pool in the child, or use "
                f"poolkeeper.{self._facade_class}(), which does so for you"
            )
        if self._closed:
            if not self._opened:
                raise PoolClosed(
                    f"pool {self.name!r} is not open yet (open=False); {self._open_hint}"
                )
            raise PoolClosed(f"pool {self.name!r} is closed; create a new {self._pool_class}")

    def _timeout_error(self, message: str, hint: str) -> PoolTimeout:
        error = PoolTimeout(f"{message}; {hint}")
        if self._last_error is not None and self._breaker.failing_since is not None:
            error.__cause__ = self._last_error
        return error

    def _wait_timeout_error(self, started: float, now: float) -> PoolTimeout:
        """``wait()`` gave up: at its deadline, or early because the server is down."""
        last = self._last_error
        reason = f"; last error: {last.detail}" if last is not None else ""
        return self._timeout_error(
            f"pool {self.name!r} opened {self._open_count()} of its min_size="
            f"{self.config.min_size} within {now - started:.1f}s{reason}",
            "check that the server is reachable, or lower min_size",
        )

    def _fail_fast(self, now: float) -> bool:
        """Should a caller that finds no idle connection fail at once?

        While connection attempts have failed for ``fail_fast_after``, and either they
        got no answer (the server is unreachable) or the pool holds no connection at
        all. A server that answers "too many clients" or "authentication failed" is
        full or reconfigured, not down: the connections already open still serve,
        and callers queue for them.
        """
        breaker = self._breaker
        return breaker.is_open(now) and (not breaker.refused or self._open_count() <= 0)

    def _breaker_error(self) -> ConnectionFailed:
        cause = self._last_error
        detail = f": {cause.detail}" if cause is not None else ""
        state = (
            "refuses new connections and the pool holds none"
            if self._breaker.refused
            else "is unreachable"
        )
        error = ConnectionFailed(
            f"pool {self.name!r}: the server {state}{detail}; failing fast until a "
            "reconnect succeeds (fail_fast_after=None turns this off)",
            # The driver's words, as on every ConnectionFailed (errors.md promises it).
            cause.detail if cause is not None else "",
        )
        error.__cause__ = cause
        return error

    # -- borrowing: the slow path's decisions -------------------------------------------

    def _refuse_or_probe_due(self, now: float) -> bool:
        """Refuse a caller that found no idle connection a place in the queue, or say
        whether a reconnect probe is due on its behalf (True).

        Raises ``ConnectionFailed`` (server known down, no probe due) or
        ``TooManyWaiters`` (``max_waiting`` reached)."""
        probe = False
        if not self._idle and self._fail_fast(now):
            if not self._breaker.probe_due(now):
                raise self._breaker_error()
            probe = True
        max_waiting = self.config.max_waiting
        if max_waiting and len(self._waiters) >= max_waiting:
            waiting = len(self._waiters)
            self._stats_refused.add()
            who = "1 caller already waits" if waiting == 1 else f"{waiting} callers already wait"
            raise TooManyWaiters(
                f"pool {self.name!r}: {who} (max_waiting={max_waiting}); "
                "shed load or raise max_waiting"
            )
        return probe

    def _unknown_return(self, conn: object) -> None:
        """``putconn`` of a connection this pool does not hold as lent: one that
        ``close()`` closed under its borrower is taken back quietly; anything else is
        the caller's mistake."""
        if conn in self._closed_under_borrower:
            self._closed_under_borrower.discard(conn)
            return
        raise PoolError(
            f"pool {self.name!r} did not lend this connection (already returned, or "
            "from another pool); return each connection once, to the pool it came from"
        )

    def _no_connection_error(self, limit: float) -> PoolTimeout:
        """A waiter's deadline passed: count it and say what to change."""
        self._stats_timeouts.add()
        return self._timeout_error(
            f"pool {self.name!r}: no connection free within {limit:g}s "
            f"(max_size={self.config.max_size}, in use={len(self._lent)}, "
            f"waiting={len(self._waiters)})",
            "raise max_size or timeout, or return connections sooner",
        )

    def _claim_open_slots(self) -> int:
        """How many connections to start opening now; their slots are counted already."""
        # At max_size (the usual state under contention) there is nothing to decide.
        if self._closed or self._total >= self.config.max_size:
            return 0
        count = connections_to_open(
            total=self._total,
            opening=self._opening,
            waiting=0 if self._closed else len(self._waiters),
            min_size=self.config.min_size,
            max_size=self.config.max_size,
            growth=self.config.num_workers if self._grow_wide else 1,
        )
        self._total += count
        self._opening += count
        return count

    def _opening_wanted_locked(self) -> bool:
        """An opener is about to connect for a slot counted in ``_opening``: is that
        connection still wanted? Slots are claimed when callers queue, but a burst of
        short requests is often served by the connections already open before an
        opener gets to it. Wanted below ``min_size``, or while the waiters outnumber
        the connections already being opened (HikariCP asks the same, for the same
        reason: not to over-provision). How many are claimed at once is
        ``connections_to_open``'s ``growth``; each opened connection claims the next
        (``_admit``), so growth goes on for as long as callers wait."""
        if self._total - self._opening + self._connecting < self.config.min_size:
            return True
        return len(self._waiters) > self._connecting

    # -- checks and resets --------------------------------------------------------------

    def _mark_good(self, rec: ConnectionRecord, now: float) -> None:
        """``rec`` was just seen working: no check needed for another ``check_after``."""
        rec.last_checked = now
        rec.check_due = now + self._check_after

    def _note_server_gone(self) -> None:
        """A connection died: every other connection may have died with it.

        Idle ones are checked before they are lent (cheaper than a flag the borrow path
        would have to read). Lent ones retire when they come back: a borrower who sent
        nothing since the server went away returns a connection that looks idle and
        healthy, and ``putconn`` resets the check deadline on every return, so marking
        it "check first" would not survive the return; an expired lifetime does, at no
        cost to the return path, which compares it anyway.
        """
        for rec in list(self._idle):
            rec.check_due = float("-inf")
        now = _monotonic()
        for rec in list(self._lent.values()):
            rec.expires_at = min(rec.expires_at, now)

    def _needs_reset(self, conn: Any) -> bool:
        if self._reset_mode == "always":
            return True
        if self._reset_mode is None:
            # The flag is meaningless without resets; clear it so the next return is fast.
            self._driver.mark_clean(conn)
            return False
        return bool(self._driver.session_dirty(conn))

    def _is_failover(self, conn: Any) -> bool:
        """SQLSTATE 25006 from ``conn``: is this a demoted primary (replace everything)?

        Only on a pool meant for the primary, and only if the connection reached a hot
        standby: a read-only transaction on a healthy primary raises 25006 too, and a
        ping would pass on a standby, so verifying connections would not be enough.
        """
        is_standby = getattr(self._driver, "is_standby", None)
        if not self.meant_for_primary or is_standby is None or not is_standby(conn):
            return False
        _log.warning(
            "pool %r: a connection reached a read-only standby (SQLSTATE 25006); the "
            "primary was demoted or failed over, so every connection is being replaced",
            self.name,
        )
        return True

    # -- new connections ----------------------------------------------------------------

    def _identity_ok(self, conn: Any) -> bool:
        """The lent map needs identity equality; a driver class overriding it is a bug."""
        equality: object = type(conn).__eq__
        return equality is object.__eq__

    def _after_configure(self, conn: Any) -> None:
        """Check what ``configure=`` left behind; its settings become the baseline."""
        if self._status(conn) != IDLE:
            raise ConfigurationError(
                "configure: the callable left the connection inside a transaction; "
                "commit at its end, or switch the connection to autocommit first"
            )
        # What configure set is the baseline every borrower should see, not a leak.
        self._driver.mark_clean(conn)
        self._driver.record_baseline(conn)
        self._driver.save_client_state(conn)

    @staticmethod
    def _configure_failed(exc: BaseException) -> ConfigureFailed:
        # Said apart from "could not connect": the server was fine, the hook was not.
        return ConfigureFailed(
            f"configure= raised {type(exc).__name__}: {redact(str(exc))}; "
            "the new connection was discarded"
        )

    def _new_record(self, conn: Any, generation: int) -> ConnectionRecord:
        now = _monotonic()
        rec = ConnectionRecord(
            conn,
            now=now,
            expires_at=expiry(now, self.config.max_lifetime),
            generation=generation,
            backend_pid=self._driver.backend_pid(conn),
            check_after=self._check_after,
        )
        self._records.add(rec)
        return rec

    def _record_connect_failure(self, exc: BaseException) -> None:
        """Count, redact and log a failed attempt; it becomes ``_last_error``."""
        self._stats_connect_errors.add()
        detail = redact(str(exc).strip()) or type(exc).__name__
        what = (
            "a new connection failed configure= on"
            if isinstance(exc, ConfigureFailed)
            else "could not connect to"
        )
        error = ConnectionFailed(f"{what} {self.config.redacted_dsn()!r}: {detail}", detail)
        self._last_error = error
        _log.warning("pool %r: %s", self.name, error)

    def _record_connect_success(self, rec: ConnectionRecord) -> bool:
        """Count a new connection; True if it ends an outage (wake the other openers)."""
        self._stats_opened.add()
        _log.debug("pool %r: opened connection to backend %d", self.name, rec.backend_pid)
        if self._breaker.failing_since is None:
            return False
        self._breaker.success()
        self._may_refuse = bool(self.config.max_waiting)
        return True

    def _record_breaker_failure(self, now: float, exc: BaseException) -> None:
        """A connection attempt failed: callers may be refused now (``_refuse_or_probe_due``)."""
        # A configure= hook that fails says nothing about the server either.
        refused = isinstance(exc, ConfigureFailed) or self._driver.is_refusal(exc)
        self._breaker.failure(now, refused=refused)
        self._may_refuse = True

    def _log_give_up(self) -> None:
        _log.error(
            "pool %r: giving up on a connection after reconnect_timeout=%gs: %s",
            self.name,
            self.config.reconnect_timeout,
            self._last_error,
        )

    # -- maintenance --------------------------------------------------------------------

    def _take_idle(self, rec: ConnectionRecord) -> bool:
        # The sync borrow path pops without the lock, so rec may be gone already.
        try:
            self._idle.remove(rec)
        except ValueError:
            return False
        return True

    def _plan_housekeeping(
        self, now: float
    ) -> tuple[list[ConnectionRecord], list[ConnectionRecord]]:
        """Decide, and take out of the idle stack, what to retire and what to ping."""
        cfg = self.config
        plan: HousekeepingPlan = plan_housekeeping(
            list(self._idle),
            now=now,
            total=self._open_count(),
            min_size=cfg.min_size,
            max_idle=cfg.max_idle,
            keepalive_interval=cfg.keepalive_interval,
            generation=self._generation,
        )
        retire = [rec for rec in plan.retire if self._take_idle(rec)]
        # Above max_size after resize() (a return that raced it): the coldest go.
        over = self._open_count() - len(retire) - cfg.max_size
        for rec in list(self._idle)[: max(0, over)]:
            if rec not in plan.ping and self._take_idle(rec):
                retire.append(rec)
        ping = [rec for rec in plan.ping if self._take_idle(rec)]
        return retire, ping

    def _housekeeping_delay(self) -> float:
        cfg = self.config
        return housekeeping_tick(
            max_lifetime=cfg.max_lifetime,
            max_idle=cfg.max_idle,
            keepalive_interval=cfg.keepalive_interval,
            leak_threshold=cfg.leak_threshold,
        )

    def _resize_surplus(self, min_size: int, max_size: int) -> list[ConnectionRecord]:
        """Apply new bounds; return the idle records beyond the new ``max_size``.

        Borrowed records beyond it are marked expired, so their return retires them
        (the check putconn makes anyway: nothing added to the hot path). A record
        returned while this runs can slip past the mark; housekeeping retires idle
        ones while the pool is above ``max_size`` (see ``_plan_housekeeping``).
        """
        self.config = self.config.replace(min_size=min_size, max_size=max_size)
        self._max_size = max_size
        excess = self._total - max_size
        surplus: list[ConnectionRecord] = []
        while excess > 0 and self._idle:
            surplus.append(self._idle.popleft())
            excess -= 1
        if excess > 0:
            for rec in list(self._lent.values())[:excess]:
                rec.expires_at = _EXPIRED
        return surplus

    def _drain_idle(self) -> list[ConnectionRecord]:
        """Start a new generation (borrowed ones retire on return); take every idle one."""
        self._generation += 1
        old = list(self._idle)
        self._idle.clear()
        return old

    def _note_idle_refs(self, rec: ConnectionRecord) -> None:
        """Count the references of a connection the pool alone holds (a new one, just
        admitted: the opener kept only its record); see ``_audit_slots``."""
        self._idle_refs = min(self._idle_refs, _refs(rec.conn))

    def _audit_slots(self, now: float) -> list[ConnectionRecord]:
        """Find the records the pool counts but nobody holds any more; stop counting them.

        A connection is idle, lent, or briefly in the hands of the pool's own code
        (being checked, cleaned on return, handed to a waiter). An interrupt
        (Ctrl-C, a signal handler's exception) landing in one of those short windows
        leaves it in none: its slot would be lost for the pool's lifetime, and with
        ``max_size=1`` every later borrow would time out. A record seen neither idle
        nor lent at two audits ``astray_grace`` apart (longer than any of the pool's
        own steps takes: each waits at most ``connect_timeout``) is taken as lost.
        Runs in housekeeping, with the lock held; the hot path pays nothing for it.
        """
        placed = {id(rec) for rec in self._idle}
        floor = self._idle_refs
        placed.update(id(rec) for rec in self._lent.values() if _held_by_borrower(rec, floor))
        if self._idle:
            # The pool alone holds an idle connection: the fewest references seen on
            # one is what it has when nobody else holds it (a caller's stale variable
            # can only raise a count, so the minimum is the one to trust).
            self._idle_refs = min(floor, *(_refs(rec.conn) for rec in self._idle))
        grace = 2 * self.config.connect_timeout + 1.0
        lost = []
        for rec in list(self._records):
            if id(rec) in placed:
                rec.seen_astray_at = None
            elif rec.seen_astray_at is None:
                rec.seen_astray_at = now
            elif now - rec.seen_astray_at >= grace:
                lost.append(rec)
        for rec in lost:
            self._records.discard(rec)
            self._lent.pop(rec.conn, None)
            self._total -= 1
            _log.warning(
                "pool %r: connection to backend %d was neither idle nor held by a borrower "
                "for %.1fs (an interrupt landed while the pool moved it?); closing it, a "
                "replacement opens",
                self.name,
                rec.backend_pid,
                now - (rec.seen_astray_at or now),
            )
        return lost

    def _report_leaks(self, now: float) -> None:
        threshold = self._leak_threshold
        assert threshold is not None
        for rec in list(self._lent.values()):
            if not rec.leak_reported and now - rec.borrowed_at >= threshold:
                rec.leak_reported = True
                self._stats_leaks.add()
                _log.warning(
                    "pool %r: connection to backend %d borrowed %.1fs ago and not returned "
                    "(leak_threshold=%gs); it was borrowed here:\n%s",
                    self.name,
                    rec.backend_pid,
                    now - rec.borrowed_at,
                    threshold,
                    # A line of the borrower's code may hold a DSN or a password.
                    redact(rec.borrow_stack) if rec.borrow_stack else "(no stack recorded)",
                )

    # -- fork safety --------------------------------------------------------------------

    def _after_fork_in_child(self) -> None:
        """In a forked child: make the parent's sockets inert here, forget every record.

        The shells extend this to replace their locks, threads or tasks."""
        records = list(self._idle) + list(self._lent.values())
        for rec in records:
            forking.neutralise_fd(self._driver.fileno(rec.conn))
        # Keep the objects alive: collected here, each psycopg connection would warn that
        # it "was deleted while still open" (a ResourceWarning about a connection this
        # process never opened), and its finaliser would write to what is now /dev/null.
        _orphans.extend(records)
        self._idle = deque()
        self._lent = {}
        self._records = set()
        self._waiters = deque()
        self._total = self._opening = self._connecting = 0
        self._grow_wide = False
        if not self._opened:
            # Never opened (open=False, to be opened in each worker, the pre-fork
            # server pattern): it holds nothing of the parent's, so the child may open it.
            return
        self._forked = True
        self._closed = True

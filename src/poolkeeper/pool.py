"""``Pool``: the blocking connection pool.

The borrow path is built around one invariant: while callers are queued,
nobody jumps the queue, and while nobody is queued, a borrow takes no lock.

* Idle connections sit in a ``deque`` used as a stack (most recently returned
  on the right), so ``getconn`` is a lock-free ``pop()`` and the coldest
  connections gather on the left for ``max_idle`` to retire.
* A caller that finds no idle connection enqueues a waiter *and then* looks at
  the idle stack again, under the lock; ``putconn`` pushes onto the stack *and
  then* looks for waiters. Each side writes before it reads, so at least one
  of them sees the other and no connection sits idle while someone waits.
* A returned connection goes straight to the first waiter (hand-off), never
  back through the stack, so waiters are served first come, first served.
* Opening, pinging for keepalive, retiring and closing happen on background
  threads (``background.py``); decisions about them come from ``policy.py``.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
import time
import traceback
import weakref
from collections import deque
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, Literal, cast, overload

from poolkeeper.background import BackgroundWorkers
from poolkeeper.config import PoolConfig, check_call_timeout
from poolkeeper.drivers import SyncDriver, load_sync_driver
from poolkeeper.errors import PoolClosed, PoolError
from poolkeeper.pool_base import PoolBase
from poolkeeper.pool_core import ConnT
from poolkeeper.record import ConnectionRecord
from poolkeeper.stats import LockFreeCounter, WaitSamples
from poolkeeper.waiters import overdue_waiters, remove_waiter

if TYPE_CHECKING:
    from poolkeeper.drivers.connections import Psycopg2Connection, PsycopgConnection

__all__ = ["Pool"]

_log = logging.getLogger("poolkeeper.pool")
_monotonic = time.monotonic
_allocate_lock = threading.Lock
_new_object = object.__new__
_NEVER = float("inf")
_NOT_YET: Any = object()
_NONE: list[ConnectionRecord] = []
#: The longest single sleep of the deadline thread (a lock's wait cannot be longer).
_MAX_SLEEP = min(threading.TIMEOUT_MAX, 3600.0)


class _Waiter:
    """One queued caller: a lock it sleeps on, its deadline, and what it was handed.

    Made inline in ``Pool.getconn``, not by calling the class: under contention every
    borrow makes one, and a Python ``__init__`` costs more than the rest of it.
    """

    __slots__ = ("deadline", "error", "limit", "lock", "rec")

    lock: threading.Lock
    rec: ConnectionRecord | None
    error: PoolError | None
    #: monotonic time at which it gets PoolTimeout, and the timeout that gave it
    deadline: float
    limit: float

    def give(self, rec: ConnectionRecord) -> None:
        self.rec = rec
        self.lock.release()

    def fail(self, error: PoolError) -> None:
        self.error = error
        self.lock.release()


def _deadline_of(waiter: _Waiter) -> float:
    return waiter.deadline


#: Left in a closed pool's waiter queue for good, so that the reads the hot paths
#: make anyway send them to the locked slow path: getconn's fast path ("nobody
#: queued?") never lends from a closed pool, and putconn's second look at the queue,
#: after it pushed a connection, finds it and takes the connection back to close it
#: (a return that passed its generation check just before close() ran). Never given
#: a connection, never failed, never overdue.
_CLOSED_MARK = _new_object(_Waiter)
_CLOSED_MARK.lock = _allocate_lock()
_CLOSED_MARK.rec = None
_CLOSED_MARK.error = None
_CLOSED_MARK.deadline = _NEVER
_CLOSED_MARK.limit = 0.0


class _Probe:
    """Wakes the reconnect loops from their back-off (``AsyncPool``: a ``_Signal``)."""

    __slots__ = ("_event", "notify_all")

    def __init__(self) -> None:
        self._event = threading.Event()
        #: Wake every sleeper now: the bound C-level ``Event.set``, as a borrow that
        #: finds the server down calls it.
        self.notify_all: Callable[[], None] = self._event.set

    def wait(self, timeout: float) -> bool:
        """Sleep until woken or ``timeout`` seconds pass; True if woken."""
        if self._event.wait(timeout):
            self._event.clear()
            return True
        return False


def _housekeep(ref: weakref.ref[Pool[Any]]) -> float | None:
    """One housekeeping pass of the pool behind ``ref``; None once it is gone."""
    pool = ref()
    return None if pool is None else pool._housekeeping()


def _keep_deadlines(
    ref: weakref.ref[Pool[Any]], lock: threading.Lock, deadlines: threading.Condition
) -> None:
    """The deadline thread: fail each waiter whose deadline has passed with
    ``PoolTimeout``, then sleep until the earliest deadline still ahead.

    Waiters sleep without a timeout (see getconn). Nearly all use the pool's
    timeout and join in order, so this thread wakes about once per timeout
    period, not once per wait; a waiter with an earlier deadline than it sleeps
    for wakes it at once. It holds the pool only while awake.
    """
    with lock:
        while True:
            pool = ref()
            if pool is None or pool._closed:
                return
            sleep = pool._expire_waiters_locked()
            del pool
            if ref() is None:
                return
            deadlines.wait(sleep)


def _wake_deadline_keeper(lock: threading.Lock, deadlines: threading.Condition) -> None:
    """Wake the deadline thread of a pool being collected, to let it see so. The lock
    is free unless the collection runs in that very thread, inside its locked
    stretch: then a helper waits for the thread to release it (in its wait)."""

    def wake() -> None:
        with lock:
            deadlines.notify_all()

    if lock.acquire(blocking=False):
        try:
            deadlines.notify_all()
        finally:
            lock.release()
        return
    with contextlib.suppress(RuntimeError):  # no new threads at interpreter exit
        threading.Thread(target=wake, daemon=True).start()


class Pool(PoolBase[ConnT]):
    """A thread-safe pool of PostgreSQL connections.

    Not a singleton: you own its lifecycle (``close()``, or use it as a context
    manager). See ``Database`` for the process-wide shared pool. Keyword
    arguments are the settings of :class:`~poolkeeper.PoolConfig`; the
    connection you get is the driver's own connection object.

    Generic in that object's type, as type checkers see it: ``Pool(dsn)`` is a
    ``Pool[psycopg.Connection[Any]]``, ``Pool(dsn, driver="psycopg2")`` a
    ``Pool[psycopg2.extensions.connection]``; ``Pool(config=...)`` lends ``Any``.
    """

    __slots__ = (
        "_changed",
        "_connect_slots",
        "_deadline_thread",
        "_deadlines",
        "_lock",
        "_probe",
        "_record_wait",
        "_spare_waiters",
        "_stats_waits",
        "_wait_samples",
        "_watch_at",
        "_workers",
    )

    @overload
    def __init__(
        self: Pool[PsycopgConnection],
        dsn: Any = None,
        *,
        open: bool = True,
        config: None = None,
        driver: Literal["psycopg"] = "psycopg",
        **options: Any,
    ) -> None: ...
    @overload
    def __init__(
        self: Pool[Psycopg2Connection],
        dsn: Any = None,
        *,
        open: bool = True,
        config: None = None,
        driver: Literal["psycopg2"],
        **options: Any,
    ) -> None: ...
    @overload
    def __init__(
        self: Pool[Any],
        dsn: Any = None,
        *,
        open: bool = True,
        config: PoolConfig | None = None,
        **options: Any,
    ) -> None: ...
    def __init__(
        self,
        dsn: Any = None,
        *,
        open: bool = True,
        config: PoolConfig | None = None,
        **options: Any,
    ) -> None:
        config = self._resolve_config(dsn, config, options)
        self._driver: SyncDriver[Any] = load_sync_driver(config.driver)
        self._waiters: deque[_Waiter] = deque()
        # Waits are counted and sampled by whichever thread waited: thread-safe
        # without the pool lock (itertools.count, and a deque's own append).
        self._stats_waits = LockFreeCounter()
        self._wait_samples = WaitSamples()
        self._record_wait = self._wait_samples.add
        self._setup_core(config, self._driver, open=open)
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        # The deadline thread sleeps on this until the earliest deadline it knows of.
        self._deadlines = threading.Condition(self._lock)
        self._watch_at = _NEVER
        # Waiters that were served, their lock held again: reused by the next wait, as
        # making a lock and a waiter cost more than the rest of a contended borrow.
        # At most one per thread that ever waited at once; never one that timed out
        # or was interrupted (its lock's state is not known to be "held").
        self._spare_waiters: list[_Waiter] = []
        self._deadline_thread: threading.Thread | None = None
        self._probe = _Probe()
        # The worker threads already bound how many connections open at once.
        self._connect_slots = contextlib.nullcontext()
        self._workers: BackgroundWorkers | None = None
        if open:
            self.open()

    # -- lifecycle ----------------------------------------------------------------------

    def open(self) -> None:
        """Start the background workers and begin opening ``min_size`` connections.

        Returns at once; use :meth:`wait` to block until they are open.
        """
        with self._lock:
            if self._forked:
                # Checked first: getconn relies on a forked pool staying closed.
                self._raise_if_closed()
            if self._opened:
                if self._closed:
                    raise PoolClosed(f"pool {self.name!r} was closed; create a new Pool")
                return
            self._opened = True
            self._closed = False
        # The threads hold the pool only weakly, between tasks, so that a pool dropped
        # without close() is collected (and __del__ stops them).
        ref = weakref.ref(self)
        self._workers = BackgroundWorkers(
            self.name, self.config.num_workers, functools.partial(_housekeep, ref)
        )
        self._workers.start()
        self._deadline_thread = threading.Thread(
            target=_keep_deadlines,
            args=(ref, self._lock, self._deadlines),
            name=f"poolkeeper-{self.name}-deadlines",
            daemon=True,
        )
        self._deadline_thread.start()
        with self._lock:
            self._grow_locked()

    def close(self, timeout: float = 5.0) -> None:
        """Stop lending, wait up to ``timeout`` for borrowed connections, close everything.

        Waiting callers get ``PoolClosed`` at once. Connections still borrowed when
        the deadline passes are closed under their borrowers.
        """
        timeout = check_call_timeout(timeout)
        with self._lock:
            if self._closed and not self._opened:
                return
            # _fail_waiters_locked leaves _CLOSED_MARK queued, in the same locked stretch
            # as the idle stack is taken: a return pushing after it finds the mark.
            idle = self._stop_lending_locked()
            self._spare_waiters.clear()
            self._deadlines.notify_all()
        self._close_all(idle)
        deadline = _monotonic() + timeout
        self._close_borrowed(deadline, timeout)
        self._probe.notify_all()
        if self._workers is not None:
            self._workers.stop(timeout=max(0.1, deadline - _monotonic()))
        thread = self._deadline_thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(max(0.1, deadline - _monotonic()))

    def _stop_after_drop(self, idle: list[ConnectionRecord]) -> None:
        if self._workers is not None:
            self._workers.signal_stop()
        _wake_deadline_keeper(cast(threading.Lock, self._lock), self._deadlines)
        for rec in idle:
            self._driver.close(rec.conn)

    def __enter__(self) -> Pool:
        if not self._opened:
            self.open()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- borrowing ----------------------------------------------------------------------

    # One long frame on purpose (the complexity rules are waived for it and putconn): a helper
    # call per contended borrow measured 0.25-0.5 % more instructions (see below and
    # docs/benchmarks.md).
    def getconn(self, timeout: float | None = None) -> ConnT:  # noqa: C901, PLR0912, PLR0915
        """Borrow a connection; wait up to ``timeout`` (default: the pool's) for one.

        Raises ``PoolTimeout``, ``TooManyWaiters``, ``ConnectionFailed`` (server known
        to be down) or ``PoolClosed``. Return it with :meth:`putconn`.
        """
        if timeout is not None:
            timeout = check_call_timeout(timeout)
        # Fast path: nobody queued, an idle connection at hand, no check due.
        rec: ConnectionRecord | None = None
        if not self._waiters:
            try:
                rec = self._idle.pop()
            except IndexError:
                pass
            else:
                # One compare: check_due folds check_after and "suspect" into a deadline.
                # The clock read is kept: putconn counts usage time from it.
                now = _monotonic()
                if now < rec.check_due:
                    next(self._borrow_ticks)
                    # Before it is in _lent, where the housekeeping thread looks for
                    # leaks: it must never see the previous borrow's time or stack.
                    rec.borrowed_at = now
                    if self._leak_threshold is not None:
                        rec.borrow_stack = "".join(traceback.format_stack(limit=16)[:-1])
                        rec.leak_reported = False
                    # Last, with no call after it: an interrupt before this line leaves
                    # the record astray, where housekeeping's audit finds it.
                    self._lent[rec.conn] = rec
                    return rec.conn  # type: ignore[no-any-return]  # the driver's connection: ConnT
        # The slow path, in this same frame. Under contention every borrow comes here,
        # and the woken waiter runs all of it while holding the GIL that the other
        # threads need: each call or attribute read left out is throughput
        # (docs/benchmarks.md counts them).
        start = _monotonic()
        limit = self._timeout if timeout is None else timeout
        deadline = start + limit
        waited = False
        spare_waiters = self._spare_waiters
        while True:
            if rec is None:
                # Made before taking the lock, to keep that short; needed unless an
                # idle connection turned up meanwhile. Its lock starts held, so that
                # acquiring it again sleeps until a returner (or a deadline) releases it.
                try:
                    waiter = spare_waiters.pop()
                except IndexError:
                    lock = _allocate_lock()
                    lock.acquire()
                    waiter = _new_object(_Waiter)
                    waiter.lock = lock
                    waiter.error = None
                waiter.rec = None
                waiter.deadline = deadline
                waiter.limit = limit
                with self._lock:
                    if self._closed:  # a pool inherited through fork() is closed too
                        self._raise_if_closed()
                    waiters = self._waiters
                    if not waiters and self._idle:
                        rec = self._idle.pop()
                    else:
                        if self._may_refuse and self._refuse_or_probe_due(_monotonic()):
                            self._probe.notify_all()
                        if limit <= 0:
                            raise self._no_connection_error(limit)
                        waiters.append(waiter)
                        # One thread keeps every deadline (see _keep_deadlines); it
                        # needs waking only for a deadline earlier than it sleeps for.
                        if deadline < self._watch_at:
                            self._watch_at = deadline
                            self._deadlines.notify()
                        # Written the waiter, now read the stack: see the module docstring.
                        if self._idle:
                            self._serve_waiters_locked()
                        if self._total < self._max_size:
                            self._grow_locked()
                if rec is None:
                    # No timeout here: a timed sleep arms a kernel timer on every wait,
                    # which showed in contended throughput; the deadline thread wakes
                    # us with PoolTimeout instead.
                    try:
                        waiter.lock.acquire()
                    except BaseException:
                        # Ctrl-C or another exception raised in this thread while it
                        # slept: leave the queue, and pass on anything handed over.
                        self._abandon(waiter)
                        raise
                    rec = waiter.rec
                    if rec is None:
                        assert waiter.error is not None
                        raise waiter.error
                    spare_waiters.append(waiter)
                    waited = True
                    if self._closed:
                        # Handed over just before close(): close() no longer sees it.
                        self._retire(rec, "pool closed")
                        self._raise_if_closed()
            now = _monotonic()
            # The fast path's one compare (lifetimes and drain() are enforced on return
            # and by housekeeping); _validate looks at everything once a check is due.
            if now < rec.check_due or self._validate(rec, now, deadline):
                # What the fast path books, inline: this runs on the woken waiter's
                # GIL time. A borrow that waited is counted once, as a wait. The same
                # lines close AsyncPool.getconn; keep the two in step (a shared
                # method measured 0.25-0.5 % more instructions per contended borrow).
                if waited:
                    self._stats_waits.add()
                    self._record_wait(now - start)
                    # Its borrower's alone now: no lock needed (see ConnectionRecord).
                    rec.waited += now - start
                else:
                    next(self._borrow_ticks)
                rec.borrowed_at = now
                if self._leak_threshold is not None:
                    rec.borrow_stack = "".join(traceback.format_stack(limit=16)[:-1])
                    rec.leak_reported = False
                self._lent[rec.conn] = rec  # last, as on the fast path
                return rec.conn  # type: ignore[no-any-return]  # the driver's connection: ConnT
            rec = None
            # Each failed check costs up to connect_timeout: never try past the deadline.
            if _monotonic() >= deadline:
                self._stats_timeouts.add()
                raise self._timeout_error(
                    f"pool {self.name!r}: no working connection within {limit:g}s "
                    "(the idle ones failed their check and replacements were not ready)",
                    "check the server and network, or raise timeout",
                )

    def _wait_figures(self) -> tuple[int, tuple[float, float, float]]:
        return self._stats_waits.value, self._wait_samples.percentiles()

    def _waits_since(self, cursor: int) -> tuple[int, list[float]]:
        # Counted, then sampled (getconn): a wait between those two steps on another
        # thread may stand in for an older one here. The count is exact.
        count = self._stats_waits.value
        return count, self._wait_samples.newest(count - cursor)

    def _abandon(self, waiter: _Waiter) -> None:
        """``waiter`` stops waiting: out of the queue, or, if a connection was handed
        to it meanwhile, that connection to the next caller instead of stranded."""
        self._stats_cancelled.add()
        with self._lock:
            if waiter.rec is None and waiter.error is None:
                self._waiters.remove(waiter)
                return
        if waiter.rec is not None:
            self._admit(waiter.rec, cold=False)

    def _expire_waiters_locked(self) -> float | None:
        """One turn of the deadline thread (``_keep_deadlines``): fail the overdue
        waiters; return how long to sleep (None: until woken)."""
        # Whatever goes wrong, the thread must go on: without it no borrow would ever
        # time out again.
        try:
            self._fail_overdue_locked()
        except Exception:
            _log.exception("pool %r: the deadline thread failed", self.name)
            self._watch_at = _monotonic() + 0.1
        at = self._watch_at
        if at == _NEVER:
            return None
        return min(max(0.0, at - _monotonic()), _MAX_SLEEP)

    def _fail_overdue_locked(self) -> None:
        waiters = self._waiters
        overdue, self._watch_at = overdue_waiters(waiters, _monotonic(), _deadline_of)
        for waiter in overdue:
            # Out of the queue first, so the message counts the others still waiting.
            remove_waiter(waiters, waiter)
            waiter.fail(self._no_connection_error(waiter.limit))

    def putconn(self, conn: ConnT) -> None:
        """Return a borrowed connection.

        An open transaction is rolled back; a broken or closed connection is
        discarded and replaced in the background; a connection whose session
        state may leak to the next borrower is reset (``reset="auto"``).
        """
        rec = self._lent.pop(conn, None)
        if rec is None:
            self._unknown_return(conn)
            return
        # One C-level read of (transaction status, session dirty) against "clean". Read
        # into a local first: CPython cannot specialize a method call on a slot.
        return_state = self._return_state
        # Most returns after a real query carry only a pending settings check: made
        # here, in memory, without the slow path's steps. (The state is read again for
        # it rather than kept: a local would cost the clean return a store and a load.)
        if (
            return_state(conn) != self._clean_state
            and (return_state(conn) != self._check_state or self._settings_changed(conn))
            and not self._clean_on_return(rec)
        ):
            return
        now = _monotonic()
        rec.usage += now - rec.borrowed_at
        # Each use time only once an exporter asked (PoolMetrics): until then one None
        # check. No local for the duration: the float add reuses the temporary in place.
        if self._record_use is not None:
            record_use = self._record_use  # set once, never unset; a local call specializes
            record_use(now - rec.borrowed_at)
        # close() and drain() both bump the generation, so one compare covers them.
        if rec.generation != self._generation or now >= rec.expires_at:
            self._retire(rec, "returned after close, drain(), resize() or max_lifetime")
            return
        # Returned is as good as checked: keepalives count from the later of the two.
        rec.last_used = now
        rec.check_due = now + self._check_after
        if self._waiters:
            # Hand-off, inline: under contention every return comes here.
            with self._lock:
                waiters = self._waiters
                if waiters and waiters[0] is not _CLOSED_MARK:
                    waiter = waiters.popleft()
                    # Assigned under the lock, woken after it: the wake-up is a syscall,
                    # and every other borrower would queue behind it. A waiter interrupted
                    # in between finds rec set and passes it on (_abandon).
                    waiter.rec = rec
                elif not waiters:
                    self._idle.append(rec)
                    return
                else:
                    waiter = _CLOSED_MARK
            if waiter is _CLOSED_MARK:
                # close() ran since the generation check above.
                self._retire(rec, "returned while the pool closed")
                return
            waiter.lock.release()
            return
        self._idle.append(rec)
        # Written the stack, now read the queue: see the module docstring.
        if self._waiters:
            self._serve_after_push()

    @contextlib.contextmanager
    def connection(self, timeout: float | None = None) -> Iterator[ConnT]:
        """Borrow a connection for a ``with`` block; it is returned on exit, even on error."""
        conn = _NOT_YET
        try:
            # Inside the try: an interrupt landing after the borrow still returns it.
            conn = self.getconn(timeout)
            yield conn
        except BaseException as exc:
            if conn is not _NOT_YET:
                if self._driver.is_disconnect(exc):
                    self._note_server_gone()
                elif self._driver.is_read_only_error(exc):
                    self._on_read_only_error(conn)
            raise
        finally:
            if conn is not _NOT_YET:
                self.putconn(conn)

    def _on_read_only_error(self, conn: Any) -> None:
        if self._is_failover(conn):
            self.drain()

    # -- maintenance API ----------------------------------------------------------------

    def check(self) -> None:
        """Run the pool's check (``check=``, else a ping) on every idle connection now;
        close the dead and open replacements.

        The checks run side by side, one thread each, so a server that stopped
        answering costs one ``connect_timeout`` however many connections are idle
        (as ``AsyncPool.check`` gathers its pings).
        """
        with self._lock:
            batch = list(self._idle)
            self._idle.clear()
        if not batch:
            return
        what = "pool.check()"
        helpers = [
            threading.Thread(
                target=self._keepalive, args=(rec, what), kwargs={"own_check": True}, daemon=True
            )
            for rec in batch[1:]
        ]
        for helper in helpers:
            helper.start()
        self._keepalive(batch[0], what, own_check=True)
        for helper in helpers:
            helper.join()

    # -- internals: accounting ----------------------------------------------------------

    def _serve_after_push(self) -> None:
        """putconn pushed a connection and then saw the queue non-empty: a waiter
        queued meanwhile, or the pool closed (retire what the push left there)."""
        with self._lock:
            stray = self._serve_waiters_locked()
        for rec in stray:
            self._retire(rec, "returned while the pool closed")

    def _serve_waiters_locked(self) -> list[ConnectionRecord]:
        """Hand idle connections to waiters. In a closed pool, take back and return
        what a return pushed onto the stack after close() emptied it (to retire)."""
        if self._closed:
            stray = list(self._idle)
            self._idle.clear()
            return stray
        while self._waiters and self._idle:
            self._waiters.popleft().give(self._idle.pop())
        return _NONE

    # -- the primitives the shared code (pool_base.py) relies on --------------------------

    def _bind(self) -> None:
        """Nothing to do: unlike an ``AsyncPool``, a ``Pool`` serves any thread."""

    def _grow_locked(self) -> None:
        if self._workers is None:
            return
        for _ in range(self._claim_open_slots()):
            self._workers.submit_open(self._open_one)

    def _hand_off_locked(self, rec: ConnectionRecord) -> bool:
        """Give ``rec`` to the first waiter; False if nobody waits."""
        if not self._waiters or self._closed:
            return False
        self._waiters.popleft().give(rec)
        return True

    def _fail_waiters_locked(self, error: Callable[[], PoolError]) -> None:
        """Fail every waiter, each with its own ``error()`` (it is raised in its own
        thread, with its own traceback). Under the lock: a waiter giving up at this
        moment must find itself either still queued or already told (see _abandon)."""
        waiters = self._waiters
        for waiter in waiters:
            if waiter is not _CLOSED_MARK:
                waiter.fail(error())
        waiters.clear()
        if self._closed:
            waiters.append(_CLOSED_MARK)

    def _close_later(self, rec: ConnectionRecord) -> None:
        workers = self._workers
        # A closing pool closes inline: its workers are about to stop.
        if workers is not None and not self._closed:
            workers.submit(lambda: self._close_rec(rec))
        else:
            self._close_rec(rec)

    def _close_conn_soon(self, conn: Any) -> None:
        self._driver.close(conn)

    def _close_all(self, records: list[ConnectionRecord]) -> None:
        for rec in records:
            self._close_rec(rec)

    def _keepalive_later(self, rec: ConnectionRecord) -> None:
        if self._workers is not None:
            self._workers.submit(lambda: self._keepalive(rec, "keepalive ping", own_check=False))

    def _call_hook(self, hook: Callable[[Any], object], conn: Any) -> Any:
        return hook(conn)

    # -- fork safety --------------------------------------------------------------------

    def _after_fork_in_child(self) -> None:
        """In a forked child: forget the parent's connections, threads and locks."""
        super()._after_fork_in_child()
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._deadlines = threading.Condition(self._lock)
        self._watch_at = _NEVER
        self._spare_waiters = []
        self._deadline_thread = None
        self._workers = None
        self._probe = _Probe()

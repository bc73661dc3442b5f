"""``AsyncPool``: the asyncio connection pool.

The sync :class:`~poolkeeper.Pool`'s design on one event loop, where every
stretch of code between two ``await``\\ s is atomic, so no lock is needed at all:

* Idle connections sit in a ``deque`` used as a stack; ``getconn`` pops one
  without awaiting anything unless a liveness check is due.
* A caller that finds none queues an ``asyncio.Future``; ``putconn`` hands a
  returned connection straight to the first live waiter, so waiters are served
  first come, first served and nobody jumps the queue. One timer serves the
  whole queue's deadlines (see ``_expire_waiters``), not one per wait.
* Opening, keepalive pings, retiring and closing run as background tasks on the
  pool's loop; the decisions about them come from ``policy.py``, shared with the
  sync pool.

Cancellation never loses a connection: a connection is always in exactly one of
the idle stack, the lent map, a waiter's future, or the hands of a coroutine
that puts it back (or retires it) in a ``finally``/``except BaseException``.

An ``AsyncPool`` belongs to the event loop it was opened in. Using it from another
loop raises :class:`~poolkeeper.errors.WrongEventLoop`; ``AsyncDatabase`` keeps one
pool per loop for code that runs under several.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import operator
import time
import traceback
from asyncio import Future as _Future
from asyncio import get_running_loop as _running_loop
from collections import deque
from collections.abc import AsyncIterator, Coroutine
from types import TracebackType
from typing import Any, ClassVar

from poolkeeper.config import PoolConfig
from poolkeeper.drivers import BROKEN, IN_TRANSACTION, AsyncDriver, load_async_driver
from poolkeeper.drivers.libpq_options import READ_ONLY_SQLSTATE
from poolkeeper.errors import (
    PoolClosed,
    PoolError,
    WrongEventLoop,
)
from poolkeeper.policy import Backoff
from poolkeeper.pool_core import PoolCore, overdue_waiters, remove_waiter
from poolkeeper.record import ConnectionRecord
from poolkeeper.redact import redact
from poolkeeper.stats import RING_MASK, WaitRing

__all__ = ["AsyncPool"]

_log = logging.getLogger("poolkeeper.pool")
_monotonic = time.monotonic

#: How long a pool whose event loop is shutting down waits for borrowed connections.
LOOP_SHUTDOWN_GRACE = 1.0

_NEVER = float("inf")

#: A queued caller: (its future, its deadline on the monotonic clock, its timeout).
_Waiter = tuple["asyncio.Future[ConnectionRecord]", float, float]
_deadline_of = operator.itemgetter(1)


class _Signal:
    """Wake every coroutine sleeping on it; like ``asyncio.Event`` but edge-triggered,
    with a timeout, and bound to no loop until someone waits."""

    __slots__ = ("_sleepers",)

    def __init__(self) -> None:
        self._sleepers: list[asyncio.Future[None]] = []

    def fire(self) -> None:
        """Wake everyone sleeping now."""
        if self._sleepers:
            sleepers, self._sleepers = self._sleepers, []
            for fut in sleepers:
                if not fut.done():
                    fut.set_result(None)

    async def wait(self, timeout: float) -> bool:
        """Sleep until the next :meth:`fire` or ``timeout`` seconds; True if fired."""
        fut: asyncio.Future[None] = _running_loop().create_future()
        self._sleepers.append(fut)
        try:
            done, _ = await asyncio.wait([fut], timeout=timeout)
            return bool(done)
        finally:
            if not fut.done():
                fut.cancel()
                with contextlib.suppress(ValueError):
                    self._sleepers.remove(fut)


class _Borrowed:
    """``async with pool.connection()``: a class, not a generator, to keep it cheap."""

    __slots__ = ("_conn", "_pool", "_timeout")

    def __init__(self, pool: AsyncPool, timeout: float | None) -> None:
        self._pool = pool
        self._timeout = timeout
        self._conn: Any = None

    async def __aenter__(self) -> Any:
        self._conn = await self._pool.getconn(self._timeout)
        return self._conn

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        pool = self._pool
        failover = False
        if exc is not None:
            if pool._driver.is_disconnect(exc):
                pool._note_server_gone()
            elif getattr(exc, "sqlstate", None) == READ_ONLY_SQLSTATE:
                failover = pool._is_failover(self._conn)
        await pool.putconn(self._conn)
        if failover:
            await pool.drain()


class AsyncPool(PoolCore):
    """An asyncio pool of PostgreSQL connections, bound to one event loop.

    ``AsyncPool(dsn=None, *, open=True, config=None, **settings)`` takes the same
    settings as :class:`~poolkeeper.Pool`. A constructor cannot await, so
    ``open=True`` starts the pool at once when called inside a running loop, and
    otherwise at its first use (``getconn``, ``wait``, ``async with``) in the loop
    that uses it. ``open=False`` waits for ``await pool.open()`` or
    ``async with pool``. The connection you get is the driver's own
    (``psycopg.AsyncConnection`` or ``asyncpg.Connection``).
    """

    __slots__ = (
        "_changed",
        "_connect_slots",
        "_deadline_timer",
        "_housekeeper",
        "_loop",
        "_openers",
        "_probe",
        "_tasks",
        "_timer_at",
        "_wait_ring",
    )

    _pool_class: ClassVar[str] = "AsyncPool"
    _facade_class: ClassVar[str] = "AsyncDatabase"
    _open_hint: ClassVar[str] = (
        "'await pool.open()' first, or use 'async with AsyncPool(...) as pool'"
    )

    def __init__(
        self,
        dsn: Any = None,
        *,
        open: bool = True,
        config: PoolConfig | None = None,
        **options: Any,
    ) -> None:
        config = self._resolve_config(dsn, config, options)
        self._driver: AsyncDriver[Any] = load_async_driver(config.driver)
        self._waiters: deque[_Waiter] = deque()
        # The queue's one deadline timer, and when it fires (inf: not armed).
        self._deadline_timer: asyncio.TimerHandle | None = None
        self._timer_at = _NEVER
        # Only the loop's thread borrows, so waits go into a ring by plain stores.
        self._wait_ring = WaitRing()
        self._setup_core(config, self._driver, open=open)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._probe = _Signal()
        self._changed = _Signal()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._openers: set[asyncio.Task[Any]] = set()
        self._housekeeper: asyncio.Task[None] | None = None
        self._connect_slots: asyncio.Semaphore | None = None
        if open:
            try:
                loop = _running_loop()
            except RuntimeError:
                return  # opened at first use, in whichever loop that is
            self._start(loop)

    # -- lifecycle ----------------------------------------------------------------------

    async def open(self) -> None:
        """Bind the pool to the running loop, start its background tasks and begin
        opening ``min_size`` connections. Returns at once; ``await pool.wait()`` to wait
        for them."""
        loop = _running_loop()
        if self._opened:
            if loop is not self._loop:
                raise self._wrong_loop_error()
            if self._closed:
                raise PoolClosed(f"pool {self.name!r} was closed; create a new AsyncPool")
            return
        if self._forked:
            self._raise_if_closed()
        self._start(loop)

    def _start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._opened = True
        self._closed = False
        self._connect_slots = asyncio.Semaphore(self.config.num_workers)
        self._housekeeper = loop.create_task(
            self._housekeeping_loop(), name=f"poolkeeper-{self.name}-housekeeping"
        )
        self._grow()

    def _bind(self) -> None:
        """Check (on the slow paths only) that we run in the pool's loop; start a pool
        made with ``open=True`` outside any loop."""
        loop = _running_loop()
        if loop is self._loop:
            return
        if self._loop is not None:
            raise self._wrong_loop_error()
        if self._closed or self._forked:
            self._raise_if_closed()
        self._start(loop)

    async def wait(self, timeout: float | None = None) -> None:
        """Wait until ``min_size`` connections are open, else raise ``PoolTimeout``.

        Like ``getconn``, it gives up early while the circuit breaker is open (the
        server is known unreachable); the last connect error is the ``__cause__``.
        """
        self._bind()
        limit = self.config.timeout if timeout is None else timeout
        start = _monotonic()
        deadline = start + limit
        while self._open_count() < self.config.min_size:
            self._raise_if_closed()
            now = _monotonic()
            if now >= deadline or self._breaker.is_open(now):
                raise self._wait_timeout_error(start, now)
            await self._changed.wait(min(deadline - now, 0.1))

    async def close(self, timeout: float = 5.0) -> None:
        """Stop lending, wait up to ``timeout`` for borrowed connections, close everything.

        Waiting callers get ``PoolClosed`` at once. Connections still borrowed when
        the deadline passes are closed under their borrowers. Also called for you
        when the pool's event loop shuts down (``asyncio.run`` returning).
        """
        if self._closed:
            return
        if self._loop is not None and _running_loop() is not self._loop:
            raise self._wrong_loop_error()
        self._closed = True
        self._opened = True
        # Connections still borrowed are retired when they come back.
        self._generation += 1
        waiters = list(self._waiters)
        self._waiters.clear()
        self._disarm_timer()
        for fut, _, _ in waiters:
            if not fut.done():
                fut.set_exception(PoolClosed(f"pool {self.name!r} was closed while waiting"))
        idle = list(self._idle)
        self._idle.clear()
        self._total -= len(idle)
        self._probe.fire()
        self._changed.fire()
        current = asyncio.current_task()
        if self._housekeeper is not None and self._housekeeper is not current:
            self._housekeeper.cancel()
        for task in list(self._openers):
            task.cancel()
        deadline = _monotonic() + timeout
        await asyncio.gather(*(self._close_rec(rec) for rec in idle))
        while self._lent:
            remaining = deadline - _monotonic()
            if remaining <= 0:
                break
            await self._changed.wait(remaining)
        stragglers = list(self._lent.values())
        self._lent.clear()
        if stragglers:
            _log.warning(
                "pool %r: closing %d connection(s) still borrowed after %gs",
                self.name,
                len(stragglers),
                timeout,
            )
            self._total -= len(stragglers)
            await asyncio.gather(*(self._close_rec(rec) for rec in stragglers))
        # Closers, keepalive pings and openers cancelled above: let them finish. Some
        # spawn a closer as they end (an opener that connected anyway), hence the loop.
        grace = _monotonic() + 1.0
        while pending := [task for task in self._tasks if task is not current]:
            remaining = max(deadline, grace) - _monotonic()
            if remaining <= 0:
                for task in pending:
                    task.cancel()
                await asyncio.wait(pending, timeout=1.0)
                break
            await asyncio.wait(pending, timeout=remaining)

    async def __aenter__(self) -> AsyncPool:
        if not self._opened:
            await self.open()
        else:
            self._bind()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # -- borrowing ----------------------------------------------------------------------

    async def getconn(self, timeout: float | None = None) -> Any:
        """Borrow a connection; wait up to ``timeout`` (default: the pool's) for one.

        Raises ``PoolTimeout``, ``TooManyWaiters``, ``ConnectionFailed`` (server known
        to be down), ``PoolClosed`` or ``WrongEventLoop``. Return it with
        :meth:`putconn`, or prefer ``async with pool.connection()``.
        """
        # Fast path: our loop, nobody queued, an idle connection at hand, no check due.
        rec: ConnectionRecord | None = None
        if not self._waiters and _running_loop() is self._loop:
            try:
                rec = self._idle.pop()
            except IndexError:
                pass
            else:
                # One compare: check_due folds check_after and "suspect" into a deadline.
                if _monotonic() < rec.check_due:
                    self._lent[rec.conn] = rec
                    next(self._borrow_ticks)
                    if self._leak_threshold is not None:
                        rec.borrowed_at = _monotonic()
                        rec.borrow_stack = "".join(traceback.format_stack(limit=16)[:-1])
                    return rec.conn
        elif _running_loop() is not self._loop:
            self._bind()
        # The slow path, in this same coroutine: under contention every borrow comes
        # here, and each coroutine frame more would cost a call and a resume per wait.
        start = _monotonic()
        limit = self._timeout if timeout is None else timeout
        deadline = start + limit
        waited = False
        while True:
            if rec is None:
                if self._closed:  # a pool inherited through fork() is closed too
                    self._raise_if_closed()
                waiters = self._waiters
                if not waiters and self._idle:
                    rec = self._idle.pop()
                else:
                    # Only a failing server or max_waiting can refuse a caller a place.
                    if self._may_refuse and self._may_queue(_monotonic()):
                        self._probe.fire()
                    # The Future class itself: loop.create_future() would add a frame.
                    waiter: asyncio.Future[ConnectionRecord] = _Future(loop=self._loop)
                    entry = (waiter, deadline, limit)
                    waiters.append(entry)
                    if self._idle:
                        self._serve_waiters()
                    if self._total < self._max_size:
                        self._grow()
                    # One timer for the whole queue (see _expire_waiters), re-armed only
                    # for a deadline earlier than the one it is set for.
                    if deadline < self._timer_at:
                        self._arm_timer(deadline)
                    try:
                        rec = await waiter
                    except BaseException:
                        if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                            # Handed a connection at the very moment we were cancelled:
                            # pass it on.
                            self._give_back(waiter.result())
                        else:
                            self._forget_waiter(entry)
                        raise
                    waited = True
                if self._closed:
                    # Handed over just before close(): close() no longer sees it, we must.
                    self._retire(rec, "pool closed")
                    self._raise_if_closed()
            now = _monotonic()
            # The fast path's one compare, as in Pool (lifetimes and drain() are enforced
            # on return and by housekeeping); _validate looks at everything once due.
            if now >= rec.check_due and not await self._validate(rec, now):
                rec = None
                continue
            # What the fast path books, inline, as Pool.getconn does (keep the two in
            # step). A borrow that waited is counted once, as a wait.
            self._lent[rec.conn] = rec
            if waited:
                ring = self._wait_ring
                count = ring.count
                ring.samples[count & RING_MASK] = now - start
                ring.count = count + 1
            else:
                next(self._borrow_ticks)
            if self._leak_threshold is not None:
                rec.borrowed_at = now
                rec.borrow_stack = "".join(traceback.format_stack(limit=16)[:-1])
            return rec.conn

    def _wait_figures(self) -> tuple[int, tuple[float, float, float]]:
        ring = self._wait_ring
        return ring.count, ring.percentiles()

    def _arm_timer(self, at: float) -> None:
        """Set the queue's one deadline timer to fire at ``at`` (monotonic seconds)."""
        if self._deadline_timer is not None:
            self._deadline_timer.cancel()
        loop = self._loop
        assert loop is not None
        self._timer_at = at
        self._deadline_timer = loop.call_later(max(0.0, at - _monotonic()), self._expire_waiters)

    def _expire_waiters(self) -> None:
        """The deadline timer fired: fail every waiter whose deadline has passed, in
        deadline order, and re-arm for the earliest deadline still ahead.

        Waiters join in order and nearly all use the pool's timeout, so their deadlines
        are nearly sorted: one timer does the work of one per wait (a TimerHandle, a
        heap push and a cancel each). It may fire for a waiter served meanwhile; then
        it only re-arms.
        """
        self._deadline_timer = None
        self._timer_at = _NEVER
        waiters = self._waiters
        if not waiters:
            return
        overdue, next_at = overdue_waiters(waiters, _monotonic(), _deadline_of)
        for entry in overdue:
            if entry[0].done():
                continue  # cancelled meanwhile: its own task takes it out
            # Out of the queue first, so the message counts the others still waiting.
            remove_waiter(waiters, entry)
            entry[0].set_exception(self._no_connection_error(entry[2]))
        if next_at < self._timer_at:
            self._arm_timer(next_at)

    def _disarm_timer(self) -> None:
        if self._deadline_timer is not None:
            self._deadline_timer.cancel()
            self._deadline_timer = None
        self._timer_at = _NEVER

    def _forget_waiter(self, entry: _Waiter) -> None:
        with contextlib.suppress(ValueError):
            self._waiters.remove(entry)

    async def _validate(self, rec: ConnectionRecord, now: float) -> bool:
        """Is ``rec`` fit to lend? If not, retire it (the caller tries again). Only
        called when a check is due."""
        if now >= rec.expires_at or rec.generation < self._generation:
            self._retire(rec, "reached max_lifetime" if now >= rec.expires_at else "drained")
            return False
        if now < rec.check_due:
            return True
        try:
            await self._run_check(rec.conn)
        except Exception as exc:
            self._stats_checks_failed.add()
            self._note_server_gone()
            self._retire(rec, f"failed its check ({redact(str(exc)) or type(exc).__name__})")
            return False
        except BaseException:
            # Cancelled mid-ping: the connection's protocol state is unknown.
            self._retire(rec, "its borrower was cancelled during the check")
            raise
        self._mark_good(rec, _monotonic())
        return True

    async def _run_check(self, conn: Any) -> None:
        check = self._user_check
        if check is None:
            await self._driver.ping(conn)
            return
        result = check(conn)
        if inspect.isawaitable(result):
            await result

    async def putconn(self, conn: Any) -> None:
        """Return a borrowed connection.

        An open transaction is rolled back; a broken or closed connection is
        discarded and replaced in the background; a connection whose session
        state may leak to the next borrower is reset (``reset="auto"``). If this
        is cancelled while cleaning, the connection is discarded, never lost.
        """
        rec = self._lent.pop(conn, None)
        if rec is None:
            if self._closed and self._opened:
                return  # close() already closed it under its borrower
            raise PoolError(
                f"pool {self.name!r} did not lend this connection (already returned, or "
                "from another pool); return each connection once, to the pool it came from"
            )
        if _running_loop() is not self._loop:
            self._lent[conn] = rec
            raise self._wrong_loop_error()
        # One C-level read of (transaction status, session dirty) against "clean". Read
        # into a local first: CPython cannot specialize a method call on a slot.
        return_state = self._return_state
        if return_state(conn) != self._clean_state and not await self._clean_on_return(rec):
            return
        now = _monotonic()
        # close() and drain() both bump the generation, so one compare covers them.
        if rec.generation != self._generation or now >= rec.expires_at:
            self._retire(rec, "returned after close, drain() or max_lifetime")
            return
        # Returned is as good as checked: keepalives count from the later of the two.
        rec.last_used = now
        rec.check_due = now + self._check_after
        # _hand_off, inlined: under contention every return hands its connection over.
        waiters = self._waiters
        while waiters:
            waiter = waiters.popleft()[0]
            if not waiter.done():
                waiter.set_result(rec)
                return
        self._idle.append(rec)

    async def _clean_on_return(self, rec: ConnectionRecord) -> bool:
        """Roll back and/or reset ``rec``; False if it had to be discarded instead."""
        conn = rec.conn
        status = self._status(conn)
        if status == BROKEN:
            self._note_server_gone()
            self._retire(rec, "returned broken or closed")
            return False
        try:
            if status == IN_TRANSACTION:
                self._stats_rollbacks.add()
                await self._driver.rollback(conn)
            if self._needs_reset(conn):
                self._stats_resets.add()
                await self._driver.reset_session(conn)
                if self.config.configure is not None:
                    await self._run_configure(conn)
        except Exception as exc:
            if self._driver.is_disconnect(exc):
                self._note_server_gone()
            self._retire(rec, f"could not be cleaned on return ({redact(str(exc))})")
            return False
        except BaseException:
            # Cancelled mid-rollback: the session's state is unknown, so it cannot be
            # lent again, but it must still leave the books.
            self._retire(rec, "cancelled while being cleaned on return")
            raise
        return True

    def connection(self, timeout: float | None = None) -> _Borrowed:
        """``async with pool.connection() as conn``: borrowed on entry, returned on exit,
        even on error or cancellation."""
        return _Borrowed(self, timeout)

    @contextlib.asynccontextmanager
    async def transaction(self, timeout: float | None = None) -> AsyncIterator[Any]:
        """Borrow a connection inside BEGIN … COMMIT (ROLLBACK if the block raises)."""
        async with self.connection(timeout) as conn, self._driver.transaction(conn):
            yield conn

    # -- maintenance API ----------------------------------------------------------------

    async def resize(self, min_size: int, max_size: int) -> None:
        """Change the bounds at run time; growth starts now, shrinking as connections idle."""
        self._bind()
        surplus = self._resize_surplus(min_size, max_size)
        self._grow()
        for rec in surplus:
            self._retire(rec, "pool resized")

    async def check(self) -> None:
        """Ping every idle connection now; close the dead and open replacements."""
        self._bind()
        batch = list(self._idle)
        self._idle.clear()
        await asyncio.gather(*(self._keepalive(rec, "pool.check()") for rec in batch))

    async def drain(self) -> None:
        """Replace every connection: idle ones now, borrowed ones when they come back.

        Use after rotating credentials, ``CREATE EXTENSION`` or a failover.
        """
        self._bind()
        for rec in self._drain_idle():
            self._retire(rec, "drained")

    # -- internals: accounting ----------------------------------------------------------

    def _wrong_loop_error(self) -> WrongEventLoop:
        gone = " (that loop is closed now)" if self._loop and self._loop.is_closed() else ""
        return WrongEventLoop(
            f"pool {self.name!r} was opened in another event loop{gone}, and its connections "
            "can only be used there; create the AsyncPool inside the loop that uses it (in "
            "your app's lifespan or the coroutine given to asyncio.run), one per loop, or use "
            "poolkeeper.AsyncDatabase(), which keeps one pool per event loop for you"
        )

    def _hand_off(self, rec: ConnectionRecord) -> bool:
        """Give ``rec`` to the first waiter still waiting; False if there is none."""
        waiters = self._waiters
        while waiters:
            waiter = waiters.popleft()[0]
            if not waiter.done():
                waiter.set_result(rec)
                return True
        return False

    def _serve_waiters(self) -> None:
        while self._waiters and self._idle:
            rec = self._idle.pop()
            if not self._hand_off(rec):
                self._idle.append(rec)

    def _give_back(self, rec: ConnectionRecord) -> None:
        """Put a good record back: to the first waiter, else onto the hot end."""
        if self._closed:
            self._retire(rec, "pool closed")
        elif not self._hand_off(rec):
            self._idle.append(rec)

    def _give_back_idle(self, rec: ConnectionRecord) -> None:
        """Return a pinged record: to the first waiter, else to the cold end."""
        if self._closed:
            self._retire(rec, "pool closed")
            return
        if not self._hand_off(rec):
            self._idle.appendleft(rec)
        self._changed.fire()

    def _spawn(self, coro: Coroutine[Any, Any, Any], name: str | None = None) -> asyncio.Task[Any]:
        loop = self._loop
        assert loop is not None
        task = loop.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _grow(self) -> None:
        if self._loop is None:
            return
        for _ in range(self._claim_open_slots()):
            task = self._spawn(self._open_one(), f"poolkeeper-{self.name}-connect")
            self._openers.add(task)
            task.add_done_callback(self._openers.discard)

    def _retire(self, rec: ConnectionRecord, why: str) -> None:
        """Drop ``rec`` from the pool (it is neither idle nor lent now), close it in
        the background, and open a replacement if the pool needs one."""
        _log.debug("pool %r: closing connection to backend %d: %s", self.name, rec.backend_pid, why)
        self._total -= 1
        self._grow()
        self._changed.fire()
        self._spawn(self._close_rec(rec))

    async def _close_conn(self, conn: Any) -> None:
        await self._driver.close(conn)

    async def _close_rec(self, rec: ConnectionRecord) -> None:
        await self._driver.close(rec.conn)
        self._stats_closed.add()

    # -- internals: background work -----------------------------------------------------

    async def _run_configure(self, conn: Any) -> None:
        configure = self.config.configure
        if configure is None:
            return
        result = configure(conn)
        if inspect.isawaitable(result):
            await result
        self._after_configure(conn)

    async def _connect_new(self) -> ConnectionRecord:
        conn = await self._driver.connect(self.config.connect_spec())
        if not self._identity_ok(conn):
            await self._driver.close(conn)
            raise TypeError(f"{type(conn).__name__} overrides __eq__; the pool needs identity")
        try:
            await self._run_configure(conn)
        except Exception as exc:
            await self._driver.close(conn)
            raise self._configure_failed(exc) from exc
        except BaseException:
            self._spawn(self._close_conn(conn))
            raise
        return self._new_record(conn)

    async def _open_one(self) -> None:
        """Open one connection (the slot is already counted), retrying with back-off."""
        backoff = Backoff()
        give_up_at = _monotonic() + self.config.reconnect_timeout
        slots = self._connect_slots
        assert slots is not None
        opened = False
        try:
            while not self._closed:
                try:
                    async with slots:
                        self._breaker.attempt(_monotonic())
                        rec = await self._connect_new()
                except Exception as exc:
                    self._on_connect_failure(exc)
                    if _monotonic() >= give_up_at:
                        self._log_give_up()
                        break
                    # Try again no later than the moment the breaker may open, so callers
                    # queued meanwhile learn at once that the server is down.
                    delay = min(backoff.next_delay(), self._breaker.opens_in(_monotonic()))
                    await self._probe.wait(delay)
                    continue
                opened = True
                self._on_connect_success(rec)
                return
        finally:
            if not opened:
                self._total -= 1
                self._opening -= 1
                self._changed.fire()

    def _on_connect_failure(self, exc: BaseException) -> None:
        self._record_connect_failure(exc)
        now = _monotonic()
        self._record_breaker_failure(now)
        if not self._breaker.is_open(now):
            return
        waiters = list(self._waiters)
        self._waiters.clear()
        for waiter, _, _ in waiters:
            if not waiter.done():
                waiter.set_exception(self._breaker_error())

    def _on_connect_success(self, rec: ConnectionRecord) -> None:
        if self._record_connect_success(rec):
            # The server is back: wake the other reconnect loops from their back-off.
            self._probe.fire()
        self._opening -= 1
        if self._closed:
            self._total -= 1
            self._spawn(self._close_rec(rec))
        elif not self._hand_off(rec):
            self._idle.append(rec)
        self._changed.fire()

    async def _housekeeping_loop(self) -> None:
        try:
            while True:
                try:
                    delay = self._housekeeping()
                except Exception:
                    _log.exception("poolkeeper %s: housekeeping failed", self.name)
                    delay = 1.0
                await asyncio.sleep(delay)
        except asyncio.CancelledError:
            if not self._closed:
                # Cancelled by someone else than close(): the loop is shutting down
                # (asyncio.run, pytest-asyncio and uvicorn cancel every task), so close
                # the connections while the loop can still run their goodbyes.
                await self.close(timeout=LOOP_SHUTDOWN_GRACE)
            raise

    def _housekeeping(self) -> float:
        """One periodic pass; returns the seconds until the next."""
        now = _monotonic()
        retire, ping = self._plan_housekeeping(now)
        for rec in retire:
            self._retire(rec, "housekeeping: lifetime or max_idle reached")
        for rec in ping:
            self._spawn(self._keepalive(rec, "keepalive ping"))
        self._grow()
        if self._leak_threshold is not None:
            self._report_leaks(now)
        return self._housekeeping_delay()

    async def _keepalive(self, rec: ConnectionRecord, what: str) -> None:
        try:
            await self._driver.ping(rec.conn)
        except Exception as exc:
            self._stats_checks_failed.add()
            self._note_server_gone()
            self._retire(rec, f"failed its {what} ({redact(str(exc))})")
            return
        except BaseException:
            self._retire(rec, f"cancelled during its {what}")
            raise
        self._mark_good(rec, _monotonic())
        self._give_back_idle(rec)

    # -- fork safety --------------------------------------------------------------------

    def _after_fork_in_child(self) -> None:
        """In a forked child: forget the parent's connections, tasks and loop."""
        super()._after_fork_in_child()
        self._tasks = set()
        self._openers = set()
        self._housekeeper = None
        # The parent's loop and its timer are not ours.
        self._deadline_timer = None
        self._timer_at = _NEVER

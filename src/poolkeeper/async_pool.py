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
import weakref
from asyncio import Future as _Future
from asyncio import get_running_loop as _running_loop
from collections import deque
from collections.abc import Callable, Coroutine
from types import TracebackType
from typing import TYPE_CHECKING, Any, ClassVar, Literal, overload

from poolkeeper.async_pool_base import AsyncPoolBase
from poolkeeper.config import PoolConfig, check_call_timeout
from poolkeeper.drivers import AsyncDriver, load_async_driver
from poolkeeper.errors import (
    PoolClosed,
    PoolError,
    WrongEventLoop,
)
from poolkeeper.pool_core import ConnT
from poolkeeper.record import ConnectionRecord
from poolkeeper.stats import RING_MASK, WaitRing
from poolkeeper.waiters import overdue_waiters, remove_waiter

if TYPE_CHECKING:
    from contextlib import AbstractAsyncContextManager

    from poolkeeper.drivers.connections import AsyncpgConnection, PsycopgAsyncConnection

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

    def notify_all(self) -> None:
        """Wake everyone sleeping now."""
        if self._sleepers:
            sleepers, self._sleepers = self._sleepers, []
            for fut in sleepers:
                if not fut.done():
                    fut.set_result(None)

    async def wait(self, timeout: float) -> bool:
        """Sleep until the next :meth:`notify_all` or ``timeout`` seconds; True if woken."""
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
            elif pool._driver.is_read_only_error(exc):
                failover = pool._is_failover(self._conn)
        await pool.putconn(self._conn)
        if failover:
            await pool.drain()


async def _housekeep(ref: weakref.ref[AsyncPool[Any]]) -> None:
    """The housekeeping task; it holds the pool only while awake."""
    try:
        while True:
            pool = ref()
            if pool is None:
                return
            try:
                delay = pool._housekeeping()
            except Exception:
                _log.exception("poolkeeper %s: housekeeping failed", pool.name)
                delay = 1.0
            del pool
            await asyncio.sleep(delay)
    except asyncio.CancelledError:
        pool = ref()
        if pool is not None and not pool._closed:
            # Cancelled by someone else than close(): the loop is shutting down
            # (asyncio.run, pytest-asyncio and uvicorn cancel every task), so close
            # the connections while the loop can still run their goodbyes.
            await pool.close(timeout=LOOP_SHUTDOWN_GRACE)
        raise


def _expire_waiters_of(ref: weakref.ref[AsyncPool[Any]]) -> None:
    """The deadline timer's callback, holding the pool weakly (the timer may be set
    for a waiter long served)."""
    pool = ref()
    if pool is not None:
        pool._expire_waiters()


#: Closers started for pools that were collected unclosed, kept until they finish.
_orphan_closers: set[asyncio.Task[Any]] = set()


def _close_orphans(driver: AsyncDriver[Any], conns: list[Any], leftovers: list[Any]) -> None:
    """On the loop of a pool collected unclosed: stop what it left scheduled, close
    its idle connections."""
    for handle in leftovers:
        if handle is not None:
            handle.cancel()

    async def close_all() -> None:
        await asyncio.gather(*(driver.close(conn) for conn in conns), return_exceptions=True)

    task = _running_loop().create_task(close_all())
    _orphan_closers.add(task)
    task.add_done_callback(_orphan_closers.discard)


class AsyncPool(AsyncPoolBase[ConnT]):
    """An asyncio pool of PostgreSQL connections, bound to one event loop.

    ``AsyncPool(dsn=None, *, open=True, config=None, **settings)`` takes the same
    settings as :class:`~poolkeeper.Pool`. A constructor cannot await, so
    ``open=True`` starts the pool at once when called inside a running loop, and
    otherwise at its first use (``getconn``, ``wait``, ``async with``) in the loop
    that uses it. ``open=False`` waits for ``await pool.open()`` or
    ``async with pool``. The connection you get is the driver's own
    (``psycopg.AsyncConnection`` or ``asyncpg.Connection``), and type checkers see
    which: ``AsyncPool(dsn)`` is an ``AsyncPool[psycopg.AsyncConnection[Any]]``,
    ``AsyncPool(dsn, driver="asyncpg")`` an ``AsyncPool[asyncpg.Connection]``.
    """

    __slots__ = (
        "_changed",
        "_connect_slots",
        "_deadline_timer",
        "_housekeeper",
        "_loop",
        "_openers",
        "_probe",
        "_self_ref",
        "_tasks",
        "_timer_at",
        "_wait_ring",
    )

    _pool_class: ClassVar[str] = "AsyncPool"
    _facade_class: ClassVar[str] = "AsyncDatabase"
    _close_hint: ClassVar[str] = (
        "call 'await pool.close()' or use 'async with AsyncPool(...) as pool'"
    )
    _open_hint: ClassVar[str] = (
        "'await pool.open()' first, or use 'async with AsyncPool(...) as pool'"
    )
    #: The shared code's lock: a no-op, as every stretch between two awaits is atomic.
    _lock: contextlib.nullcontext[None] = contextlib.nullcontext()

    @overload
    def __init__(
        self: AsyncPool[PsycopgAsyncConnection],
        dsn: Any = None,
        *,
        open: bool = True,
        config: None = None,
        driver: Literal["psycopg"] = "psycopg",
        **options: Any,
    ) -> None: ...
    @overload
    def __init__(
        self: AsyncPool[AsyncpgConnection],
        dsn: Any = None,
        *,
        open: bool = True,
        config: None = None,
        driver: Literal["asyncpg"],
        **options: Any,
    ) -> None: ...
    @overload
    def __init__(
        self: AsyncPool[Any],
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
        # What the loop's callbacks and the housekeeping task hold: a pool dropped
        # without close() is then collected (see __del__).
        self._self_ref = weakref.ref(self)
        # How many connections open at once (the sync pool: its worker threads).
        self._connect_slots = asyncio.Semaphore(config.num_workers)
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
        if self._forked:
            # Checked first, as in Pool.open: the parent's loop is not the problem.
            self._raise_if_closed()
        if self._opened:
            if loop is not self._loop:
                raise self._wrong_loop_error()
            if self._closed:
                raise PoolClosed(f"pool {self.name!r} was closed; create a new AsyncPool")
            return
        self._start(loop)

    def _start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._opened = True
        self._closed = False
        self._housekeeper = loop.create_task(
            _housekeep(self._self_ref), name=f"poolkeeper-{self.name}-housekeeping"
        )
        self._grow_locked()

    def _bind(self) -> None:
        """Check (on the slow paths only) that we run in the pool's loop; start a pool
        made with ``open=True`` outside any loop."""
        loop = _running_loop()
        if loop is self._loop:
            return
        if self._forked:
            # A pool inherited through fork() is closed, whichever loop the child runs.
            self._raise_if_closed()
        if self._loop is not None:
            raise self._wrong_loop_error()
        if self._closed:
            self._raise_if_closed()
        self._start(loop)

    async def close(self, timeout: float = 5.0) -> None:
        """Stop lending, wait up to ``timeout`` for borrowed connections, close everything.

        Waiting callers get ``PoolClosed`` at once. Connections still borrowed when
        the deadline passes are closed under their borrowers. Also called for you
        when the pool's event loop shuts down (``asyncio.run`` returning).
        """
        timeout = check_call_timeout(timeout)
        if self._closed:
            return
        if self._loop is not None and _running_loop() is not self._loop:
            raise self._wrong_loop_error()
        self._disarm_timer()
        idle = self._stop_lending_locked()
        self._probe.notify_all()
        current = asyncio.current_task()
        if self._housekeeper is not None and self._housekeeper is not current:
            self._housekeeper.cancel()
        for task in list(self._openers):
            task.cancel()
        deadline = _monotonic() + timeout
        await self._close_all(idle)
        await self._close_borrowed(deadline, timeout)
        await self._let_tasks_finish(deadline, current)

    async def _let_tasks_finish(self, deadline: float, current: asyncio.Task[Any] | None) -> None:
        """Closers, keepalive pings and openers (cancelled by close()): let them end,
        until ``deadline`` or for a second's grace, then cancel what is left."""
        # Some spawn a closer as they end (an opener that connected anyway): a loop.
        grace = _monotonic() + 1.0
        while pending := [task for task in self._tasks if task is not current]:
            remaining = max(deadline, grace) - _monotonic()
            if remaining <= 0:
                for task in pending:
                    task.cancel()
                await asyncio.wait(pending, timeout=1.0)
                break
            await asyncio.wait(pending, timeout=remaining)

    def _stop_after_drop(self, idle: list[ConnectionRecord]) -> None:
        loop = self._loop
        # Otherwise the connections close as they are collected.
        if loop is not None and not loop.is_closed():
            leftovers = [self._housekeeper, self._deadline_timer]
            conns = [rec.conn for rec in idle]
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(_close_orphans, self._driver, conns, leftovers)

    async def __aenter__(self) -> AsyncPool:
        if not self._opened:
            await self.open()
        else:
            self._bind()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # -- borrowing ----------------------------------------------------------------------

    # One long coroutine on purpose (the complexity rules are waived for it alone): each
    # coroutine frame more costs a call and a resume per contended borrow (see below and
    # docs/benchmarks.md).
    async def getconn(self, timeout: float | None = None) -> ConnT:  # noqa: C901, PLR0912, PLR0915
        """Borrow a connection; wait up to ``timeout`` (default: the pool's) for one.

        Raises ``PoolTimeout``, ``TooManyWaiters``, ``ConnectionFailed`` (server known
        to be down), ``PoolClosed`` or ``WrongEventLoop``. Return it with
        :meth:`putconn`, or prefer ``async with pool.connection()``.
        """
        if timeout is not None:
            timeout = check_call_timeout(timeout)
        # Fast path: our loop, nobody queued, an idle connection at hand, no check due.
        rec: ConnectionRecord | None = None
        if not self._waiters and _running_loop() is self._loop:
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
                    rec.borrowed_at = now
                    if self._leak_threshold is not None:
                        rec.borrow_stack = "".join(traceback.format_stack(limit=16)[:-1])
                        rec.leak_reported = False
                    # Last, with no call after it (see Pool.getconn).
                    self._lent[rec.conn] = rec
                    return rec.conn  # type: ignore[no-any-return]  # the driver's connection: ConnT
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
                    if self._may_refuse and self._refuse_or_probe_due(_monotonic()):
                        self._probe.notify_all()
                    # The Future class itself: loop.create_future() would add a frame.
                    waiter: asyncio.Future[ConnectionRecord] = _Future(loop=self._loop)
                    entry = (waiter, deadline, limit)
                    waiters.append(entry)
                    if self._idle:
                        self._serve_waiters()
                    if self._total < self._max_size:
                        self._grow_locked()
                    # One timer for the whole queue (see _expire_waiters), re-armed only
                    # for a deadline earlier than the one it is set for.
                    if deadline < self._timer_at:
                        self._arm_timer(deadline)
                    try:
                        rec = await waiter
                    except BaseException as exc:
                        if not isinstance(exc, PoolError):
                            # Cancelled or interrupted: a timeout, a close() or the
                            # breaker failing the waiter is counted as what it is.
                            self._stats_cancelled.add()
                        if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                            # Handed a connection at the very moment we were cancelled:
                            # pass it on.
                            self._admit(waiter.result(), cold=False)
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
            if now >= rec.check_due and not await self._validate(rec, now, deadline):
                rec = None
                # Each failed check costs up to connect_timeout: never try past the deadline.
                if _monotonic() >= deadline:
                    self._stats_timeouts.add()
                    raise self._timeout_error(
                        f"pool {self.name!r}: no working connection within {limit:g}s "
                        "(the idle ones failed their check and replacements were not ready)",
                        "check the server and network, or raise timeout",
                    )
                continue
            # What the fast path books, inline, as Pool.getconn does (keep the two in
            # step). A borrow that waited is counted once, as a wait.
            if waited:
                ring = self._wait_ring
                count = ring.count
                wait = now - start
                ring.samples[count & RING_MASK] = wait
                ring.count = count + 1
                rec.waited += wait
            else:
                next(self._borrow_ticks)
            rec.borrowed_at = now
            if self._leak_threshold is not None:
                rec.borrow_stack = "".join(traceback.format_stack(limit=16)[:-1])
                rec.leak_reported = False
            self._lent[rec.conn] = rec  # last, as on the fast path
            return rec.conn  # type: ignore[no-any-return]  # the driver's connection: ConnT

    def _wait_figures(self) -> tuple[int, tuple[float, float, float]]:
        ring = self._wait_ring
        return ring.count, ring.percentiles()

    def _waits_since(self, cursor: int) -> tuple[int, list[float]]:
        return self._wait_ring.since(cursor)

    def _arm_timer(self, at: float) -> None:
        """Set the queue's one deadline timer to fire at ``at`` (monotonic seconds)."""
        if self._deadline_timer is not None:
            self._deadline_timer.cancel()
        loop = self._loop
        assert loop is not None
        self._timer_at = at
        self._deadline_timer = loop.call_later(
            max(0.0, at - _monotonic()), _expire_waiters_of, self._self_ref
        )

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

    async def putconn(self, conn: ConnT) -> None:
        """Return a borrowed connection.

        An open transaction is rolled back; a broken or closed connection is
        discarded and replaced in the background; a connection whose session
        state may leak to the next borrower is reset (``reset="auto"``). If this
        is cancelled while cleaning, the connection is discarded, never lost.
        """
        rec = self._lent.pop(conn, None)
        if rec is None:
            self._unknown_return(conn)
            return
        if _running_loop() is not self._loop:
            self._lent[conn] = rec
            raise self._wrong_loop_error()
        # One C-level read of (transaction status, session dirty) against "clean". Read
        # into a local first: CPython cannot specialize a method call on a slot.
        return_state = self._return_state
        # Most returns after a real query carry only a pending settings check: made
        # here, in memory, without the slow path's steps. (The state is read again for
        # it rather than kept: a local would cost the clean return a store and a load.)
        if (
            return_state(conn) != self._clean_state
            and (return_state(conn) != self._check_state or self._settings_changed(conn))
            and not await self._clean_on_return(rec)
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
        # _hand_off_locked, inlined: under contention every return hands its connection over.
        waiters = self._waiters
        while waiters:
            waiter = waiters.popleft()[0]
            if not waiter.done():
                waiter.set_result(rec)
                return
        self._idle.append(rec)

    def connection(self, timeout: float | None = None) -> AbstractAsyncContextManager[ConnT]:
        """``async with pool.connection() as conn``: borrowed on entry, returned on exit,
        even on error or cancellation."""
        return _Borrowed(self, timeout)

    # -- maintenance API ----------------------------------------------------------------

    async def check(self) -> None:
        """Run the pool's check (``check=``, else a ping) on every idle connection now,
        side by side; close the dead and open replacements."""
        self._bind()
        batch = list(self._idle)
        self._idle.clear()
        await asyncio.gather(
            *(self._keepalive(rec, "pool.check()", own_check=True) for rec in batch)
        )

    # -- internals: accounting ----------------------------------------------------------

    def _wrong_loop_error(self) -> WrongEventLoop:
        gone = " (that loop is closed now)" if self._loop and self._loop.is_closed() else ""
        return WrongEventLoop(
            f"pool {self.name!r} was opened in another event loop{gone}, and its connections "
            "can only be used there; create the AsyncPool inside the loop that uses it (in "
            "your app's lifespan or the coroutine given to asyncio.run), one per loop, or use "
            "poolkeeper.AsyncDatabase(), which keeps one pool per event loop for you"
        )

    def _hand_off_locked(self, rec: ConnectionRecord) -> bool:
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
            if not self._hand_off_locked(rec):
                self._idle.append(rec)

    def _spawn(self, coro: Coroutine[Any, Any, Any], name: str | None = None) -> asyncio.Task[Any]:
        loop = self._loop
        assert loop is not None
        task = loop.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _grow_locked(self) -> None:
        if self._loop is None:
            return
        for _ in range(self._claim_open_slots()):
            task = self._spawn(self._open_one(), f"poolkeeper-{self.name}-connect")
            self._openers.add(task)
            task.add_done_callback(self._openers.discard)

    async def _close_conn(self, conn: Any) -> None:
        await self._driver.close(conn)

    # -- the primitives the shared code (async_pool_base.py) relies on ------------------

    def _fail_waiters_locked(self, error: Callable[[], PoolError]) -> None:
        """Fail every waiter still waiting, each with its own ``error()``."""
        waiters = list(self._waiters)
        self._waiters.clear()
        for waiter, _, _ in waiters:
            if not waiter.done():
                waiter.set_exception(error())

    def _close_later(self, rec: ConnectionRecord) -> None:
        self._spawn(self._close_rec(rec))

    def _close_conn_soon(self, conn: Any) -> None:
        # Cancelled while opening: the task cannot await the goodbye itself.
        self._spawn(self._close_conn(conn))

    async def _close_all(self, records: list[ConnectionRecord]) -> None:
        await asyncio.gather(*(self._close_rec(rec) for rec in records))

    def _keepalive_later(self, rec: ConnectionRecord) -> None:
        self._spawn(self._keepalive(rec, "keepalive ping", own_check=False))

    async def _call_hook(self, hook: Callable[[Any], object], conn: Any) -> Any:
        """Call the user's ``configure=``/``check=`` (or a ``dsn``/``connect_kwargs``
        callable), awaiting what it returns if needed; return the result."""
        result = hook(conn)
        if inspect.isawaitable(result):
            result = await result
        return result

    # -- internals: background work -----------------------------------------------------

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

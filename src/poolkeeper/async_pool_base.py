"""``AsyncPoolBase``: everything off the hot path that both pools do, written once.

This is the source of ``pool_base.py``: ``tools/gen_sync.py`` drops ``async`` and
``await`` (and renames the few async-only names) to write the sync ``PoolBase``
from it, and a test fails if the two files disagree. Edit this file, then run
``make generate``.

The code here must read the same under both concurrency models, so it uses only
primitives each shell provides under the same name:

* ``self._lock``: the pool lock (a ``threading.Lock``), or a no-op context in the
  asyncio pool, where every stretch between two awaits is atomic;
* ``self._changed`` / ``self._probe``: ``notify_all()`` wakes whoever sleeps in
  ``wait(timeout)`` (a ``Condition`` and an ``Event`` wrapper; two ``_Signal``\\ s);
* ``self._bind()``: tie the pool to the running event loop (nothing, for threads);
* ``_grow_locked``, ``_hand_off_locked``, ``_fail_waiters_locked``: start openers,
  serve the first waiter, fail every waiter, with the lock held;
* ``_close_later``, ``_close_conn_soon``, ``_keepalive_later``: work handed to the
  background (a worker thread, or a task); ``_close_all``: close several now (one
  after the other, or side by side);
* ``_call_hook``: call the user's ``check=``/``configure=`` callable (the asyncio
  pool also awaits what it returns), and return its result.

``getconn`` and ``putconn`` stay in the shells, each written for its own model
(docs/design.md says why).
"""

from __future__ import annotations

import contextlib
import logging
import time
import weakref
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, AbstractContextManager
from typing import TYPE_CHECKING, Any, Generic, Protocol

from poolkeeper.config import check_call_timeout
from poolkeeper.drivers import BROKEN, IDLE, IN_TRANSACTION, AsyncDriver, ConnectSpec
from poolkeeper.errors import ConfigurationError, PoolClosed, PoolError
from poolkeeper.policy import Backoff
from poolkeeper.pool_core import ConnT, PoolCore
from poolkeeper.record import ConnectionRecord
from poolkeeper.redact import redact

__all__ = ["AsyncPoolBase"]

_log = logging.getLogger("poolkeeper.pool")
_monotonic = time.monotonic
_NEVER = float("inf")


def _call(factory: Callable[[], object]) -> object:
    return factory()


class _Wakeable(Protocol):
    """What the shells' ``_changed`` and ``_probe`` offer the shared code."""

    def notify_all(self) -> None:
        """Wake everyone sleeping in :meth:`wait` now."""

    async def wait(self, timeout: float) -> object:
        """Sleep until woken or ``timeout`` seconds pass."""


class AsyncPoolBase(PoolCore, Generic[ConnT]):
    """What both pools do off the hot path; each shell subclasses it (see the module)."""

    __slots__ = ()

    if TYPE_CHECKING:
        _driver: AsyncDriver[Any]
        _lock: AbstractContextManager[Any]
        _changed: _Wakeable
        _probe: _Wakeable
        _connect_slots: AbstractAsyncContextManager[Any]

        def _bind(self) -> None: ...
        def _grow_locked(self) -> None: ...
        def _hand_off_locked(self, rec: ConnectionRecord) -> bool: ...
        def _fail_waiters_locked(self, error: Callable[[], PoolError]) -> None: ...
        def _close_later(self, rec: ConnectionRecord) -> None: ...
        async def _close_all(self, records: list[ConnectionRecord]) -> None: ...
        def _close_conn_soon(self, conn: Any) -> None: ...
        def _keepalive_later(self, rec: ConnectionRecord) -> None: ...
        async def _call_hook(self, hook: Callable[[Any], object], conn: Any) -> Any: ...
        def connection(self, timeout: float | None = None) -> AbstractAsyncContextManager[ConnT]:
            """See the shells."""

    # -- public ---------------------------------------------------------------------------

    async def wait(self, timeout: float | None = None) -> None:
        """Wait until ``min_size`` connections are open, else raise ``PoolTimeout``.

        Unlike ``getconn``, it does not fail fast while the circuit breaker is open:
        waiting is what it is for, so an application that starts before its database
        can wait the database out. It lets a reconnect attempt through every
        ``probe_interval`` until the deadline; on timeout the last connect error is
        the ``__cause__``.
        """
        self._bind()
        limit = self.config.timeout if timeout is None else check_call_timeout(timeout)
        start = _monotonic()
        deadline = start + limit
        with self._lock:
            while self._open_count() < self.config.min_size:
                self._raise_if_closed()
                now = _monotonic()
                if now >= deadline:
                    raise self._wait_timeout_error(start, now)
                if self._breaker.failing_since is not None and self._breaker.probe_due(now):
                    # Wake the openers from their back-off (and start one if all gave
                    # up), so a server that came back is found within a probe interval.
                    self._probe.notify_all()
                    self._grow_locked()
                await self._changed.wait(min(deadline - now, 0.1))

    @contextlib.asynccontextmanager
    async def transaction(self, timeout: float | None = None) -> AsyncIterator[ConnT]:
        """Borrow a connection inside BEGIN … COMMIT (ROLLBACK if the block raises)."""
        async with self.connection(timeout) as conn, self._driver.transaction(conn):
            yield conn

    async def resize(self, min_size: int, max_size: int) -> None:
        """Change the bounds at run time: growth starts now; shrinking closes idle
        connections beyond the new ``max_size`` now, and borrowed ones beyond it as
        they come back."""
        self._bind()
        self.config.replace(min_size=min_size, max_size=max_size)  # validate before locking
        with self._lock:
            surplus = self._resize_surplus(min_size, max_size)
            self._grow_locked()
        for rec in surplus:
            self._retire(rec, "pool resized")

    async def drain(self) -> None:
        """Replace every connection: idle ones now, borrowed ones when they come back.

        Use after rotating credentials, ``CREATE EXTENSION`` or a failover.
        """
        self._bind()
        with self._lock:
            old = self._drain_idle()
        for rec in old:
            self._retire(rec, "drained")

    # -- closing --------------------------------------------------------------------------

    def _stop_lending_locked(self) -> list[ConnectionRecord]:
        """``close()``'s first step, with the lock held: lend nothing more, fail every
        waiter, and take the idle connections (for the caller to close)."""
        self._closed = True
        self._opened = True
        # Connections still borrowed are retired when they come back.
        self._generation += 1
        self._fail_waiters_locked(
            lambda: PoolClosed(f"pool {self.name!r} was closed while waiting")
        )
        idle = list(self._idle)
        self._idle.clear()
        self._total -= len(idle)
        self._changed.notify_all()
        return idle

    async def _close_borrowed(self, deadline: float, timeout: float) -> None:
        """Wait until ``deadline`` for borrowed connections to come back, then close
        the rest under their borrowers."""
        with self._lock:
            while self._lent:
                remaining = deadline - _monotonic()
                if remaining <= 0:
                    break
                await self._changed.wait(min(0.05, remaining))
            stragglers = list(self._lent.values())
            self._lent.clear()
            self._total -= len(stragglers)
            # Their borrowers will still call putconn(): that must not be an error.
            self._closed_under_borrower.update(rec.conn for rec in stragglers)
        if stragglers:
            _log.warning(
                "pool %r: closing %d connection(s) still borrowed after %gs",
                self.name,
                len(stragglers),
                timeout,
            )
            await self._close_all(stragglers)

    # -- lending and returning, off the fast path ------------------------------------------

    async def _validate(self, rec: ConnectionRecord, now: float, deadline: float = _NEVER) -> bool:
        """Is ``rec`` fit to lend? If not, retire it (the caller tries again). The check
        waits until ``deadline`` at most: the borrower's timeout bounds it."""
        if now >= rec.expires_at or rec.generation < self._generation:
            self._retire(rec, "reached max_lifetime" if now >= rec.expires_at else "drained")
            return False
        if now < rec.check_due:
            return True
        if now >= deadline:
            # No time left to check it: back to the pool unchecked, the caller times out.
            self._admit(rec, cold=False)
            return False
        try:
            await self._run_check(rec.conn, deadline - now)
        except Exception as exc:
            self._stats_checks_failed.add()
            self._note_server_gone()
            self._retire(rec, f"failed its check ({redact(str(exc)) or type(exc).__name__})")
            return False
        except BaseException:
            # Interrupted mid-ping (Ctrl-C, cancellation): the connection's protocol
            # state is unknown, so it cannot be lent, but it must still leave the books.
            self._retire(rec, "its borrower was interrupted during the check")
            raise
        self._mark_good(rec, _monotonic())
        return True

    async def _run_check(self, conn: Any, timeout: float | None = None) -> None:
        """The pool's check: the user's ``check=`` callable, else the driver's ping
        (which gives up after ``timeout`` seconds)."""
        check = self._user_check
        if check is None:
            await self._driver.ping(conn, timeout)
        else:
            await self._call_hook(check, conn)

    async def _clean_on_return(self, rec: ConnectionRecord) -> bool:
        """Roll back and/or reset ``rec``; False if it had to be discarded instead."""
        conn = rec.conn
        status = self._status(conn)
        if status == BROKEN:
            self._stats_returned_bad.add()
            self._note_server_gone()
            self._retire(rec, "returned broken or closed")
            return False
        try:
            if status == IN_TRANSACTION:
                self._stats_rollbacks.add()
                await self._driver.rollback(conn)
            # After the rollback (which reads the server's transaction status, never the
            # autocommit a borrower set) and before configure= runs again after a reset.
            restored = self._driver.restore_client_state(conn)
            if restored and self._needs_reset(conn):
                self._stats_resets.add()
                await self._driver.reset_session(conn)
                if self.config.configure is not None:
                    # configure= runs again on what it first ran on, not on its own results.
                    restored = self._driver.restore_client_state(conn, as_connected=True)
                    if restored:
                        await self._run_configure(conn)
            if not restored:
                self._retire(rec, "changed client-side state that cannot be put back")
                return False
            await self._run_reset_callable(conn)
        except Exception as exc:
            if self._driver.is_disconnect(exc):
                self._note_server_gone()
            self._retire(rec, f"could not be cleaned on return ({redact(str(exc))})")
            return False
        except BaseException:
            # Interrupted mid-rollback: the session's state is unknown, so it cannot be
            # lent again, but it must still leave the books.
            self._retire(rec, "interrupted while being cleaned on return")
            raise
        return True

    async def _run_reset_callable(self, conn: Any) -> None:
        """``reset=`` given a callable: it runs on every return, last (after the
        rollback and poolkeeper's own reset), and must leave the connection idle."""
        reset = self._reset_mode
        if not callable(reset):
            return
        try:
            await self._call_hook(reset, conn)
            if self._status(conn) != IDLE:
                raise ConfigurationError(
                    "reset: the callable left the connection inside a transaction; commit "
                    "at its end, or switch the connection to autocommit first"
                )
        except Exception as exc:
            # Most likely a bug in the callable: said once per return, or every
            # connection would be replaced on every return without a word.
            _log.warning(
                "pool %r: reset= failed on a returned connection, which is discarded: %s",
                self.name,
                redact(str(exc)) or type(exc).__name__,
            )
            raise
        # What it set is what the next borrower should see, not a leak.
        self._driver.mark_clean(conn)

    def _admit(self, rec: ConnectionRecord, *, cold: bool, opened: bool = False) -> None:
        """Put ``rec`` into service: to the first waiter, else onto the stack (the cold
        end for one that was only pinged, the hot end otherwise); if the pool closed
        meanwhile, close it instead. ``opened``: it fills an opening slot, and the
        callers still waiting may claim the next one (growth one step at a time)."""
        stale = False
        if opened:
            self._note_idle_refs(rec)
        with self._lock:
            if opened:
                self._opening -= 1
            # Not counted any more: the audit took it for lost (see _audit_slots).
            counted = rec in self._records
            closing = self._closed or not counted
            if closing and counted:
                self._records.discard(rec)
                self._total -= 1
            elif rec.generation < self._generation:
                # Opened or pinged across a drain(): it must be replaced as well.
                stale = True
            elif self._hand_off_locked(rec):
                if opened:
                    self._grow_locked()
            elif cold:
                self._idle.appendleft(rec)
            else:
                self._idle.append(rec)
            self._changed.notify_all()
        if closing:
            self._close_later(rec)
        elif stale:
            self._retire(rec, "drained while it was being opened or pinged")

    def _retire(self, rec: ConnectionRecord, why: str) -> None:
        """Drop ``rec`` from the pool (it is neither idle nor lent now), close it in
        the background, and open a replacement if the pool needs one."""
        _log.debug("pool %r: closing connection to backend %d: %s", self.name, rec.backend_pid, why)
        with self._lock:
            # Once only: the audit may have stopped counting it already.
            if rec in self._records:
                self._records.discard(rec)
                self._total -= 1
            self._grow_locked()
            self._changed.notify_all()
        self._close_later(rec)

    async def _close_rec(self, rec: ConnectionRecord) -> None:
        await self._driver.close(rec.conn)
        self._stats_closed.add()
        self._bank(rec)

    # -- opening --------------------------------------------------------------------------

    async def _run_configure(self, conn: Any) -> None:
        configure = self.config.configure
        if configure is not None:
            await self._call_hook(configure, conn)
            self._after_configure(conn)

    async def _connect_spec(self) -> ConnectSpec:
        """What the driver needs to connect, the ``dsn`` and ``connect_kwargs`` callables
        called. The pool calls them rather than the config: on the asyncio pool either
        may be a coroutine function (an async token fetch), which ``_call_hook`` awaits."""
        config = self.config
        dsn, kwargs = config.dsn, config.connect_kwargs
        if callable(dsn) or callable(kwargs):
            if callable(dsn):
                dsn = await self._call_hook(_call, dsn)
            if callable(kwargs):
                kwargs = await self._call_hook(_call, kwargs)
            config = config.replace(dsn=dsn, connect_kwargs=kwargs)
        return config.connect_spec()

    async def _connect_new(self) -> ConnectionRecord:
        # Taken before connecting: a drain() while this connects must replace it too.
        generation = self._generation
        started = _monotonic()
        conn = await self._driver.connect(await self._connect_spec())
        if self.config.close_returns:
            conn._pk_pool = weakref.ref(self)
        if not self._identity_ok(conn):
            await self._driver.close(conn)
            raise TypeError(f"{type(conn).__name__} overrides __eq__; the pool needs identity")
        try:
            await self._run_configure(conn)
        except Exception as exc:
            await self._driver.close(conn)
            raise self._configure_failed(exc) from exc
        except BaseException:
            self._close_conn_soon(conn)
            raise
        # Connect and configure, as a borrower would have waited for them: the
        # create_time an OpenTelemetry exporter reports (poolkeeper.metrics.opentelemetry).
        took = _monotonic() - started
        self._connect_times.add(took)
        rec = self._new_record(conn, generation)
        rec.connect_s = took
        return rec

    async def _open_one(self) -> None:
        """Open one connection (the slot is already counted), retrying with back-off."""
        backoff = Backoff()
        give_up_at = _monotonic() + self.config.reconnect_timeout
        opened = False
        connecting = False
        # The first caller in the queue when this attempt started: the evidence for
        # _grow_wide. Served callers leave from the front, so if it is still first
        # when the connection is ready, no connection came back meanwhile.
        first: object = None
        try:
            while not self._closed:
                try:
                    async with self._connect_slots:
                        if not connecting:
                            with self._lock:
                                if not self._opening_wanted_locked():
                                    self._grow_wide = False
                                    return  # the slot is given back below
                                self._connecting += 1
                                waiters = self._waiters
                                first = waiters[0] if waiters else None
                            connecting = True
                        self._breaker.attempt(_monotonic())
                        rec = await self._connect_new()
                except Exception as exc:
                    self._on_connect_failure(exc)
                    now = _monotonic()
                    if now >= give_up_at:
                        await self._give_up()
                        break
                    # Try again no later than the moment the breaker may open, so callers
                    # queued meanwhile learn at once that the server is down, and no
                    # later than reconnect_timeout, so giving up happens on time.
                    delay = min(backoff.next_delay(), self._breaker.opens_in(now), give_up_at - now)
                    await self._probe.wait(delay)
                    continue
                opened = True
                if connecting:
                    # Before the connection is admitted: a count too low for a moment
                    # errs towards opening, never towards a caller left waiting.
                    with self._lock:
                        self._connecting -= 1
                        # Opened for waiters, and none of them was served meanwhile:
                        # the connections lent are not coming back soon enough, so
                        # the next openings go side by side. A burst of short
                        # requests, served by returns all along, grows one at a time.
                        waiters = self._waiters
                        self._grow_wide = (
                            first is not None and bool(waiters) and waiters[0] is first
                        )
                    connecting = False
                self._on_connect_success(rec)
                return
        finally:
            with self._lock:
                if connecting:
                    self._connecting -= 1
                if not opened:
                    self._total -= 1
                    self._opening -= 1
                    self._changed.notify_all()

    async def _give_up(self) -> None:
        """Reconnection failed for ``reconnect_timeout``: say so, and call
        ``reconnect_failed=`` (with the pool) if set."""
        self._log_give_up()
        callback = self.config.reconnect_failed
        if callback is None:
            return
        try:
            await self._call_hook(callback, self)
        except Exception:
            _log.exception("pool %r: reconnect_failed= raised", self.name)

    def _on_connect_failure(self, exc: BaseException) -> None:
        self._record_connect_failure(exc)
        now = _monotonic()
        with self._lock:
            self._record_breaker_failure(now, exc)
            if self._fail_fast(now):
                self._fail_waiters_locked(self._breaker_error)

    def _on_connect_success(self, rec: ConnectionRecord) -> None:
        if self._record_connect_success(rec):
            # The server is back: wake the other reconnect loops from their back-off.
            self._probe.notify_all()
        self._admit(rec, cold=False, opened=True)

    # -- housekeeping ---------------------------------------------------------------------

    def _housekeeping(self) -> float:
        """One periodic pass; returns the seconds until the next."""
        now = _monotonic()
        with self._lock:
            lost = self._audit_slots(now)
            retire, ping = self._plan_housekeeping(now)
            self._grow_locked()
        for rec in lost:
            self._close_later(rec)
        for rec in retire:
            self._retire(rec, "housekeeping: lifetime or max_idle reached")
        for rec in ping:
            self._keepalive_later(rec)
        if self._leak_threshold is not None:
            self._report_leaks(now)
        return self._housekeeping_delay()

    async def _keepalive(self, rec: ConnectionRecord, what: str, *, own_check: bool) -> None:
        """Ping an idle ``rec`` taken off the stack, then put it back or retire it.

        ``own_check``: run the pool's check (``check=``, else the driver's ping) rather
        than the driver's ping, as ``pool.check()`` does.
        """
        try:
            if own_check:
                await self._run_check(rec.conn)
            else:
                await self._driver.ping(rec.conn)
        except Exception as exc:
            self._stats_checks_failed.add()
            self._note_server_gone()
            self._retire(rec, f"failed its {what} ({redact(str(exc))})")
            return
        except BaseException:
            self._retire(rec, f"interrupted during its {what}")
            raise
        self._mark_good(rec, _monotonic())
        self._admit(rec, cold=True)

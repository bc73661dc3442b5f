"""psycopg_pool's API on poolkeeper's pools: change one import.

::

    # from psycopg_pool import ConnectionPool, AsyncConnectionPool
    from poolkeeper.compat.psycopg_pool import ConnectionPool, AsyncConnectionPool

``ConnectionPool`` and ``AsyncConnectionPool`` take psycopg_pool's constructor
arguments (``conninfo``, ``kwargs``, ``min_size``, ``max_size``, ``open``,
``configure``, ``check``, ``reset``, ``name``, ``timeout``, ``max_waiting``,
``max_lifetime``, ``max_idle``, ``reconnect_timeout``, ``reconnect_failed``,
``num_workers``, ``connection_class``, ``close_returns``) and have its methods
(``getconn``, ``putconn``, ``connection``, ``open``, ``close``, ``wait``,
``resize``, ``check``, ``drain``, ``get_stats``, ``pop_stats``, the static
``check_connection``), with its semantics where poolkeeper's own differ:

* ``with pool.connection() as conn:`` **commits** on a clean exit and rolls back
  if the block raises (poolkeeper's :meth:`~poolkeeper.Pool.connection` always
  rolls back what was not committed).
* ``max_size=None`` means ``min_size``; ``min_size`` defaults to 4,
  ``num_workers`` to 3, ``wait()`` and ``open(wait=True)`` to 30 s.
* ``reset=`` is a callable, called with every returned connection once it is
  idle (a transaction left open is rolled back first); a connection it leaves
  in a transaction, or that it fails on, is discarded.
* ``check=`` is a callable run before every lend; ``check_connection`` is the
  recipe (``check=ConnectionPool.check_connection``).
* A lent connection's ``_pool`` is the pool until it is returned, as psycopg
  expects: ``with conn:`` inside a borrow commits without closing the connection,
  and a ``connection_class`` whose ``close()`` hands itself back through ``_pool``
  (SQLAlchemy's NullPool recipe) works.
* ``ConnectionPool[MyConnection]`` is generic, and ``connection_class`` may be a
  subscripted generic (``MyConnection[DictRow]``).
* On ``AsyncConnectionPool``, ``conninfo`` and ``kwargs`` may be coroutine
  functions, awaited at every connect.
* psycopg_pool's settings are attributes (``min_size``, ``max_size``,
  ``timeout``, ``max_waiting``, ``max_lifetime``, ``max_idle``,
  ``reconnect_timeout``, ``num_workers``, ``conninfo``, ``kwargs``,
  ``connection_class``, ``name``).
* ``get_stats()``/``pop_stats()`` return psycopg_pool's keys (``requests_num``,
  ``requests_wait_ms``, ``usage_ms``, ``connections_ms``, ...), counted as
  psycopg_pool counts them (a failed request is a request), and ``pop_stats()``
  starts them again from zero.

What the pools are is poolkeeper's: fork safety, session reset on return, the
circuit breaker, ``max_lifetime`` never lending an expired connection, and the
speed. The connection lent is the driver's own psycopg connection (of
``connection_class`` if given).

Deliberate differences that remain:

* Exceptions are poolkeeper's: ``PoolTimeout``, ``PoolClosed`` and
  ``TooManyRequests`` here are :class:`~poolkeeper.errors.PoolError` subclasses,
  not psycopg ``OperationalError`` ones; catch these names from this module (or
  ``poolkeeper.PoolError``) instead of psycopg_pool's. Returning a connection
  the pool did not lend raises ``PoolError``, not ``ValueError``. Messages and
  log lines are poolkeeper's own (logger ``poolkeeper.pool``).
* Nothing is logged when a connection comes back inside a transaction (it is
  rolled back and counted in ``stats().rollbacks``), or when a check finds one
  dead (it is replaced and counted in ``connections_lost``); a ``reset`` or
  ``configure`` that fails is logged as a warning.
* The connection lent is the one returned most recently (a stack), where
  psycopg_pool lends the one idle longest (a queue): spare connections stay
  idle, so ``max_idle`` can close them.
* ``check=None`` (the default) is poolkeeper's ``"auto"``: a connection idle for
  ``check_after`` (0.25 s) is pinged before it is lent. psycopg_pool lends
  without checking.
* Besides your ``reset``, poolkeeper resets a session the borrower changed
  (``SET``, ``LISTEN``, temporary tables, prepared statements...) with
  ``DISCARD ALL`` and re-runs ``configure``; your ``reset`` runs after that,
  so what it sets is what the next borrower sees.
* While the server is known unreachable (the circuit breaker is open), a
  ``getconn`` that finds no idle connection fails at once with
  ``ConnectionFailed`` instead of waiting out its timeout; ``wait()`` does wait.
* ``pop_stats()`` starts only this module's view from zero: ``pool.stats()``
  and the Prometheus collector keep counting since the pool opened.
* ``resize()`` to a smaller ``max_size`` closes the idle connections beyond it
  at once, rather than leaving them to ``max_idle``.
* Growth for callers waiting is psycopg_pool's one connection at a time, except
  that while no connection comes back during a connect the pool opens
  ``num_workers`` at a time: callers held up by a slow start (``min_size=0``,
  long borrows) wait less than under psycopg_pool.
* A pool dropped without ``close()`` warns with a ``ResourceWarning`` (as an
  unclosed file does) before stopping its background work; psycopg_pool is silent.
* A name is 1-63 letters, digits, ``_``, ``-`` or ``.`` (it becomes the
  ``application_name``); the default is ``pool-N``.
* ``open=None`` opens the pool at once, without psycopg_pool's deprecation
  warning; an ``AsyncConnectionPool`` built outside a running loop opens at its
  first use. The pool cannot be reopened once closed (as in psycopg_pool).
* The pool's psycopg_pool internals (``pool._pool``, ``pool._waiting``,
  ``pool._workers``, ``_jitter``, ``AttemptWithBackoff``...) do not exist;
  ``get_stats()`` answers what they were read for.
* ``connection_class`` and ``close_returns`` are psycopg 3 features; these
  classes use psycopg 3 only.
"""

from __future__ import annotations

import contextlib
import itertools
import threading
import time
import typing
from collections.abc import AsyncIterator, Callable, Iterator
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import psycopg

from poolkeeper.async_pool import AsyncPool
from poolkeeper.config import PoolConfig
from poolkeeper.errors import PoolClosed, PoolTimeout
from poolkeeper.errors import TooManyWaiters as TooManyRequests
from poolkeeper.pool import Pool
from poolkeeper.stats import PoolStats

__all__ = [
    "AsyncConnectionPool",
    "ConnectionPool",
    "PoolClosed",
    "PoolTimeout",
    "TooManyRequests",
]

if TYPE_CHECKING:
    from typing_extensions import TypeVar as _DefaultingTypeVar

    #: The connection class a ``ConnectionPool`` lends (``ConnectionPool[MyConn]``).
    CT = _DefaultingTypeVar("CT", bound=psycopg.Connection[Any], default=psycopg.Connection[Any])
    #: The connection class an ``AsyncConnectionPool`` lends.
    ACT = _DefaultingTypeVar(
        "ACT", bound=psycopg.AsyncConnection[Any], default=psycopg.AsyncConnection[Any]
    )
else:
    # typing.TypeVar takes default= only from Python 3.13; the default is for type checkers.
    CT = TypeVar("CT")
    ACT = TypeVar("ACT")

_names = itertools.count(1)

#: psycopg_pool's counters, from a snapshot (its gauges are added in ``_stats_dict``).
#: psycopg_pool counts a request when it is made, and a queued one when it joins the
#: queue: the callers waiting now are in ``requests_num`` and ``requests_queued``, and
#: requests that failed (timed out, refused, cancelled) are in both as well.
_COUNTERS: dict[str, Callable[[PoolStats], int]] = {
    "requests_num": lambda s: s.borrows + s.timeouts + s.refused + s.cancelled + s.waiting,
    "requests_queued": lambda s: s.waits + s.timeouts + s.cancelled + s.waiting,
    "requests_errors": lambda s: s.timeouts + s.refused + s.cancelled,
    "usage_ms": lambda s: int(s.usage_time_ms),
    "returns_bad": lambda s: s.returned_bad,
    "connections_num": lambda s: s.connections_opened + s.connect_errors,
    "connections_ms": lambda s: int(s.connect_time_ms),
    "connections_errors": lambda s: s.connect_errors,
    "connections_lost": lambda s: s.checks_failed,
}


def _since(now: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    # Never below zero: the callers waiting (part of two counters) leave the queue
    # a moment before what they became is counted.
    return {key: max(0, value - before.get(key, 0)) for key, value in now.items()}


def _stats_dict(stats: PoolStats, counters: dict[str, int]) -> dict[str, int]:
    return {
        "pool_min": stats.min_size,
        "pool_max": stats.max_size,
        "pool_size": stats.size,
        "pool_available": stats.idle,
        "requests_waiting": stats.waiting,
        **counters,
    }


def _counters(stats: PoolStats, failed_wait_s: float) -> dict[str, int]:
    counters = {key: read(stats) for key, read in _COUNTERS.items()}
    # psycopg_pool counts the wait of a request that failed too (a timeout waited).
    counters["requests_wait_ms"] = int(stats.wait_time_ms + failed_wait_s * 1000)
    return counters


def _plain_class(connection_class: Any) -> Any:
    """``Connection[DictRow]`` (a subscripted generic, as psycopg_pool's typing guide
    writes it) stands for its class at run time."""
    return typing.get_origin(connection_class) or connection_class


class _PoolShell(Protocol):
    """What the shared part needs of a poolkeeper pool."""

    config: PoolConfig
    _popped: dict[str, int]
    _failed_wait_s: float

    def stats(self) -> PoolStats: ...


class _PsycopgPoolApi:
    """What ``ConnectionPool`` and ``AsyncConnectionPool`` share: psycopg_pool's
    arguments translated into poolkeeper settings, and the methods that do no I/O.

    Each class keeps its own constructor signature (the public one, whose only
    difference is ``connection_class``'s default) and hands its arguments here.
    """

    def _count_failed_wait(self, since: float) -> None:
        with self._failed_wait_lock:
            self._failed_wait_s += time.monotonic() - since

    def _adopt(self, default_class: type[Any], arguments: dict[str, Any]) -> dict[str, Any]:
        """Keep psycopg_pool's attributes; return the pool constructor's arguments."""
        a = arguments
        self.conninfo = a["conninfo"]
        self.kwargs = a["kwargs"]
        self.connection_class = a["connection_class"]
        self._popped: dict[str, int] = {}
        # Seconds waited by borrows that failed (poolkeeper's wait_time_ms counts the
        # ones that got a connection), added on the error path only.
        self._failed_wait_s = 0.0
        self._failed_wait_lock = threading.Lock()
        max_size, check, reset = a["max_size"], a["check"], a["reset"]
        plain_class = _plain_class(a["connection_class"])
        return {
            "dsn": a["conninfo"],
            "open": a["open"] is not False,
            "name": a["name"] if a["name"] is not None else f"pool-{next(_names)}",
            "driver": "psycopg",
            "connect_kwargs": a["kwargs"],
            "min_size": a["min_size"],
            "max_size": a["min_size"] if max_size is None else max_size,
            "configure": a["configure"],
            "check": "auto" if check is None else check,
            "reset": "auto" if reset is None else reset,
            "timeout": a["timeout"],
            "max_waiting": a["max_waiting"],
            "max_lifetime": a["max_lifetime"],
            "max_idle": a["max_idle"],
            "reconnect_timeout": a["reconnect_timeout"],
            "reconnect_failed": a["reconnect_failed"],
            "num_workers": a["num_workers"],
            "connection_class": None if plain_class is default_class else plain_class,
            "close_returns": a["close_returns"],
        }

    # -- psycopg_pool's attributes ---------------------------------------------------------

    @property
    def min_size(self: _PoolShell) -> int:
        """The configured ``min_size``."""
        return self.config.min_size

    @property
    def max_size(self: _PoolShell) -> int:
        """The configured ``max_size``."""
        return self.config.max_size

    @property
    def timeout(self: _PoolShell) -> float:
        """The default ``getconn`` timeout."""
        return self.config.timeout

    @property
    def max_waiting(self: _PoolShell) -> int:
        """The configured ``max_waiting`` (0: no limit)."""
        return self.config.max_waiting

    @property
    def max_lifetime(self: _PoolShell) -> float | None:
        """The configured ``max_lifetime``, in seconds."""
        return self.config.max_lifetime

    @property
    def max_idle(self: _PoolShell) -> float | None:
        """The configured ``max_idle``, in seconds."""
        return self.config.max_idle

    @property
    def reconnect_timeout(self: _PoolShell) -> float:
        """The configured ``reconnect_timeout``, in seconds."""
        return self.config.reconnect_timeout

    @property
    def num_workers(self: _PoolShell) -> int:
        """The configured ``num_workers``."""
        return self.config.num_workers

    # -- psycopg_pool's stats ----------------------------------------------------------------

    def get_stats(self: _PoolShell) -> dict[str, int]:
        """psycopg_pool's stats: its gauges, and its counters since the pool opened or
        the last :meth:`pop_stats` (which starts them again from zero)."""
        stats = self.stats()
        return _stats_dict(stats, _since(_counters(stats, self._failed_wait_s), self._popped))

    def pop_stats(self: _PoolShell) -> dict[str, int]:
        """Like :meth:`get_stats`, then count from zero again (only for
        ``get_stats``/``pop_stats``: ``stats()`` and the metrics keep growing)."""
        stats = self.stats()
        now = _counters(stats, self._failed_wait_s)
        since = _since(now, self._popped)
        self._popped = now
        return _stats_dict(stats, since)


class ConnectionPool(_PsycopgPoolApi, Pool[CT]):
    """psycopg_pool's ``ConnectionPool`` on poolkeeper's :class:`~poolkeeper.Pool`
    (the module docstring lists what differs)."""

    def __init__(
        self,
        conninfo: Any = "",
        *,
        connection_class: type[Any] = psycopg.Connection,
        kwargs: Any = None,
        min_size: int = 4,
        max_size: int | None = None,
        open: bool | None = None,
        configure: Callable[[Any], object] | None = None,
        check: Callable[[Any], object] | None = None,
        reset: Callable[[Any], object] | None = None,
        name: str | None = None,
        close_returns: bool = False,
        timeout: float = 30.0,
        max_waiting: int = 0,
        max_lifetime: float = 3600.0,
        max_idle: float = 600.0,
        reconnect_timeout: float = 300.0,
        reconnect_failed: Callable[[Any], object] | None = None,
        num_workers: int = 3,
    ) -> None:
        # The arguments above as one dict: their translation has one source.
        super().__init__(**self._adopt(psycopg.Connection, locals()))

    def __enter__(self) -> ConnectionPool[CT]:
        super().__enter__()
        return self

    def getconn(self, timeout: float | None = None) -> CT:
        """Borrow a connection; its ``_pool`` is this pool until it is returned, as
        psycopg expects (``with conn:`` then commits without closing it)."""
        start = time.monotonic()
        try:
            conn = super().getconn(timeout)
        except BaseException:
            self._count_failed_wait(start)
            raise
        conn._pool = self  # type: ignore[assignment]  # psycopg types it as psycopg_pool's
        return conn

    def putconn(self, conn: CT) -> None:
        """Return a borrowed connection (rolled back and reset as poolkeeper does)."""
        if getattr(conn, "_pool", None) is self:
            conn._pool = None
        super().putconn(conn)

    def open(self, wait: bool = False, timeout: float = 30.0) -> None:
        """Start the pool; with ``wait=True``, wait up to ``timeout`` for ``min_size``."""
        super().open()
        if wait:
            self.wait(timeout)

    def wait(self, timeout: float | None = 30.0) -> None:
        """Wait until ``min_size`` connections are open, else raise ``PoolTimeout``."""
        super().wait(timeout)

    def resize(self, min_size: int, max_size: int | None = None) -> None:
        """Change the bounds; ``max_size=None`` means ``min_size``."""
        super().resize(min_size, min_size if max_size is None else max_size)

    @contextlib.contextmanager
    def connection(self, timeout: float | None = None) -> Iterator[CT]:
        """Borrow a connection for a ``with`` block: committed on a clean exit, rolled
        back if the block raises, returned to the pool either way."""
        with super().connection(timeout) as conn:
            yield conn
            if not conn.closed:
                conn.commit()

    @staticmethod
    def check_connection(conn: Any) -> None:
        """A ``check=`` that raises unless ``conn`` answers an empty query; it opens no
        transaction (psycopg_pool's recipe: ``check=ConnectionPool.check_connection``)."""
        if conn.closed:
            raise psycopg.OperationalError("the connection is closed")
        autocommit = conn.autocommit
        if not autocommit:
            conn.autocommit = True
        try:
            conn.execute("")
        finally:
            if not autocommit:
                conn.autocommit = False


class AsyncConnectionPool(_PsycopgPoolApi, AsyncPool[ACT]):
    """psycopg_pool's ``AsyncConnectionPool`` on poolkeeper's
    :class:`~poolkeeper.AsyncPool` (the module docstring lists what differs)."""

    def __init__(
        self,
        conninfo: Any = "",
        *,
        connection_class: type[Any] = psycopg.AsyncConnection,
        kwargs: Any = None,
        min_size: int = 4,
        max_size: int | None = None,
        open: bool | None = None,
        configure: Callable[[Any], object] | None = None,
        check: Callable[[Any], object] | None = None,
        reset: Callable[[Any], object] | None = None,
        name: str | None = None,
        close_returns: bool = False,
        timeout: float = 30.0,
        max_waiting: int = 0,
        max_lifetime: float = 3600.0,
        max_idle: float = 600.0,
        reconnect_timeout: float = 300.0,
        reconnect_failed: Callable[[Any], object] | None = None,
        num_workers: int = 3,
    ) -> None:
        # The arguments above as one dict: their translation has one source.
        super().__init__(**self._adopt(psycopg.AsyncConnection, locals()))

    async def __aenter__(self) -> AsyncConnectionPool[ACT]:
        await super().__aenter__()
        return self

    async def getconn(self, timeout: float | None = None) -> ACT:
        """Borrow a connection; its ``_pool`` is this pool until it is returned, as
        psycopg expects (``async with conn:`` then commits without closing it)."""
        start = time.monotonic()
        try:
            conn = await super().getconn(timeout)
        except BaseException:
            self._count_failed_wait(start)
            raise
        conn._pool = self  # type: ignore[assignment]  # psycopg types it as psycopg_pool's
        return conn

    async def putconn(self, conn: ACT) -> None:
        """Return a borrowed connection (rolled back and reset as poolkeeper does)."""
        if getattr(conn, "_pool", None) is self:
            conn._pool = None
        await super().putconn(conn)

    async def open(self, wait: bool = False, timeout: float = 30.0) -> None:
        """Start the pool; with ``wait=True``, wait up to ``timeout`` for ``min_size``."""
        await super().open()
        if wait:
            await self.wait(timeout)

    async def wait(self, timeout: float | None = 30.0) -> None:
        """Wait until ``min_size`` connections are open, else raise ``PoolTimeout``."""
        await super().wait(timeout)

    async def resize(self, min_size: int, max_size: int | None = None) -> None:
        """Change the bounds; ``max_size=None`` means ``min_size``."""
        await super().resize(min_size, min_size if max_size is None else max_size)

    @contextlib.asynccontextmanager
    async def connection(self, timeout: float | None = None) -> AsyncIterator[ACT]:
        """Borrow a connection for an ``async with`` block: committed on a clean exit,
        rolled back if the block raises, returned to the pool either way."""
        async with super().connection(timeout) as conn:
            yield conn
            if not conn.closed:
                await conn.commit()

    @staticmethod
    async def check_connection(conn: Any) -> None:
        """A ``check=`` that raises unless ``conn`` answers an empty query; it opens no
        transaction (``check=AsyncConnectionPool.check_connection``)."""
        if conn.closed:
            raise psycopg.OperationalError("the connection is closed")
        autocommit = conn.autocommit
        if not autocommit:
            await conn.set_autocommit(True)
        try:
            await conn.execute("")
        finally:
            if not autocommit:
                await conn.set_autocommit(False)

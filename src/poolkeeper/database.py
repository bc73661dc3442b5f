"""``Database``: the process-wide shared pool, one per name.

The popular recipe — a singleton class around ``psycopg2.pool`` — kept as an
API (``Database()``, ``get_connection``, ``release_connection``,
``close_all_connections``) with a production pool behind it.
"""

from __future__ import annotations

import contextlib
import itertools
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Generic, Literal, overload

from poolkeeper.config import PoolConfig
from poolkeeper.errors import PoolError
from poolkeeper.pool import Pool
from poolkeeper.pool_core import ConnT
from poolkeeper.registry import NamedSingleton, overall_status

if TYPE_CHECKING:
    from poolkeeper.drivers.connections import Psycopg2Connection, PsycopgConnection

__all__ = ["Database"]


class Database(NamedSingleton, Generic[ConnT]):
    """The shared pool for ``name``: the same object on every call, in every thread.

    ``Database(name="default", dsn=None, **settings)``: the first call for a name
    creates the pool (settings as for :class:`~poolkeeper.Pool`, plus
    ``replicas=[dsn, ...]`` for read-only traffic); later calls return the same
    object and raise ``ConfigurationError`` if they ask for different settings.
    In a forked child the first use builds a fresh pool.

    An object kept across ``Database.reset_all()`` (a module-level ``db``) stays
    usable and never opens a pool of its own that nothing can close: its next use
    registers it again, or, if ``Database(name)`` made a new object meanwhile, uses
    that object's pool. A connection borrowed before ``close_all_connections()``
    (or ``reset_all()``) may still be released: the closing pool takes it back and
    closes it.
    """

    if TYPE_CHECKING:
        # For type checkers only: ``driver=`` picks the connection type. At run time
        # NamedSingleton's own __new__ and __init__ take the call unchanged.
        @overload
        def __init__(
            self: Database[PsycopgConnection],
            name: str = "default",
            dsn: Any = None,
            *,
            driver: Literal["psycopg"] = "psycopg",
            **options: Any,
        ) -> None: ...
        @overload
        def __init__(
            self: Database[Psycopg2Connection],
            name: str = "default",
            dsn: Any = None,
            *,
            driver: Literal["psycopg2"],
            **options: Any,
        ) -> None: ...
        @overload
        def __init__(
            self: Database[Any], name: str = "default", dsn: Any = None, **options: Any
        ) -> None: ...
        def __init__(self, name: str = "default", dsn: Any = None, **options: Any) -> None: ...

    _pool: Pool[ConnT] | None
    _replica_pools: list[Pool[ConnT]] | None

    def _setup_pools(self) -> None:
        self._pool = None
        self._replica_pools = None
        self._replica_cycle: Iterator[Pool[ConnT]] | None = None
        self._pool_lock = threading.Lock()
        # Pools being closed, or closed with connections still out: they take those back.
        self._closing: list[Pool[ConnT]] = []

    # -- the pool behind it ------------------------------------------------------------

    @property
    def pool(self) -> Pool[ConnT]:
        """The pool behind this name, created on first use (again after a fork or close)."""
        pool = self._pool
        if pool is None:
            live = self._live()
            if live is not self:
                return live.pool
            with self._pool_lock:
                pool = self._pool
                if pool is None:
                    pool = self._pool = Pool(config=self.config)
        return pool

    def _read_pool(self) -> Pool[ConnT]:
        if not self._replica_configs:
            return self.pool
        if self._replica_cycle is None:
            live = self._live()
            if live is not self:
                return live._read_pool()
            with self._pool_lock:
                if self._replica_cycle is None:
                    self._replica_pools = self._make_replica_pools(_pool_for)
                    self._replica_cycle = itertools.cycle(self._replica_pools)
        return next(self._replica_cycle)

    # -- the seed recipe's API ----------------------------------------------------------

    def get_connection(self, timeout: float | None = None) -> ConnT:
        """Borrow a connection; waits up to ``timeout`` then raises ``PoolTimeout``."""
        return self.pool.getconn(timeout)

    def release_connection(self, conn: ConnT) -> None:
        """Return a connection: rolls back an open transaction, discards a broken one.

        Also one borrowed before ``close_all_connections()`` began: the closing pool
        takes it back and closes it, and its ``close()`` returns once the last is back.
        """
        pool = self._pool
        if pool is not None and conn in pool._lent:
            pool.putconn(conn)
            return
        live = type(self)._instances.get(self.name)
        others = live._lenders() if live is not None and live is not self else []
        for candidate in self._lenders() + others:
            if conn in candidate._lent or conn in candidate._closed_under_borrower:
                candidate.putconn(conn)
                return
        raise PoolError(
            f"Database({self.name!r}) did not lend this connection (already returned, or "
            "from another Database); return each connection once, to the Database it came from"
        )

    def _lenders(self) -> list[Pool[ConnT]]:
        """Every pool of this object that may have lent a connection."""
        return [
            p for p in [self._pool, *(self._replica_pools or ()), *self._closing] if p is not None
        ]

    def close_all_connections(self, timeout: float = 5.0) -> None:
        """Close the pool (and replica pools); the next use opens a fresh one.

        Waits up to ``timeout`` for borrowed connections; each returned with
        ``release_connection`` meanwhile is closed, and this returns once the last
        one is back."""
        with self._pool_lock:
            pools = [p for p in [self._pool, *(self._replica_pools or ())] if p is not None]
            self._pool = None
            self._replica_pools = None
            self._replica_cycle = None
            self._closing.extend(pools)
        try:
            for pool in pools:
                pool.close(timeout)
        finally:
            with self._pool_lock:
                # Kept only while connections it closed under their borrowers are out.
                self._closing = [
                    p for p in self._closing if p not in pools or p._closed_under_borrower
                ]

    # -- preferred, exception-safe forms -----------------------------------------------

    @contextlib.contextmanager
    def connection(
        self, timeout: float | None = None, *, readonly: bool = False
    ) -> Iterator[ConnT]:
        """Borrow for a ``with`` block; ``readonly=True`` uses a replica when configured."""
        pool = self._read_pool() if readonly else self.pool
        with pool.connection(timeout) as conn:
            yield conn

    @contextlib.contextmanager
    def transaction(self, timeout: float | None = None) -> Iterator[ConnT]:
        """Borrow inside BEGIN … COMMIT, ROLLBACK on error."""
        with self.pool.transaction(timeout) as conn:
            yield conn

    def stats(self) -> Any:
        """The primary pool's :class:`~poolkeeper.PoolStats`."""
        return self.pool.stats()

    def health(self) -> dict[str, object]:
        """Every pool's health, answered at once: the primary's fields, plus
        ``replicas`` (each replica pool's health) when replicas are configured; the
        overall ``status`` is the primary's, ``degraded`` while a replica is not ok."""
        report = self.pool.health()
        if self._replica_configs:
            replicas = [pool.health() for pool in self._replica_pools_now()]
            report["replicas"] = replicas
            report["status"] = overall_status(report["status"], [r["status"] for r in replicas])
        return report

    def drain(self) -> None:
        """Replace every connection, the replicas' too (see ``Pool.drain``): after a
        credential rotation, every pool must reconnect."""
        self.pool.drain()
        for replica in self._live()._replica_pools or ():
            replica.drain()

    def _replica_pools_now(self) -> list[Pool[ConnT]]:
        """The replica pools, made now if no read has made them yet."""
        live = self._live()
        if live._replica_pools is None:
            live._read_pool()  # makes them (and moves the round robin on by one)
        return list(live._replica_pools or ())

    # -- process-wide -------------------------------------------------------------------

    @classmethod
    def reset_all(cls, timeout: float = 5.0) -> None:
        """Close every ``Database`` singleton and forget them (tests, shutdown hooks)."""
        for instance in cls._forget_all():
            instance.close_all_connections(timeout)

    def _after_fork_in_child(self) -> None:
        # The pools' own fork hooks make their sockets inert; we just stop using them.
        self._pool = None
        self._replica_pools = None
        self._replica_cycle = None
        self._pool_lock = threading.Lock()
        self._closing = []


def _pool_for(config: PoolConfig) -> Pool:
    return Pool(config=config)

"""``Database``: the process-wide shared pool, one per name.

The popular recipe — a singleton class around ``psycopg2.pool`` — kept as an
API (``Database()``, ``get_connection``, ``release_connection``,
``close_all_connections``) with a production pool behind it.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Generic, Literal, overload

from poolkeeper.config import PoolConfig
from poolkeeper.errors import PoolError
from poolkeeper.pool import Pool
from poolkeeper.pool_core import ConnT
from poolkeeper.redact import redact
from poolkeeper.registry import NamedSingleton, overall_status, replica_health
from poolkeeper.replicas import ReplicaRouter

if TYPE_CHECKING:
    from poolkeeper.drivers.connections import Psycopg2Connection, PsycopgConnection

__all__ = ["Database"]


class Database(NamedSingleton, Generic[ConnT]):
    """The shared pool for ``name``: the same object on every call, in every thread.

    ``Database(name="default", dsn=None, **settings)``: the first call for a name
    creates the pool (settings as for :class:`~poolkeeper.Pool`, plus
    ``replicas=[dsn, ...]`` for read-only traffic, ``max_replica_lag`` and
    ``replica_fallback``: see docs/scaling.md); later calls return the same
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
        self._router: ReplicaRouter | None = None
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

    def _replica_set(self) -> tuple[list[Pool[ConnT]], ReplicaRouter] | None:
        """The replica pools and their router, made on first use; None without replicas."""
        if not self._replica_configs:
            return None
        pools, router = self._replica_pools, self._router
        if pools is None or router is None:
            live = self._live()
            if live is not self:
                return live._replica_set()
            with self._pool_lock:
                if self._replica_pools is None or self._router is None:
                    self._router = self._new_router()
                    self._replica_pools = self._make_replica_pools(_pool_for)
                pools, router = self._replica_pools, self._router
        return pools, router

    def _enter_read(self, stack: contextlib.ExitStack, timeout: float | None, txn: bool) -> Any:
        """Borrow for a read: the next usable replica (measuring its lag first when
        that is due), else the primary, or ``NoReplicaAvailable`` under
        ``replica_fallback="fail"``."""
        found = self._replica_set()
        if found is None:
            return stack.enter_context(_borrow(self.pool, timeout, txn))
        pools, router = found
        for index in router.order():
            pool = pools[index]
            try:
                if router.due(index) and not router.measured(index, _replay_lag(pool, timeout)):
                    continue
                return stack.enter_context(_borrow(pool, timeout, txn))
            except PoolError as exc:
                router.failed(index, exc)
        if router.fallback == "fail":
            raise router.no_replica_error()
        return stack.enter_context(_borrow(self.pool, timeout, txn))

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
            self._router = None
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
        """Borrow for a ``with`` block; ``readonly=True`` uses a usable replica when
        configured (round-robin; see docs/scaling.md), else the primary."""
        if not readonly:
            with self.pool.connection(timeout) as conn:
                yield conn
            return
        with contextlib.ExitStack() as stack:
            yield self._enter_read(stack, timeout, False)

    @contextlib.contextmanager
    def transaction(
        self, timeout: float | None = None, *, readonly: bool = False
    ) -> Iterator[ConnT]:
        """Borrow inside BEGIN … COMMIT, ROLLBACK on error; ``readonly=True`` routes it
        as ``connection(readonly=True)`` does."""
        if not readonly:
            with self.pool.transaction(timeout) as conn:
                yield conn
            return
        with contextlib.ExitStack() as stack:
            yield self._enter_read(stack, timeout, True)

    def stats(self) -> Any:
        """The primary pool's :class:`~poolkeeper.PoolStats`."""
        return self.pool.stats()

    def health(self) -> dict[str, object]:
        """Every pool's health, answered at once: the primary's fields, plus
        ``replicas`` (each replica pool's health) when replicas are configured; the
        overall ``status`` is the primary's, ``degraded`` while a replica is not ok."""
        report = self.pool.health()
        found = self._replica_set()
        if found is not None:
            pools, router = found
            replicas = [replica_health(pool.health(), router, i) for i, pool in enumerate(pools)]
            report["replicas"] = replicas
            report["status"] = overall_status(report["status"], [r["status"] for r in replicas])
        return report

    def drain(self) -> None:
        """Replace every connection, the replicas' too (see ``Pool.drain``): after a
        credential rotation, every pool must reconnect."""
        self.pool.drain()
        for replica in self._live()._replica_pools or ():
            replica.drain()

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
        self._router = None
        self._pool_lock = threading.Lock()
        self._closing = []


def _pool_for(config: PoolConfig) -> Pool:
    return Pool(config=config)


def _borrow(pool: Pool, timeout: float | None, txn: bool) -> contextlib.AbstractContextManager[Any]:
    return pool.transaction(timeout) if txn else pool.connection(timeout)


def _replay_lag(pool: Pool, timeout: float | None) -> float | None:
    """The replica's replay lag, on a connection borrowed and returned for it. A
    driver error there (the server went away mid-query) counts as the replica down."""
    measure = getattr(pool._driver, "replay_lag", None)
    if measure is None:
        return 0.0
    try:
        with pool.connection(timeout) as conn:
            lag: float | None = measure(conn)
    except PoolError:
        raise
    except Exception as exc:
        raise PoolError(f"{pool.name}: measuring replay lag failed: {redact(str(exc))}") from None
    return lag

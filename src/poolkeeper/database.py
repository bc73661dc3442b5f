"""``Database``: the process-wide shared pool, one per name.

The popular recipe — a singleton class around ``psycopg2.pool`` — kept as an
API (``Database()``, ``get_connection``, ``release_connection``,
``close_all_connections``) with a production pool behind it.
"""

from __future__ import annotations

import contextlib
import itertools
import threading
from collections.abc import Iterator, Sequence
from typing import Any, ClassVar

from poolkeeper import forking
from poolkeeper.config import PoolConfig
from poolkeeper.errors import ConfigurationError, PoolError
from poolkeeper.pool import Pool
from poolkeeper.redact import redact

__all__ = ["Database", "check_same_settings"]


def check_same_settings(existing: PoolConfig, requested: PoolConfig, what: str) -> None:
    """Raise ``ConfigurationError`` if ``requested`` explicitly asks for other settings."""
    for key in sorted(requested.explicit):
        mine, theirs = getattr(existing, key), getattr(requested, key)
        if mine != theirs:
            if key == "dsn":
                mine, theirs = existing.redacted_dsn(), requested.redacted_dsn()
            raise ConfigurationError(
                f"{key}: {what} already exists with {key}={redact(repr(mine))}, and this call "
                f"asks for {key}={redact(repr(theirs))}. Pass the same settings everywhere "
                f"(or none), use another name= for a second pool, or call "
                f"Database.reset_all() first in tests"
            )


class Database:
    """The shared pool for ``name``: the same object on every call, in every thread.

    ``Database(name="default", dsn=None, **settings)``: the first call for a name
    creates the pool (settings as for :class:`~poolkeeper.Pool`, plus
    ``replicas=[dsn, ...]`` for read-only traffic); later calls return the same
    object and raise ``ConfigurationError`` if they ask for different settings.
    In a forked child the first use builds a fresh pool.
    """

    _instances: ClassVar[dict[str, Database]] = {}
    _registry_lock: ClassVar[threading.Lock] = threading.Lock()

    name: str
    config: PoolConfig
    _pool: Pool | None
    _replica_configs: tuple[PoolConfig, ...]
    _replica_pools: list[Pool] | None

    def __new__(cls, name: str = "default", dsn: Any = None, **options: Any) -> Database:
        instance = cls._instances.get(name)
        if instance is None:
            with cls._registry_lock:
                instance = cls._instances.get(name)
                if instance is None:
                    instance = super().__new__(cls)
                    instance._setup(name, dsn, options)
                    cls._instances[name] = instance
                    return instance
        if dsn is not None or options:
            replicas = options.pop("replicas", None)
            requested = PoolConfig.build(dsn, name=name, **options)
            check_same_settings(instance.config, requested, f"Database({name!r})")
            if replicas is not None and tuple(replicas) != instance._replica_dsns():
                raise ConfigurationError(
                    f"replicas: Database({name!r}) already exists with other replicas; "
                    "pass the same list everywhere"
                )
        return instance

    def __init__(self, name: str = "default", dsn: Any = None, **options: Any) -> None:
        """Settings are taken by ``__new__``; a repeated call changes nothing."""

    def _setup(self, name: str, dsn: Any, options: dict[str, Any]) -> None:
        replicas: Sequence[Any] = options.pop("replicas", None) or ()
        self.name = name
        self.config = PoolConfig.build(dsn, name=name, **options)
        self._replica_configs = tuple(
            self.config.replace(dsn=replica, name=f"{name}-replica{i}", min_size=0)
            for i, replica in enumerate(replicas)
        )
        self._pool = None
        self._replica_pools = None
        self._replica_cycle: Iterator[Pool] | None = None
        self._pool_lock = threading.Lock()
        forking.register(self)

    def _replica_dsns(self) -> tuple[Any, ...]:
        return tuple(cfg.dsn for cfg in self._replica_configs)

    # -- the pool behind it ------------------------------------------------------------

    @property
    def pool(self) -> Pool:
        """The pool behind this name, created on first use (again after a fork or close)."""
        pool = self._pool
        if pool is None:
            with self._pool_lock:
                pool = self._pool
                if pool is None:
                    pool = self._pool = Pool(config=self.config)
        return pool

    def _read_pool(self) -> Pool:
        if not self._replica_configs:
            return self.pool
        if self._replica_cycle is None:
            with self._pool_lock:
                if self._replica_cycle is None:
                    self._replica_pools = [Pool(config=cfg) for cfg in self._replica_configs]
                    for replica in self._replica_pools:
                        # A read-only error from a replica is expected, not a failover.
                        replica.meant_for_primary = False
                    self._replica_cycle = itertools.cycle(self._replica_pools)
        return next(self._replica_cycle)

    # -- the seed recipe's API ----------------------------------------------------------

    def get_connection(self, timeout: float | None = None) -> Any:
        """Borrow a connection; waits up to ``timeout`` then raises ``PoolTimeout``."""
        return self.pool.getconn(timeout)

    def release_connection(self, conn: Any) -> None:
        """Return a connection: rolls back an open transaction, discards a broken one."""
        pool = self._pool
        if pool is not None and conn in pool._lent:
            pool.putconn(conn)
            return
        for replica in self._replica_pools or ():
            if conn in replica._lent:
                replica.putconn(conn)
                return
        if pool is None:
            raise PoolError(
                f"Database({self.name!r}) has no open pool, so it did not lend this connection; "
                "return each connection to the Database it came from"
            )
        pool.putconn(conn)

    def close_all_connections(self, timeout: float = 5.0) -> None:
        """Close the pool (and replica pools); the next use opens a fresh one."""
        with self._pool_lock:
            pools = [p for p in [self._pool, *(self._replica_pools or ())] if p is not None]
            self._pool = None
            self._replica_pools = None
            self._replica_cycle = None
        for pool in pools:
            pool.close(timeout)

    # -- preferred, exception-safe forms -----------------------------------------------

    @contextlib.contextmanager
    def connection(self, timeout: float | None = None, *, readonly: bool = False) -> Iterator[Any]:
        """Borrow for a ``with`` block; ``readonly=True`` uses a replica when configured."""
        pool = self._read_pool() if readonly else self.pool
        with pool.connection(timeout) as conn:
            yield conn

    @contextlib.contextmanager
    def transaction(self, timeout: float | None = None) -> Iterator[Any]:
        """Borrow inside BEGIN … COMMIT, ROLLBACK on error."""
        with self.pool.transaction(timeout) as conn:
            yield conn

    def stats(self) -> Any:
        """The primary pool's :class:`~poolkeeper.PoolStats`."""
        return self.pool.stats()

    def health(self) -> dict[str, object]:
        """The primary pool's health, answered at once."""
        return self.pool.health()

    def drain(self) -> None:
        """Replace every connection of the primary pool (see ``Pool.drain``)."""
        self.pool.drain()

    # -- process-wide -------------------------------------------------------------------

    @classmethod
    def reset_all(cls, timeout: float = 5.0) -> None:
        """Close every ``Database`` singleton and forget them (tests, shutdown hooks)."""
        with cls._registry_lock:
            instances = list(cls._instances.values())
            cls._instances.clear()
        for instance in instances:
            instance.close_all_connections(timeout)

    def _after_fork_in_child(self) -> None:
        # The pools' own fork hooks make their sockets inert; we just stop using them.
        self._pool = None
        self._replica_pools = None
        self._replica_cycle = None
        self._pool_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"<poolkeeper.Database {self.name!r} dsn={self.config.redacted_dsn()!r}>"

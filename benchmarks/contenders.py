"""Synchronous contenders: pools and dedicated-connection baselines behind one interface.

Every contender hands each worker thread a ``(get, put)`` pair. The runner times
``get()``, runs the same DB-API cursor round trip on whatever it returned and calls
``put()``. Pools bind their own methods directly, so the measured cost is the
library's, not a wrapper's.

All connections run in autocommit: otherwise each ``SELECT 1`` would open a
transaction that pools roll back on return (an extra round trip) while a dedicated
connection would sit "idle in transaction" forever, and the comparison would be
about transaction handling, not pooling.
"""

from __future__ import annotations

import importlib
import sys
import threading
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable
from typing import Any, ClassVar

from poolkeeper import Pool, PoolTimeout

SQL = "SELECT 1"


#: a worker's checkout: returns a DB-API connection (drivers differ, hence Any)
Getter = Callable[[], Any]
#: a worker's return of the connection it got from the paired Getter
Putter = Callable[[Any], None]


class ContenderUnavailableError(Exception):
    """The contender cannot run here: its library is not installed."""


def poolkeeper_settings(size: int, driver: str = "psycopg") -> dict[str, Any]:
    """poolkeeper's defaults but for the pool size and, on psycopg, autocommit (as every
    peer gets), so the workload stays identical to theirs."""
    settings: dict[str, Any] = {"min_size": size, "max_size": size, "timeout": 30.0}
    if driver == "asyncpg":
        # asyncpg runs every statement outside a transaction already.
        settings["driver"] = driver
    else:
        settings["connect_kwargs"] = {"autocommit": True}
    return settings


class SyncContender(ABC):
    """One pool (or baseline) under test; opened once per round, shared by all thread counts."""

    name: ClassVar[str]
    #: the dedicated baseline with the same driver, for the "vs dedicated" ratio
    reference: ClassVar[str]
    #: a dedicated baseline owns one connection per worker; it only runs up to pool size
    dedicated: ClassVar[bool] = False
    #: exceptions from ``get()`` that mean "pool exhausted": counted, not fatal
    exhausted: tuple[type[BaseException], ...] = ()

    def __init__(self, dsn: str, size: int) -> None:
        self.dsn = dsn
        self.size = size

    @classmethod
    @abstractmethod
    def check_available(cls) -> None:
        """Raise ContenderUnavailableError if the library is missing (cheap: imports only)."""

    @abstractmethod
    def open(self) -> None:
        """Create the pool and wait until ``size`` connections are open."""

    @abstractmethod
    def bind(self, worker: int) -> tuple[Getter, Putter]:
        """The checkout and return callables for worker number ``worker``."""

    @abstractmethod
    def close(self) -> None:
        """Close every connection."""


def _require(module: str) -> None:
    try:
        importlib.import_module(module)
    except Exception as exc:
        raise ContenderUnavailableError(f"import {module} failed: {exc!r}") from exc


class PoolkeeperPool(SyncContender):
    """``poolkeeper.Pool`` with default settings."""

    name = "poolkeeper"
    reference = "dedicated_psycopg"

    exhausted = (PoolTimeout,)

    @classmethod
    def check_available(cls) -> None:
        """Always available: the harness measures the poolkeeper it ships with."""

    def open(self) -> None:
        """Create the pool and wait for ``min_size`` connections."""
        self.pool = Pool(self.dsn, **poolkeeper_settings(self.size))
        self.pool.wait()

    def bind(self, worker: int) -> tuple[Getter, Putter]:
        """The pool's own bound methods."""
        return self.pool.getconn, self.pool.putconn

    def close(self) -> None:
        """Close the pool."""
        self.pool.close()


class PsycopgPool(SyncContender):
    """``psycopg_pool.ConnectionPool``, min_size = max_size, default settings otherwise."""

    name = "psycopg_pool"
    reference = "dedicated_psycopg"

    @classmethod
    def check_available(cls) -> None:
        """Raise unless psycopg_pool imports."""
        _require("psycopg_pool")

    def open(self) -> None:
        """Create the pool (open=True) and wait for all connections."""
        from psycopg_pool import ConnectionPool, PoolTimeout

        self.exhausted = (PoolTimeout,)
        self.pool: ConnectionPool[Any] = ConnectionPool(
            self.dsn,
            min_size=self.size,
            max_size=self.size,
            kwargs={"autocommit": True},
            open=True,
            timeout=30.0,
        )
        self.pool.wait()

    def bind(self, worker: int) -> tuple[Getter, Putter]:
        """The pool's own bound methods."""
        return self.pool.getconn, self.pool.putconn

    def close(self) -> None:
        """Close the pool."""
        self.pool.close()


class Psycopg2Pool(SyncContender):
    """``psycopg2.pool.ThreadedConnectionPool(size, size)``; it raises PoolError when empty."""

    name = "psycopg2_pool"
    reference = "dedicated_psycopg2"

    @classmethod
    def check_available(cls) -> None:
        """Raise unless psycopg2 imports."""
        _require("psycopg2.pool")

    def open(self) -> None:
        """Create the pool; switch every connection to autocommit before it is lent."""
        from psycopg2.pool import PoolError, ThreadedConnectionPool

        self.exhausted = (PoolError,)
        self.pool = ThreadedConnectionPool(self.size, self.size, self.dsn)
        # The pool has no connection hook; borrow all once to set autocommit.
        conns = [self.pool.getconn() for _ in range(self.size)]
        for conn in conns:
            conn.autocommit = True
        for conn in conns:
            self.pool.putconn(conn)

    def bind(self, worker: int) -> tuple[Getter, Putter]:
        """The pool's own bound methods."""
        return self.pool.getconn, self.pool.putconn

    def close(self) -> None:
        """Close every connection."""
        self.pool.closeall()


class SQLAlchemyQueuePool(SyncContender):
    """SQLAlchemy ``QueuePool(creator, pool_size=size, max_overflow=0)`` over psycopg 3.

    Used directly rather than through an Engine so that each iteration is exactly one
    checkout + cursor + return, the same as for the other pools. Its default
    reset-on-return calls ``rollback()``, which psycopg skips for an idle autocommit
    connection, so it costs no round trip.
    """

    name = "sqlalchemy"
    reference = "dedicated_psycopg"

    @classmethod
    def check_available(cls) -> None:
        """Raise unless SQLAlchemy 2 and psycopg import."""
        _require("sqlalchemy.pool")
        _require("psycopg")

    def open(self) -> None:
        """Create the pool and fill it by borrowing every connection once."""
        import psycopg
        from sqlalchemy.exc import TimeoutError as SATimeout
        from sqlalchemy.pool import QueuePool

        dsn = self.dsn

        def creator() -> Any:
            return psycopg.connect(dsn, autocommit=True)

        self.exhausted = (SATimeout,)
        self.pool = QueuePool(creator, pool_size=self.size, max_overflow=0, timeout=30.0)
        conns = [self.pool.connect() for _ in range(self.size)]
        # The proxy's class: its unbound close() is the cheapest way to return a connection.
        self._close: Callable[[Any], None] = type(conns[0]).close
        for conn in conns:
            conn.close()

    def bind(self, worker: int) -> tuple[Getter, Putter]:
        """``pool.connect`` and the proxy's ``close``."""
        return self.pool.connect, self._close

    def close(self) -> None:
        """Dispose of the pool."""
        self.pool.dispose()


class SQLAlchemyOnPoolkeeper(SyncContender):
    """SQLAlchemy's pool API over poolkeeper (``poolkeeper.integrations.sqlalchemy``),
    used like :class:`SQLAlchemyQueuePool`: the engine's pool directly, one checkout +
    cursor + return per iteration, with poolkeeper's default settings."""

    name = "sqlalchemy_poolkeeper"
    reference = "dedicated_psycopg"

    exhausted = (PoolTimeout,)

    @classmethod
    def check_available(cls) -> None:
        """Raise unless SQLAlchemy 2 (with greenlet) and psycopg import."""
        _require("sqlalchemy.ext.asyncio")
        _require("psycopg")

    def open(self) -> None:
        """Create the engine and wait for ``min_size`` connections."""
        from poolkeeper.integrations.sqlalchemy import create_engine

        # A fresh Database name per open (the default): each round opens a new engine.
        self.engine = create_engine(self.dsn, **poolkeeper_settings(self.size))
        self.pool = self.engine.pool
        self.pool.database.pool.wait()  # type: ignore[attr-defined]
        conn = self.pool.connect()  # runs the dialect's first-connect set-up once
        self._close: Callable[[Any], None] = type(conn).close
        conn.close()

    def bind(self, worker: int) -> tuple[Getter, Putter]:
        """``pool.connect`` and the proxy's ``close``."""
        return self.pool.connect, self._close

    def close(self) -> None:
        """Close the poolkeeper database behind the engine."""
        self.pool.database.close_all_connections()  # type: ignore[attr-defined]


class FifoHandOff:
    """The least a first-come-first-served pool can do: a stack of connections, one
    lock, and a lock per waiter that the returner releases after handing it the
    connection. No timeout, check, reset, statistics or fork safety."""

    def __init__(self, conns: list[Any]) -> None:
        self.idle = deque(conns)
        self.waiters: deque[list[Any]] = deque()
        self.lock = threading.Lock()

    def get(self) -> Any:
        with self.lock:
            if self.idle and not self.waiters:
                return self.idle.pop()
            waiter: list[Any] = [threading.Lock(), None]
            waiter[0].acquire()
            self.waiters.append(waiter)
        waiter[0].acquire()
        return waiter[1]

    def put(self, conn: Any) -> None:
        with self.lock:
            if not self.waiters:
                self.idle.append(conn)
                return
            waiter = self.waiters.popleft()
            waiter[1] = conn
        waiter[0].release()


class FifoFloor(SyncContender):
    """Not a pool to use: :class:`FifoHandOff` over plain psycopg connections.

    Above pool size it shows what first-come-first-served hand-off itself costs on
    this host, apart from any pool's features: the floor for poolkeeper's waiting
    path (docs/benchmarks.md, "where the rest of the gap goes").
    """

    name = "fifo_floor"
    reference = "dedicated_psycopg"

    @classmethod
    def check_available(cls) -> None:
        """Raise unless psycopg imports."""
        _require("psycopg")

    def open(self) -> None:
        """Open ``size`` autocommit connections."""
        import psycopg

        self.conns = [psycopg.connect(self.dsn, autocommit=True) for _ in range(self.size)]
        self.pool = FifoHandOff(self.conns)

    def bind(self, worker: int) -> tuple[Getter, Putter]:
        """The hand-off's own bound methods."""
        return self.pool.get, self.pool.put

    def close(self) -> None:
        """Close the connections."""
        for conn in self.conns:
            conn.close()


class _Dedicated(SyncContender):
    """Each worker owns one connection; checkout is a function call returning it."""

    dedicated = True

    @abstractmethod
    def connect(self) -> Any:
        """Open one autocommit connection."""

    def open(self) -> None:
        """Open one connection per worker slot."""
        self.conns = [self.connect() for _ in range(self.size)]

    def bind(self, worker: int) -> tuple[Getter, Putter]:
        """Closures that hand out this worker's own connection and do nothing on return."""
        conn = self.conns[worker]

        def get() -> Any:
            return conn

        def put(_conn: Any) -> None:
            return None

        return get, put

    def close(self) -> None:
        """Close the connections."""
        for conn in self.conns:
            conn.close()


class DedicatedPsycopg(_Dedicated):
    """Baseline for psycopg 3 pools: one ``psycopg.Connection`` per thread."""

    name = "dedicated_psycopg"
    reference = "dedicated_psycopg"

    @classmethod
    def check_available(cls) -> None:
        """Raise unless psycopg imports."""
        _require("psycopg")

    def connect(self) -> Any:
        """Open one autocommit connection."""
        import psycopg

        return psycopg.connect(self.dsn, autocommit=True)


class DedicatedPsycopg2(_Dedicated):
    """Baseline for psycopg2's pool: one psycopg2 connection per thread."""

    name = "dedicated_psycopg2"
    reference = "dedicated_psycopg2"

    @classmethod
    def check_available(cls) -> None:
        """Raise unless psycopg2 imports."""
        _require("psycopg2")

    def connect(self) -> Any:
        """Open one autocommit connection."""
        import psycopg2

        conn = psycopg2.connect(self.dsn)
        conn.autocommit = True
        return conn


#: in the order they are listed in reports
SYNC_CONTENDERS: tuple[type[SyncContender], ...] = (
    PoolkeeperPool,
    PsycopgPool,
    Psycopg2Pool,
    SQLAlchemyQueuePool,
    SQLAlchemyOnPoolkeeper,
    FifoFloor,
    DedicatedPsycopg,
    DedicatedPsycopg2,
)

#: the pools whose bare checkout + return the microbenchmark times
MICRO_CONTENDERS: tuple[type[SyncContender], ...] = (
    PoolkeeperPool,
    PsycopgPool,
    Psycopg2Pool,
    SQLAlchemyQueuePool,
    SQLAlchemyOnPoolkeeper,
)


def note(message: str) -> None:
    """Progress and skip notes go to stderr so stdout holds only the report."""
    print(message, file=sys.stderr, flush=True)

"""asyncio contenders: pools and dedicated-connection baselines behind one interface.

Each contender gives every task an ``(acquire, release)`` pair of coroutine functions
and a ``query`` coroutine function for its driver. Pools and the baseline of the same
driver share the same ``query``, so the ratio between them measures only the pool.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, ClassVar

from benchmarks.contenders import SQL, ContenderUnavailableError, poolkeeper_settings
from poolkeeper import PoolTimeout
from poolkeeper.async_pool import AsyncPool

AsyncGetter = Callable[[], Awaitable[Any]]
AsyncPutter = Callable[[Any], Awaitable[None]]
Query = Callable[[Any], Awaitable[None]]


async def query_psycopg(conn: Any) -> None:
    """Cursor round trip on a psycopg ``AsyncConnection`` (the sync workload's twin)."""
    cur = conn.cursor()
    await cur.execute(SQL)
    await cur.fetchone()
    await cur.close()


async def query_asyncpg(conn: Any) -> None:
    """asyncpg has no client cursor outside a transaction; ``fetchval`` is its round trip."""
    await conn.fetchval(SQL)


#: the per-driver round trip, by ``AsyncContender.driver``
QUERIES: dict[str, Query] = {"psycopg": query_psycopg, "asyncpg": query_asyncpg}


def _require(module: str) -> None:
    try:
        __import__(module)
    except Exception as exc:
        raise ContenderUnavailableError(f"import {module} failed: {exc!r}") from exc


class AsyncFifoHandOff:
    """The least a first-come-first-served asyncio pool can do: a stack of connections
    and a queue of futures; a return hands its connection to the first future. No
    timeout, check, reset, statistics, cancellation handling or loop binding."""

    def __init__(self, conns: list[Any]) -> None:
        self.idle = list(conns)
        self.waiters: deque[asyncio.Future[Any]] = deque()

    async def get(self) -> Any:
        """Take an idle connection if nobody is queued, else queue and wait for one."""
        if self.idle and not self.waiters:
            return self.idle.pop()
        waiter: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.waiters.append(waiter)
        return await waiter

    async def put(self, conn: Any) -> None:
        """Hand ``conn`` to the first waiter, or put it back on the stack."""
        waiters = self.waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(conn)
                return
        self.idle.append(conn)


class AsyncContender(ABC):
    """One asyncio pool (or baseline); opened once per round inside the round's event loop."""

    name: ClassVar[str]
    reference: ClassVar[str]
    dedicated: ClassVar[bool] = False
    #: key into QUERIES: pools and baselines of one driver share the round trip code
    driver: ClassVar[str]
    exhausted: tuple[type[BaseException], ...] = ()

    def __init__(self, dsn: str, size: int) -> None:
        self.dsn = dsn
        self.size = size

    @classmethod
    @abstractmethod
    def check_available(cls) -> None:
        """Raise ContenderUnavailableError if the library is missing."""

    @abstractmethod
    async def open(self) -> None:
        """Create the pool and wait until ``size`` connections are open."""

    @abstractmethod
    def bind(self, worker: int) -> tuple[AsyncGetter, AsyncPutter]:
        """The acquire and release coroutine functions for task number ``worker``."""

    @abstractmethod
    async def close(self) -> None:
        """Close every connection."""


class _PoolkeeperAsync(AsyncContender):
    exhausted = (PoolTimeout,)

    @classmethod
    def check_available(cls) -> None:
        """Always available on psycopg: the harness measures the poolkeeper it ships with."""

    async def open(self) -> None:
        """Create the pool, open it and wait for ``min_size`` connections."""
        self.pool = AsyncPool(self.dsn, open=False, **poolkeeper_settings(self.size, self.driver))
        await self.pool.open()
        await self.pool.wait()

    def bind(self, worker: int) -> tuple[AsyncGetter, AsyncPutter]:
        """The pool's own methods."""
        return self.pool.getconn, self.pool.putconn

    async def close(self) -> None:
        """Close the pool."""
        await self.pool.close()


class PoolkeeperAsyncPool(_PoolkeeperAsync):
    """``poolkeeper.AsyncPool`` on psycopg 3, default settings."""

    name = "poolkeeper_async"
    reference = "dedicated_async_psycopg"
    driver = "psycopg"


class PoolkeeperAsyncpgPool(_PoolkeeperAsync):
    """``poolkeeper.AsyncPool(driver="asyncpg")``, default settings."""

    name = "poolkeeper_asyncpg"
    reference = "dedicated_asyncpg"
    driver = "asyncpg"

    @classmethod
    def check_available(cls) -> None:
        """Raise unless asyncpg imports."""
        _require("asyncpg")


class PsycopgAsyncPool(AsyncContender):
    """``psycopg_pool.AsyncConnectionPool``, min_size = max_size."""

    name = "psycopg_pool_async"
    reference = "dedicated_async_psycopg"
    driver = "psycopg"

    @classmethod
    def check_available(cls) -> None:
        """Raise unless psycopg_pool imports."""
        _require("psycopg_pool")

    async def open(self) -> None:
        """Open explicitly: opening an async pool in its constructor is deprecated."""
        from psycopg import AsyncConnection
        from psycopg_pool import AsyncConnectionPool, PoolTimeout

        self.exhausted = (PoolTimeout,)
        self.pool: AsyncConnectionPool[AsyncConnection[Any]] = AsyncConnectionPool(
            self.dsn,
            min_size=self.size,
            max_size=self.size,
            kwargs={"autocommit": True},
            open=False,
            timeout=30.0,
        )
        await self.pool.open(wait=True)

    def bind(self, worker: int) -> tuple[AsyncGetter, AsyncPutter]:
        """The pool's own coroutine methods."""
        return self.pool.getconn, self.pool.putconn

    async def close(self) -> None:
        """Close the pool."""
        await self.pool.close()


class AsyncpgPool(AsyncContender):
    """``asyncpg.create_pool(min_size=size, max_size=size)``, its defaults otherwise."""

    name = "asyncpg_pool"
    reference = "dedicated_asyncpg"
    driver = "asyncpg"

    @classmethod
    def check_available(cls) -> None:
        """Raise unless asyncpg imports."""
        _require("asyncpg")

    async def open(self) -> None:
        """Create the pool; asyncpg opens ``min_size`` connections before returning."""
        import asyncpg

        self.pool = await asyncpg.create_pool(
            self.dsn, min_size=self.size, max_size=self.size, command_timeout=30.0
        )
        self.exhausted = (TimeoutError,)

    def bind(self, worker: int) -> tuple[AsyncGetter, AsyncPutter]:
        """``acquire`` (its result is awaitable) and ``release``, unwrapped."""
        return self.pool.acquire, self.pool.release

    async def close(self) -> None:
        """Close the pool."""
        await self.pool.close()


class _OwnConnections(AsyncContender):
    """Contenders that open ``size`` plain connections of their driver themselves."""

    @abstractmethod
    async def connect(self) -> Any:
        """Open one connection."""

    async def open(self) -> None:
        """Open ``size`` connections."""
        self.conns = [await self.connect() for _ in range(self.size)]

    async def close(self) -> None:
        """Close the connections."""
        for conn in self.conns:
            await conn.close()


class _PsycopgConnections(_OwnConnections):
    reference = "dedicated_async_psycopg"
    driver = "psycopg"

    @classmethod
    def check_available(cls) -> None:
        """Raise unless psycopg imports."""
        _require("psycopg")

    async def connect(self) -> Any:
        """Open one autocommit ``psycopg.AsyncConnection``."""
        from psycopg import AsyncConnection

        return await AsyncConnection.connect(self.dsn, autocommit=True)


class _AsyncpgConnections(_OwnConnections):
    reference = "dedicated_asyncpg"
    driver = "asyncpg"

    @classmethod
    def check_available(cls) -> None:
        """Raise unless asyncpg imports."""
        _require("asyncpg")

    async def connect(self) -> Any:
        """Open one asyncpg connection."""
        import asyncpg

        return await asyncpg.connect(self.dsn)


class _AsyncFifoFloor(_OwnConnections):
    """Not a pool to use: :class:`AsyncFifoHandOff` over plain connections of the driver.

    Above pool size it shows what a first-come-first-served hand-off through asyncio
    futures costs by itself: the floor for the asyncio targets at 64 tasks
    (docs/benchmarks.md)."""

    async def open(self) -> None:
        """Open ``size`` connections behind one hand-off."""
        await super().open()
        self.pool = AsyncFifoHandOff(self.conns)

    def bind(self, worker: int) -> tuple[AsyncGetter, AsyncPutter]:
        """The hand-off's own coroutine methods."""
        return self.pool.get, self.pool.put


class _AsyncDedicated(_OwnConnections):
    """Each task owns one connection; checkout is a coroutine returning it."""

    dedicated = True

    def bind(self, worker: int) -> tuple[AsyncGetter, AsyncPutter]:
        """Coroutines that hand out this task's own connection and do nothing on return."""
        conn = self.conns[worker]

        async def get() -> Any:
            return conn

        async def put(_conn: Any) -> None:
            return None

        return get, put


class FifoFloorAsync(_PsycopgConnections, _AsyncFifoFloor):
    """The asyncio FIFO floor over ``psycopg.AsyncConnection``."""

    name = "fifo_floor_async"


class FifoFloorAsyncpg(_AsyncpgConnections, _AsyncFifoFloor):
    """The asyncio FIFO floor over asyncpg connections."""

    name = "fifo_floor_asyncpg"


class DedicatedAsyncPsycopg(_PsycopgConnections, _AsyncDedicated):
    """Baseline: one ``psycopg.AsyncConnection`` per task."""

    name = "dedicated_async_psycopg"


class DedicatedAsyncpg(_AsyncpgConnections, _AsyncDedicated):
    """Baseline: one asyncpg connection per task."""

    name = "dedicated_asyncpg"


ASYNC_CONTENDERS: tuple[type[AsyncContender], ...] = (
    PoolkeeperAsyncPool,
    PoolkeeperAsyncpgPool,
    PsycopgAsyncPool,
    AsyncpgPool,
    FifoFloorAsync,
    FifoFloorAsyncpg,
    DedicatedAsyncPsycopg,
    DedicatedAsyncpg,
)

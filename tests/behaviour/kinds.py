"""The pool kinds the behaviour suite runs against, and what lets one test drive them all.

A behaviour test is an ``async def`` written once. For an ``AsyncPool`` kind it gets
the real pool, on the test's event loop. For a ``Pool`` kind it gets a
:class:`BlockingPool`: the same methods, ``async def`` only in name, each calling the
sync pool inline, so the call blocks the calling thread exactly as in a threaded
program. Concurrency goes through :meth:`Kind.spawn`: an asyncio task for an
``AsyncPool``, an OS thread for a ``Pool``. Each pool thus meets its own concurrency
model (threads that block, or tasks that await), never an emulation of the other.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import importlib.util
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Protocol

import psycopg
import pytest

from poolkeeper import AsyncDatabase, AsyncPool, Database, Pool
from poolkeeper.config import PoolConfig
from poolkeeper.stats import PoolStats

__all__ = [
    "ALL_KINDS",
    "PER_MODEL_KINDS",
    "AnyPool",
    "BlockingDatabase",
    "BlockingPool",
    "Kind",
    "assert_books_balance",
    "autocommit",
    "backend_pid",
    "begin",
    "close",
    "commit",
    "driver_of",
    "execute",
    "fetchval",
    "is_closed",
    "lending_pools",
    "rollback",
    "server_state",
    "settle",
    "sqlstate",
    "wait_until",
]


@dataclass(frozen=True)
class Kind:
    """One pool class with one driver."""

    model: str  # "threads" (Pool) or "asyncio" (AsyncPool)
    driver: str

    @property
    def id(self) -> str:
        """``sync-psycopg``, ``async-asyncpg``…: the test id suffix."""
        return f"{'sync' if self.model == 'threads' else 'async'}-{self.driver}"

    @property
    def is_async(self) -> bool:
        """True for an ``AsyncPool`` kind."""
        return self.model == "asyncio"

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> Awaitable[Any]:
        """Run ``coro`` concurrently with the test: a task on the pool's loop for an
        ``AsyncPool``; its own OS thread (with a loop of its own for any sleeps) for a
        ``Pool``. Await the result to join it."""
        if self.is_async:
            return asyncio.ensure_future(coro)
        done: concurrent.futures.Future[Any] = concurrent.futures.Future()

        def run() -> None:
            try:
                done.set_result(asyncio.run(coro))
            except BaseException as exc:  # handed to whoever awaits it
                done.set_exception(exc)

        threading.Thread(target=run, daemon=True, name=f"behaviour-{self.id}").start()
        return asyncio.wrap_future(done)

    async def sleep(self, seconds: float) -> None:
        """Sleep the way this kind's code does: ``asyncio.sleep`` in a task, a blocking
        ``time.sleep`` in a thread (so it also works inside a hook, see :meth:`hook`)."""
        if self.is_async:
            await asyncio.sleep(seconds)
        else:
            time.sleep(seconds)

    def hook(self, fn: Callable[[Any], Coroutine[Any, Any, Any]]) -> Callable[[Any], Any]:
        """A ``configure=``/``check=`` callable for this kind, from one ``async def``.

        An ``AsyncPool`` awaits it. A ``Pool`` calls it on whichever thread runs the
        hook, blocking: the coroutine is stepped to its end right there, which works
        because on a ``Pool`` kind the helpers here (and :meth:`sleep`) never suspend.
        """
        if self.is_async:
            return fn

        def blocking(conn: Any) -> Any:
            coro = fn(conn)
            try:
                coro.send(None)
            except StopIteration as stop:
                return stop.value
            coro.close()
            raise AssertionError("a hook for a Pool awaited something that suspends")

        return blocking

    async def connect(self, dsn: str) -> Any:
        """A connection of this kind's driver made outside any pool."""
        if self.driver == "psycopg":
            if self.is_async:
                return await psycopg.AsyncConnection.connect(dsn)
            return psycopg.connect(dsn)
        if self.driver == "psycopg2":
            import psycopg2

            return psycopg2.connect(dsn)
        import asyncpg

        return await asyncpg.connect(dsn)

    def connection_types(self) -> tuple[type, ...]:
        """What this kind's pool lends: the driver's own connection class."""
        if self.driver == "psycopg":
            return (psycopg.AsyncConnection,) if self.is_async else (psycopg.Connection,)
        if self.driver == "psycopg2":
            import psycopg2.extensions

            return (psycopg2.extensions.connection,)
        import asyncpg

        return (asyncpg.Connection,)

    @property
    def database_class(self) -> type[Database[Any]] | type[AsyncDatabase[Any]]:
        """``Database`` or ``AsyncDatabase``: the singleton class of this kind's model."""
        return AsyncDatabase if self.is_async else Database

    async def forget_databases(self) -> None:
        """Close and forget every singleton of this kind's class (``reset_all``)."""
        if self.is_async:
            await AsyncDatabase.reset_all(timeout=1.0)
        else:
            Database.reset_all(timeout=1.0)

    def pool(self, dsn: Any, **settings: Any) -> AnyPool:
        """A pool of this kind: an ``AsyncPool``, or a ``Pool`` behind a
        :class:`BlockingPool` (``driver`` defaults to this kind's)."""
        settings.setdefault("driver", self.driver)
        if self.is_async:
            return AsyncPool(dsn, **settings)
        return BlockingPool(Pool(dsn, **settings))

    def database(self, name: str, **settings: Any) -> BlockingDatabase | AsyncDatabase:
        """This kind's process-wide singleton (``Database`` or ``AsyncDatabase``)."""
        settings.setdefault("driver", self.driver)
        if self.is_async:
            return AsyncDatabase(name, **settings)
        return BlockingDatabase(Database(name, **settings))


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def _param(kind: Kind, module: str) -> Any:
    return pytest.param(
        kind,
        id=kind.id,
        marks=pytest.mark.skipif(
            not _installed(module),
            reason=f"{module} is not installed (pip install 'poolkeeper[{module}]')",
        ),
    )


SYNC_PSYCOPG = Kind("threads", "psycopg")
SYNC_PSYCOPG2 = Kind("threads", "psycopg2")
ASYNC_PSYCOPG = Kind("asyncio", "psycopg")
ASYNC_ASYNCPG = Kind("asyncio", "asyncpg")

#: Every pool class with every driver it supports.
ALL_KINDS = [
    _param(SYNC_PSYCOPG, "psycopg"),
    _param(SYNC_PSYCOPG2, "psycopg2"),
    _param(ASYNC_PSYCOPG, "psycopg"),
    _param(ASYNC_ASYNCPG, "asyncpg"),
]
#: One driver per pool class, for behaviours of the pool's own bookkeeping.
PER_MODEL_KINDS = [ALL_KINDS[0], ALL_KINDS[2]]


class AnyPool(Protocol):
    """What a behaviour test may do with a pool: ``AsyncPool``'s API, which
    :class:`BlockingPool` mirrors for a ``Pool``."""

    name: str

    @property
    def config(self) -> PoolConfig: ...
    @property
    def closed(self) -> bool: ...
    async def open(self) -> None: ...
    async def wait(self, timeout: float | None = None) -> None: ...
    async def close(self, timeout: float = 5.0) -> None: ...
    async def getconn(self, timeout: float | None = None) -> Any: ...
    async def putconn(self, conn: Any) -> None: ...
    def connection(
        self, timeout: float | None = None
    ) -> contextlib.AbstractAsyncContextManager[Any]: ...
    def transaction(
        self, timeout: float | None = None
    ) -> contextlib.AbstractAsyncContextManager[Any]: ...
    async def resize(self, min_size: int, max_size: int) -> None: ...
    async def check(self) -> None: ...
    async def drain(self) -> None: ...
    def stats(self) -> PoolStats: ...
    def health(self) -> dict[str, object]: ...


class BlockingPool:
    """A ``Pool`` behind ``AsyncPool``'s method names. Every call runs the sync
    method inline and blocks the calling thread, as it would in a threaded program."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.name = pool.name

    @property
    def config(self) -> PoolConfig:
        """The pool's settings."""
        return self.pool.config

    @property
    def closed(self) -> bool:
        """True once the pool was closed (or made with ``open=False``)."""
        return self.pool.closed

    async def open(self) -> None:
        """``Pool.open``."""
        self.pool.open()

    async def wait(self, timeout: float | None = None) -> None:
        """``Pool.wait``."""
        self.pool.wait(timeout)

    async def close(self, timeout: float = 5.0) -> None:
        """``Pool.close``."""
        self.pool.close(timeout)

    async def getconn(self, timeout: float | None = None) -> Any:
        """``Pool.getconn``."""
        return self.pool.getconn(timeout)

    async def putconn(self, conn: Any) -> None:
        """``Pool.putconn``."""
        self.pool.putconn(conn)

    @contextlib.asynccontextmanager
    async def connection(self, timeout: float | None = None) -> AsyncIterator[Any]:
        """``Pool.connection``."""
        with self.pool.connection(timeout) as conn:
            yield conn

    @contextlib.asynccontextmanager
    async def transaction(self, timeout: float | None = None) -> AsyncIterator[Any]:
        """``Pool.transaction``."""
        with self.pool.transaction(timeout) as conn:
            yield conn

    async def resize(self, min_size: int, max_size: int) -> None:
        """``Pool.resize``."""
        self.pool.resize(min_size, max_size)

    async def check(self) -> None:
        """``Pool.check``."""
        self.pool.check()

    async def drain(self) -> None:
        """``Pool.drain``."""
        self.pool.drain()

    def stats(self) -> PoolStats:
        """``Pool.stats``."""
        return self.pool.stats()

    def health(self) -> dict[str, object]:
        """``Pool.health``."""
        return self.pool.health()

    async def __aenter__(self) -> BlockingPool:
        self.pool.__enter__()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.pool.__exit__(*exc_info)

    def __repr__(self) -> str:
        return repr(self.pool)


class BlockingDatabase:
    """A ``Database`` behind ``AsyncDatabase``'s method names (see :class:`BlockingPool`)."""

    def __init__(self, db: Database) -> None:
        self.db = db

    @property
    def pool(self) -> Pool:
        """``Database.pool``: the primary ``Pool`` itself (its methods block)."""
        pool: Pool = self.db.pool
        return pool

    @contextlib.asynccontextmanager
    async def connection(
        self, timeout: float | None = None, *, readonly: bool = False
    ) -> AsyncIterator[Any]:
        """``Database.connection``."""
        with self.db.connection(timeout, readonly=readonly) as conn:
            yield conn

    @contextlib.asynccontextmanager
    async def transaction(
        self, timeout: float | None = None, *, readonly: bool = False
    ) -> AsyncIterator[Any]:
        """``Database.transaction``."""
        with self.db.transaction(timeout, readonly=readonly) as conn:
            yield conn

    async def get_connection(self, timeout: float | None = None) -> Any:
        """``Database.get_connection``."""
        return self.db.get_connection(timeout)

    async def release_connection(self, conn: Any) -> None:
        """``Database.release_connection``."""
        self.db.release_connection(conn)

    async def close_all_connections(self, timeout: float = 5.0) -> None:
        """``Database.close_all_connections``."""
        self.db.close_all_connections(timeout)

    def stats(self) -> PoolStats:
        """``Database.stats``."""
        stats: PoolStats = self.db.stats()
        return stats

    def health(self) -> dict[str, object]:
        """``Database.health``."""
        return self.db.health()

    async def drain(self) -> None:
        """``Database.drain``."""
        self.db.drain()


def driver_of(pool: AnyPool) -> Any:
    """The pool's driver adapter (``poolkeeper.drivers``), for asking it what it sees."""
    real: Any = pool.pool if isinstance(pool, BlockingPool) else pool
    return real._driver


def lending_pools(db: BlockingDatabase | AsyncDatabase) -> list[Pool | AsyncPool]:
    """The primary and replica pools behind ``db`` (in this loop, for an AsyncDatabase)."""
    if isinstance(db, BlockingDatabase):
        return [db.db.pool, *(db.db._replica_pools or [])]
    return list(db._loop_pools().all())


# -- driver-neutral SQL ----------------------------------------------------------------
# On a Pool kind these block and never suspend, so they also work inside Kind.hook.


def _is_asyncpg(conn: Any) -> bool:
    return hasattr(conn, "fetchval")


def _is_psycopg2(conn: Any) -> bool:
    return type(conn).__module__.startswith(("psycopg2", "poolkeeper.drivers.psycopg2"))


async def fetchval(conn: Any, sql: str) -> Any:
    """The first column of the first row (None if no row), on any driver."""
    if _is_asyncpg(conn):
        return await conn.fetchval(sql)
    if isinstance(conn, psycopg.AsyncConnection):
        cur = await conn.execute(sql)
        row = await cur.fetchone()
    elif isinstance(conn, psycopg.Connection):
        row = conn.execute(sql).fetchone()
    else:
        with conn.cursor() as cur:
            cur.execute(sql)
            row = cur.fetchone()
    return None if row is None else row[0]


async def execute(conn: Any, sql: str) -> None:
    """Run ``sql`` (psycopg/psycopg2: inside their implicit transaction, if any)."""
    if _is_asyncpg(conn) or isinstance(conn, psycopg.AsyncConnection):
        await conn.execute(sql)
    elif isinstance(conn, psycopg.Connection):
        conn.execute(sql)
    else:
        with conn.cursor() as cur:
            cur.execute(sql)


async def begin(conn: Any) -> None:
    """Leave a transaction open: psycopg and psycopg2 start one implicitly at the
    next statement; asyncpg, in autocommit, needs an explicit one."""
    if _is_asyncpg(conn):
        await conn.transaction().start()
    else:
        await execute(conn, "SELECT 1")


async def autocommit(conn: Any, on: bool) -> None:
    """Switch psycopg/psycopg2 autocommit (asyncpg is always in autocommit)."""
    if _is_asyncpg(conn):
        return
    if isinstance(conn, psycopg.AsyncConnection):
        await conn.set_autocommit(on)
    else:
        conn.autocommit = on


async def commit(conn: Any) -> None:
    """Commit psycopg/psycopg2's implicit transaction (asyncpg has none)."""
    if _is_asyncpg(conn):
        return
    if isinstance(conn, psycopg.AsyncConnection):
        await conn.commit()
    else:
        conn.commit()


async def rollback(conn: Any) -> None:
    """Roll back psycopg/psycopg2's implicit transaction (asyncpg has none)."""
    if _is_asyncpg(conn):
        return
    if isinstance(conn, psycopg.AsyncConnection):
        await conn.rollback()
    else:
        conn.rollback()


def sqlstate(error: BaseException) -> str | None:
    """The SQLSTATE a driver's error carries (psycopg and asyncpg: ``sqlstate``,
    psycopg2: ``pgcode``)."""
    code = getattr(error, "sqlstate", None) or getattr(error, "pgcode", None)
    return None if code is None else str(code)


async def close(conn: Any) -> None:
    """Close ``conn`` as its borrower would."""
    result = conn.close()
    if isinstance(result, Awaitable):
        await result


async def settle(result: Any) -> Any:
    """``await`` what an async driver method returned; a sync one's value as is."""
    if isinstance(result, Awaitable):
        return await result
    return result


def backend_pid(conn: Any) -> int:
    """The server process behind ``conn``."""
    if _is_asyncpg(conn):
        pid: int = conn.get_server_pid()
    elif _is_psycopg2(conn):
        pid = conn.get_backend_pid()
    else:
        pid = conn.info.backend_pid
    return pid


def is_closed(conn: Any) -> bool:
    """Whether the driver considers ``conn`` closed."""
    return bool(conn.is_closed() if _is_asyncpg(conn) else conn.closed)


def server_state(admin: psycopg.Connection[Any], pid: int) -> str | None:
    """``pg_stat_activity.state`` of backend ``pid``, as the server reports it now."""
    row = admin.execute("SELECT state FROM pg_stat_activity WHERE pid = %s", [pid]).fetchone()
    return None if row is None else str(row[0])


async def wait_until(predicate: Callable[[], object], timeout: float = 5.0) -> None:
    """Poll ``predicate`` until true (yielding to the loop); fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail("condition not reached in time")
        await asyncio.sleep(0.005)


async def assert_books_balance(pool: AnyPool) -> None:
    """Once replacements have opened, every connection is idle or lent: none lost,
    none counted twice."""
    await wait_until(lambda: pool.stats().opening == 0)
    stats = pool.stats()
    assert stats.waiting == 0, stats
    assert stats.idle + stats.in_use == stats.size, stats
    assert stats.size <= stats.max_size, stats

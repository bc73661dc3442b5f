"""Fixtures and driver-neutral helpers for the asyncio tests.

A test module takes the fixtures by assigning them (``driver = async_helpers.driver``),
so that pytest finds them there without this module being a conftest.
"""

from __future__ import annotations

import asyncio
import importlib.util
import inspect
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from poolkeeper import AsyncPool, Pool
from tests.conftest import unique_pool_name

DRIVERS = [
    "psycopg",
    pytest.param(
        "asyncpg",
        marks=pytest.mark.skipif(
            importlib.util.find_spec("asyncpg") is None,
            reason="asyncpg is not installed (pip install 'poolkeeper[asyncpg]')",
        ),
    ),
]

AsyncPoolFactory = Callable[..., AsyncPool]

#: The two pool classes by name, for a test written once over both (``kind``).
POOL_CLASS_NAMES = ["Pool", "AsyncPool"]


async def maybe_await(value: Any) -> Any:
    """``value``, awaited if a pool method of the asyncio pool returned an awaitable."""
    return await value if inspect.isawaitable(value) else value


def pool_of(kind: str, dsn: str, name: str, **settings: Any) -> Pool | AsyncPool:
    """A ``Pool`` or ``AsyncPool`` (by ``kind``) with a 5 s timeout unless given."""
    settings.setdefault("timeout", 5.0)
    return (Pool if kind == "Pool" else AsyncPool)(dsn, name=name, **settings)


@pytest.fixture(params=DRIVERS)
def driver(request: pytest.FixtureRequest) -> str:
    """Each asyncio test runs once per driver."""
    name: str = request.param
    return name


@pytest.fixture
async def make_async_pool(
    dsn: str, driver: str, request: pytest.FixtureRequest
) -> AsyncIterator[AsyncPoolFactory]:
    """Build AsyncPools on the test server in the test's loop; all closed after the test."""
    pools: list[AsyncPool] = []
    default_name = unique_pool_name(request)

    def factory(*args: Any, **kwargs: Any) -> AsyncPool:
        kwargs.setdefault("name", default_name)
        kwargs.setdefault("timeout", 10.0)
        kwargs.setdefault("driver", driver)
        pool = AsyncPool(dsn if not args else args[0], **kwargs)
        pools.append(pool)
        return pool

    yield factory
    for pool in pools:
        await pool.close(timeout=1.0)


def is_asyncpg(conn: Any) -> bool:
    """True for an asyncpg connection."""
    return hasattr(conn, "fetchval")


async def fetchval(conn: Any, sql: str) -> Any:
    """The first column of the first row, on either driver."""
    if is_asyncpg(conn):
        return await conn.fetchval(sql)
    cur = await conn.execute(sql)
    row = await cur.fetchone()
    return None if row is None else row[0]


async def execute(conn: Any, sql: str) -> None:
    """Run ``sql`` on either driver (psycopg: in its implicit transaction, if any)."""
    await conn.execute(sql)


async def begin(conn: Any) -> None:
    """Leave a transaction open: psycopg starts one implicitly; asyncpg needs BEGIN."""
    if is_asyncpg(conn):
        await conn.transaction().start()
    else:
        await conn.execute("SELECT 1")


def backend_pid(conn: Any) -> int:
    """The server process behind ``conn``."""
    pid: int = conn.get_server_pid() if is_asyncpg(conn) else conn.info.backend_pid
    return pid


def is_closed(conn: Any) -> bool:
    """Whether the driver considers ``conn`` closed."""
    return bool(conn.is_closed() if is_asyncpg(conn) else conn.closed)


async def wait_until(predicate: Callable[[], object], timeout: float = 5.0) -> None:
    """Poll ``predicate`` (yielding to the loop) until true; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail("condition not reached in time")
        await asyncio.sleep(0.005)


async def assert_books_balance(pool: AsyncPool) -> None:
    """Once replacements have opened, every connection is idle or lent: none lost,
    none counted twice."""
    await wait_until(lambda: pool.stats().opening == 0)
    stats = pool.stats()
    assert stats.waiting == 0, stats
    assert stats.opening == 0, stats
    assert stats.idle + stats.in_use == stats.size, stats
    assert stats.size <= stats.max_size, stats

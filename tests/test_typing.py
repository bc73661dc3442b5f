"""The pools are generic in the connection type: what mypy sees (``make test`` runs
``mypy --strict`` over this file; a pool or connection typed ``Any`` fails it).

pytest runs the constructors (nothing connects: ``open=False``, and the singletons
open their pool at first use); the functions taking a pool are checked, not called.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import asyncpg
import psycopg
import psycopg2.extensions
from typing_extensions import assert_type

from poolkeeper import AsyncDatabase, AsyncPool, Database, Pool, PoolConfig


def _psycopg_pool(pool: Pool[psycopg.Connection[Any]]) -> None:
    conn = pool.getconn()
    assert_type(conn, psycopg.Connection[Any])
    pool.putconn(conn)
    with pool.connection() as conn:
        assert_type(conn, psycopg.Connection[Any])
    with pool.transaction() as conn:
        assert_type(conn, psycopg.Connection[Any])


def _psycopg2_pool(pool: Pool[psycopg2.extensions.connection]) -> None:
    assert_type(pool.getconn(), psycopg2.extensions.connection)
    with pool.connection() as conn:
        assert_type(conn, psycopg2.extensions.connection)


async def _async_psycopg_pool(pool: AsyncPool[psycopg.AsyncConnection[Any]]) -> None:
    conn = await pool.getconn()
    assert_type(conn, psycopg.AsyncConnection[Any])
    await pool.putconn(conn)
    async with pool.connection() as conn:
        assert_type(conn, psycopg.AsyncConnection[Any])
    async with pool.transaction() as conn:
        assert_type(conn, psycopg.AsyncConnection[Any])


async def _asyncpg_pool(pool: AsyncPool[asyncpg.Connection]) -> None:
    assert_type(await pool.getconn(), asyncpg.Connection)
    async with pool.connection() as conn:
        assert_type(conn, asyncpg.Connection)


def _database(db: Database[psycopg.Connection[Any]]) -> Iterator[object]:
    assert_type(db.pool, Pool[psycopg.Connection[Any]])
    conn = db.get_connection()
    assert_type(conn, psycopg.Connection[Any])
    db.release_connection(conn)
    with db.connection(readonly=True) as conn:
        assert_type(conn, psycopg.Connection[Any])
        yield conn
    with db.transaction() as conn:
        assert_type(conn, psycopg.Connection[Any])


async def _async_database(db: AsyncDatabase[asyncpg.Connection]) -> AsyncIterator[object]:
    assert_type(db.pool, AsyncPool[asyncpg.Connection])
    conn = await db.get_connection()
    assert_type(conn, asyncpg.Connection)
    await db.release_connection(conn)
    async with db.connection() as conn:
        assert_type(conn, asyncpg.Connection)
        yield conn
    async with db.transaction() as conn:
        assert_type(conn, asyncpg.Connection)


async def test_pool_types_follow_the_driver(dsn: str) -> None:
    pools: list[Pool[Any]] = [
        assert_type(Pool(dsn, open=False), Pool[psycopg.Connection[Any]]),
        assert_type(Pool(dsn, open=False, driver="psycopg"), Pool[psycopg.Connection[Any]]),
        assert_type(Pool(dsn, open=False, driver="psycopg2"), Pool[psycopg2.extensions.connection]),
        # With config= the driver is only known at run time.
        assert_type(Pool(config=PoolConfig.build(dsn), open=False), Pool[Any]),
    ]
    async_pools: list[AsyncPool[Any]] = [
        assert_type(AsyncPool(dsn, open=False), AsyncPool[psycopg.AsyncConnection[Any]]),
        assert_type(
            AsyncPool(dsn, open=False, driver="psycopg"), AsyncPool[psycopg.AsyncConnection[Any]]
        ),
        assert_type(AsyncPool(dsn, open=False, driver="asyncpg"), AsyncPool[asyncpg.Connection]),
        assert_type(AsyncPool(config=PoolConfig.build(dsn), open=False), AsyncPool[Any]),
    ]
    for pool in pools:
        pool.close()
    for async_pool in async_pools:
        await async_pool.close()


def test_database_types_follow_the_driver(dsn: str) -> None:
    assert_type(Database("pk-typing-default", dsn), Database[psycopg.Connection[Any]])
    assert_type(
        Database("pk-typing-psycopg2", dsn, driver="psycopg2"),
        Database[psycopg2.extensions.connection],
    )
    assert_type(AsyncDatabase("pk-typing-async", dsn), AsyncDatabase[psycopg.AsyncConnection[Any]])
    assert_type(
        AsyncDatabase("pk-typing-asyncpg", dsn, driver="asyncpg"),
        AsyncDatabase[asyncpg.Connection],
    )

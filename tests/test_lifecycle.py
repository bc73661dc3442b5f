"""Shutdown and lifecycle of the shared pools: a connection released while its pool
closes, and a ``Database`` object kept across ``reset_all()``. Checked on the server
(sessions by application_name) and by the pools' threads."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import psycopg
import pytest

from poolkeeper import AsyncDatabase, Database
from tests.conftest import backends, settled_backends


def _threads_of(name: str) -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith(f"poolkeeper-{name}-")]


def _settled_count(admin: psycopg.Connection[Any], name: str, want: int) -> int:
    """How many sessions ``name`` has, once it is ``want`` (or after 5 s): a closed
    session's backend leaves pg_stat_activity on its own schedule."""
    deadline = time.monotonic() + 5
    while (n := len(backends(admin, name))) != want and time.monotonic() < deadline:
        time.sleep(0.02)
    return n


def _no_threads_of(name: str, timeout: float = 5.0) -> list[str]:
    deadline = time.monotonic() + timeout
    while (left := _threads_of(name)) and time.monotonic() < deadline:
        time.sleep(0.02)
    return left


@pytest.fixture
def ledger(admin: psycopg.Connection[Any]) -> Any:
    admin.execute("DROP TABLE IF EXISTS pk_inflight")
    admin.execute("CREATE TABLE pk_inflight (n int)")
    yield
    admin.execute("DROP TABLE IF EXISTS pk_inflight")


def test_release_during_close_all_connections_returns_promptly(
    dsn: str, admin: psycopg.Connection[Any], ledger: None
) -> None:
    """An in-flight request during SIGTERM: its work commits, then it releases the
    connection while close_all_connections() waits for it."""
    name = "pk-inflight-sync"
    db = Database(name, dsn, min_size=1, max_size=2)
    pool = db.pool
    conn = db.get_connection()
    conn.execute("INSERT INTO pk_inflight VALUES (1)")
    conn.commit()
    closer = threading.Thread(target=db.close_all_connections, kwargs={"timeout": 30})
    closer.start()
    deadline = time.monotonic() + 5
    while not pool.closed and time.monotonic() < deadline:
        time.sleep(0.005)
    assert pool.closed
    db.release_connection(conn)  # no PoolError
    # Well before its 30 s timeout: it returned once the connection came back.
    closer.join(10)
    assert not closer.is_alive()
    assert settled_backends(admin, name, []) == []
    assert admin.execute("SELECT count(*) FROM pk_inflight").fetchone() == (1,)


def test_async_release_during_close_all_connections_returns_promptly(
    dsn: str, admin: psycopg.Connection[Any], ledger: None
) -> None:
    name = "pk-inflight-async"

    async def run() -> None:
        db = AsyncDatabase(name, dsn, min_size=1, max_size=2)
        try:
            pool = db.pool
            conn = await db.get_connection()
            await conn.execute("INSERT INTO pk_inflight VALUES (1)")
            await conn.commit()
            closer = asyncio.create_task(db.close_all_connections(timeout=30))
            while not pool.closed:
                await asyncio.sleep(0.005)
            await db.release_connection(conn)  # no PoolError
            # Well before its 30 s timeout: it returned once the connection came back.
            await asyncio.wait_for(closer, 10)
        finally:
            await AsyncDatabase.reset_all(timeout=1)

    asyncio.run(run())
    assert settled_backends(admin, name, []) == []
    assert admin.execute("SELECT count(*) FROM pk_inflight").fetchone() == (1,)


def test_database_kept_across_reset_all_stays_closable(
    dsn: str, admin: psycopg.Connection[Any]
) -> None:
    """The README's module-level ``db``, used after reset_all(): one pool per name,
    and the next reset_all() closes it."""
    name = "pk-kept-sync"
    db = Database(name, dsn, min_size=2, max_size=2)
    db.pool.wait(5)
    Database.reset_all(timeout=1)
    conn = db.get_connection()
    db.release_connection(conn)
    assert Database(name) is db
    assert Database(name).pool is db.pool
    db.pool.wait(5)
    assert _settled_count(admin, name, 2) == 2
    Database.reset_all(timeout=1)
    assert settled_backends(admin, name, []) == []
    assert _no_threads_of(name) == []


def test_database_kept_across_reset_all_uses_the_new_object_for_its_name(
    dsn: str, admin: psycopg.Connection[Any]
) -> None:
    name = "pk-kept-other"
    old = Database(name, dsn, min_size=1, max_size=2)
    old.pool.wait(5)
    Database.reset_all(timeout=1)
    new = Database(name, dsn, min_size=1, max_size=3)
    assert new is not old
    conn = old.get_connection()  # served by the new object's pool
    assert conn in new.pool._lent
    old.release_connection(conn)
    assert old.pool is new.pool
    assert _settled_count(admin, name, 1) == 1
    Database.reset_all(timeout=1)
    assert settled_backends(admin, name, []) == []
    assert _no_threads_of(name) == []


def test_async_database_kept_across_reset_all_stays_closable(
    dsn: str, admin: psycopg.Connection[Any]
) -> None:
    name = "pk-kept-async"

    async def run() -> None:
        db = AsyncDatabase(name, dsn, min_size=2, max_size=2)
        try:
            await db.pool.wait(5)
            await AsyncDatabase.reset_all(timeout=1)
            async with db.connection() as conn:
                await conn.execute("SELECT 1")
            assert AsyncDatabase(name) is db
            await db.pool.wait(5)
            assert await asyncio.to_thread(_settled_count, admin, name, 2) == 2
            await AsyncDatabase.reset_all(timeout=1)
            left = await asyncio.to_thread(settled_backends, admin, name, [])
            assert left == []
        finally:
            await AsyncDatabase.reset_all(timeout=1)

    asyncio.run(run())

"""Lending and returning, on every pool kind: what a borrower gets, and what the
next borrower finds after a return, proven on the server."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from poolkeeper import PoolError
from poolkeeper.drivers import IDLE
from tests.behaviour.conftest import MakePool
from tests.behaviour.kinds import (
    Kind,
    autocommit,
    backend_pid,
    begin,
    close,
    driver_of,
    execute,
    fetchval,
    is_closed,
    server_state,
    wait_until,
)
from tests.conftest import backends

Admin = psycopg.Connection[Any]


async def test_lends_the_drivers_own_connection_and_takes_it_back(
    make_pool: MakePool, kind: Kind
) -> None:
    pool = make_pool(min_size=1, max_size=2)
    await pool.wait(5)
    conn = await pool.getconn()
    assert isinstance(conn, kind.connection_types())
    assert await fetchval(conn, "SELECT 41 + 1") == 42
    assert pool.stats().in_use == 1
    await pool.putconn(conn)
    stats = pool.stats()
    assert (stats.in_use, stats.idle, stats.borrows) == (0, 1, 1)


async def test_min_size_connections_are_opened_in_the_background(
    make_pool: MakePool, admin: Admin
) -> None:
    pool = make_pool(min_size=3, max_size=5)
    await pool.wait(5)
    assert len(backends(admin, pool.name)) == 3
    assert pool.stats().size == 3


async def test_open_transaction_is_rolled_back_on_return(
    make_pool: MakePool, admin: Admin, kind: Kind
) -> None:
    # Proven on the server: the backend is idle, not idle in transaction, right after
    # the return; and the uncommitted row is not committed by the next borrower.
    table = f"pk_rollback_{kind.id.replace('-', '_')}"
    admin.execute(f"DROP TABLE IF EXISTS {table}; CREATE TABLE {table} (x int)")
    pool = make_pool(min_size=1, max_size=1)
    conn = await pool.getconn()
    pid = backend_pid(conn)
    await begin(conn)
    await execute(conn, f"INSERT INTO {table} VALUES (1)")
    assert server_state(admin, pid) == "idle in transaction"
    await pool.putconn(conn)
    assert server_state(admin, pid) == "idle"
    assert driver_of(pool).status(conn) == IDLE  # and the driver knows it
    async with pool.transaction() as again:
        assert again is conn
        assert backend_pid(again) == pid
        await execute(again, f"INSERT INTO {table} VALUES (2)")
    assert server_state(admin, pid) == "idle"
    assert admin.execute(f"SELECT array_agg(x) FROM {table}").fetchone() == ([2],)
    assert pool.stats().rollbacks == 1


async def test_failed_transaction_is_rolled_back_and_the_connection_reused(
    make_pool: MakePool, admin: Admin
) -> None:
    pool = make_pool(min_size=1, max_size=1)
    conn = await pool.getconn()
    pid = backend_pid(conn)
    await begin(conn)
    with pytest.raises(Exception, match="division by zero"):
        await fetchval(conn, "SELECT 1 / 0")
    assert server_state(admin, pid) == "idle in transaction (aborted)"
    await pool.putconn(conn)
    assert server_state(admin, pid) == "idle"
    async with pool.connection() as again:
        assert backend_pid(again) == pid
        assert await fetchval(again, "SELECT 1") == 1


async def test_a_connection_the_borrower_closed_is_replaced(
    make_pool: MakePool, admin: Admin
) -> None:
    pool = make_pool(min_size=2, max_size=2)
    await pool.wait(5)
    conn = await pool.getconn()
    old_pid = backend_pid(conn)
    await close(conn)
    await pool.putconn(conn)
    await wait_until(lambda: pool.stats().idle == 2)
    held = [await pool.getconn(), await pool.getconn()]
    pids = {backend_pid(c) for c in held}
    for c in held:
        assert not is_closed(c)
        await pool.putconn(c)
    assert old_pid not in pids
    await wait_until(lambda: old_pid not in backends(admin, pool.name))


async def test_putconn_rejects_connections_it_did_not_lend(
    make_pool: MakePool, kind: Kind, dsn: str
) -> None:
    pool = make_pool(min_size=1, max_size=2)
    other = make_pool(min_size=1, max_size=1, name=pool.name + "-other")
    stranger = await kind.connect(dsn)
    try:
        with pytest.raises(PoolError, match="did not lend"):
            await pool.putconn(stranger)
    finally:
        await close(stranger)
    conn = await other.getconn()
    with pytest.raises(PoolError, match="did not lend"):
        await pool.putconn(conn)
    await other.putconn(conn)
    with pytest.raises(PoolError, match="did not lend"):
        await other.putconn(conn)  # twice


async def test_a_closed_pool_refuses_a_connection_it_did_not_lend(
    make_pool: MakePool, admin: Admin
) -> None:
    real = make_pool(min_size=1, max_size=1)
    other = make_pool(min_size=0, max_size=1, name=real.name + "-other")
    await other.close()
    conn = await real.getconn()
    pid = backend_pid(conn)
    with pytest.raises(PoolError, match="did not lend"):
        await other.putconn(conn)
    # Still lent by the real pool, which takes it back: the same backend serves the
    # next borrow.
    await real.putconn(conn)
    assert real.stats().in_use == 0
    async with real.connection() as again:
        assert backend_pid(again) == pid
    assert backends(admin, real.name) == [pid]


async def test_transaction_commits_on_success_and_rolls_back_on_error(
    make_pool: MakePool, admin: Admin, kind: Kind
) -> None:
    table = f"pk_tx_{kind.id.replace('-', '_')}"
    admin.execute(f"DROP TABLE IF EXISTS {table}; CREATE TABLE {table} (x int)")
    pool = make_pool(min_size=1, max_size=1)
    async with pool.transaction() as conn:
        await execute(conn, f"INSERT INTO {table} VALUES (1)")
    with pytest.raises(RuntimeError):
        async with pool.transaction() as conn:
            await execute(conn, f"INSERT INTO {table} VALUES (2)")
            raise RuntimeError("boom")
    assert admin.execute(f"SELECT array_agg(x) FROM {table}").fetchone() == ([1],)
    assert pool.stats().in_use == 0


@pytest.mark.per_model("the pool's books on an error in the block; no driver call differs")
async def test_connection_block_returns_even_on_error(make_pool: MakePool) -> None:
    pool = make_pool(min_size=1, max_size=1)
    with pytest.raises(ZeroDivisionError):
        async with pool.connection():
            _ = 1 / 0
    assert pool.stats().in_use == 0
    assert pool.stats().idle == 1


async def test_a_transaction_begun_in_sql_is_rolled_back_on_return(
    make_pool: MakePool, admin: Admin
) -> None:
    # BEGIN sent as SQL in autocommit: the driver did not start this transaction
    # itself, and the server's word is what counts.
    pool = make_pool(min_size=1, max_size=1)
    conn = await pool.getconn()
    pid = backend_pid(conn)
    await autocommit(conn, True)
    await execute(conn, "BEGIN")
    await execute(conn, "SELECT 1")
    assert server_state(admin, pid) == "idle in transaction"
    await pool.putconn(conn)
    assert server_state(admin, pid) == "idle"
    assert pool.stats().rollbacks == 1


async def test_connect_kwargs_autocommit_saves_the_rollback_on_return(
    make_pool: MakePool, admin: Admin
) -> None:
    # docs/asyncio.md: connect_kwargs={"autocommit": True} avoids the ROLLBACK round
    # trip (asyncpg accepts it and is in autocommit anyway).
    pool = make_pool(min_size=1, max_size=1, connect_kwargs={"autocommit": True})
    async with pool.connection() as conn:
        pid = backend_pid(conn)
        assert await fetchval(conn, "SELECT 'pk-autocommit'") == "pk-autocommit"
    assert server_state(admin, pid) == "idle"
    last = admin.execute("SELECT query FROM pg_stat_activity WHERE pid = %s", [pid]).fetchone()
    assert last == ("SELECT 'pk-autocommit'",)
    assert pool.stats().rollbacks == 0

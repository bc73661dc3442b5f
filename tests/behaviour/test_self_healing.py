"""configure=, check=, keepalive pings and read-only errors, on every pool kind."""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg
import pytest

from poolkeeper import ConnectionFailed, PoolTimeout
from tests.behaviour.conftest import MakePool
from tests.behaviour.kinds import (
    Kind,
    backend_pid,
    begin,
    commit,
    execute,
    fetchval,
    wait_until,
)
from tests.conftest import backends, settled_backends

Admin = psycopg.Connection[Any]


async def test_configure_runs_once_per_new_connection(
    make_pool: MakePool, kind: Kind, admin: Admin
) -> None:
    calls: list[int] = []

    async def configure(conn: Any) -> None:
        calls.append(backend_pid(conn))
        await execute(conn, "SET application_name = 'configured'")
        await commit(conn)

    pool = make_pool(min_size=2, configure=kind.hook(configure))
    await pool.wait(5)
    for _ in range(10):
        async with pool.connection() as conn:
            assert await fetchval(conn, "SHOW application_name") == "configured"
    assert len(calls) == len(set(calls)) == 2
    assert sorted(calls) == backends(admin, "configured")


@pytest.mark.per_model("what the pool does with a failed configure=; the hook is not the driver")
async def test_failing_configure_discards_the_connection_and_says_why(
    make_pool: MakePool, kind: Kind, admin: Admin, pk_logs: pytest.LogCaptureFixture
) -> None:
    # Kept, as a hook that logs or registers its connections would: the pool must close
    # a discarded connection itself, not leave it to the garbage collector.
    kept: dict[int, Any] = {}

    async def configure(conn: Any) -> None:
        kept[backend_pid(conn)] = conn
        raise RuntimeError("bad hook")

    pool = make_pool(min_size=1, configure=kind.hook(configure), fail_fast_after=None)
    with pytest.raises(PoolTimeout) as caught:
        await pool.getconn(timeout=0.5)
    cause = caught.value.__cause__
    assert isinstance(cause, ConnectionFailed)
    assert "configure= raised RuntimeError: bad hook" in str(cause)
    assert "discarded" in str(cause)
    assert any("configure= raised RuntimeError" in r.getMessage() for r in pk_logs.records)
    stats = pool.stats()
    assert (stats.idle, stats.in_use, stats.connections_opened) == (0, 0, 0)
    # Discarded means closed on the server at once, while the pool is still open (and
    # still retrying): none of the sessions configure= failed on is left connected.
    failed_on = set(kept)
    assert failed_on
    await wait_until(lambda: not failed_on & set(backends(admin, pool.name)))
    await pool.close(timeout=1.0)
    # Each discarded connection was closed: no backend of this pool is left behind.
    assert settled_backends(admin, pool.name, []) == []


@pytest.mark.per_model("when the pool calls check=; the callable is the user's, not the driver's")
async def test_custom_check_runs_before_every_lend(make_pool: MakePool, kind: Kind) -> None:
    """A callable check= runs on each lend, as psycopg_pool's does; check_after is
    for check="auto" only."""
    checked: list[int] = []

    async def check(conn: Any) -> None:
        checked.append(1)

    pool = make_pool(min_size=1, max_size=1, check=kind.hook(check), check_after=60)
    await pool.wait(5)
    for _ in range(2):
        await pool.putconn(await pool.getconn())
    assert checked == [1, 1]


@pytest.mark.per_model("what the pool does when check= refuses; the callable is the user's")
async def test_a_failing_custom_check_replaces_the_connection(
    make_pool: MakePool, kind: Kind, admin: Admin
) -> None:
    rejected: set[int] = set()

    async def check(conn: Any) -> None:
        if backend_pid(conn) in rejected:
            raise RuntimeError("custom says no")

    pool = make_pool(min_size=1, max_size=1, check=kind.hook(check))
    await pool.wait(5)
    first = await pool.getconn()
    first_pid = backend_pid(first)
    await pool.putconn(first)
    rejected.add(first_pid)
    # The check runs before every lend: the rejected connection is replaced.
    async with pool.connection(timeout=5) as conn:
        assert backend_pid(conn) != first_pid
    assert pool.stats().checks_failed >= 1
    await wait_until(lambda: first_pid not in backends(admin, pool.name))


async def test_check_none_lends_without_pinging(make_pool: MakePool, admin: Admin) -> None:
    pool = make_pool(min_size=1, max_size=1, check=None)
    await pool.wait(5)
    [pid] = backends(admin, pool.name)
    admin.execute("SELECT pg_terminate_backend(%s)", [pid])
    await wait_until(lambda: not backends(admin, pool.name))
    await asyncio.sleep(0.3)
    # Nobody verified it: the borrower finds out (that is what check=None means).
    with pytest.raises(Exception) as caught:  # each driver raises its own class
        async with pool.connection() as conn:
            assert backend_pid(conn) == pid
            await fetchval(conn, "SELECT 1")
    assert not isinstance(caught.value, AssertionError)
    async with pool.connection() as conn:
        assert await fetchval(conn, "SELECT 1") == 1
        assert backend_pid(conn) != pid


async def test_keepalive_finds_a_dead_idle_connection_without_any_borrow(
    make_pool: MakePool, admin: Admin
) -> None:
    pool = make_pool(min_size=2, max_size=2, keepalive_interval=0.2)
    await pool.wait(5)
    before = set(backends(admin, pool.name))
    victim = min(before)
    admin.execute("SELECT pg_terminate_backend(%s)", [victim])
    await wait_until(lambda: len(set(backends(admin, pool.name)) - before) == 1)
    assert victim not in backends(admin, pool.name)
    assert pool.stats().checks_failed >= 1
    assert pool.stats().borrows == 0


async def test_read_only_error_on_a_primary_does_not_drain(
    make_pool: MakePool, admin: Admin
) -> None:
    """SQLSTATE 25006 from a read-only transaction on a healthy primary is the
    borrower's business, not a failover: the same backends keep serving."""
    pool = make_pool(min_size=2, max_size=2)
    await pool.wait(5)
    before = backends(admin, pool.name)
    with pytest.raises(Exception, match="read-only transaction") as caught:
        async with pool.connection() as conn:
            await begin(conn)
            await execute(conn, "SET TRANSACTION READ ONLY")
            await execute(conn, "CREATE TEMP TABLE t (x int)")
    sqlstate = getattr(caught.value, "sqlstate", None) or getattr(caught.value, "pgcode", None)
    assert sqlstate == "25006"
    await asyncio.sleep(0.1)  # time for a drain's closers, had there been one
    assert backends(admin, pool.name) == before
    assert pool.stats().connections_opened == 2


@pytest.mark.per_model("read from the settings alone; no connection is made")
async def test_a_pool_asking_for_a_standby_is_not_meant_for_the_primary(
    make_pool: MakePool, dsn: str
) -> None:
    primary: Any = make_pool(open=False)
    standby: Any = make_pool(dsn + "?target_session_attrs=prefer-standby", open=False)
    assert getattr(primary, "pool", primary).meant_for_primary
    assert not getattr(standby, "pool", standby).meant_for_primary


async def test_a_connection_lent_when_the_server_went_away_is_not_trusted_back(
    make_pool: MakePool, kind: Kind, admin: Admin
) -> None:
    # Every backend is killed while two connections are lent. The first borrower's query
    # fails; the second borrower sent nothing since the kill, so its connection comes back
    # looking idle and healthy. It died with the others: the next borrower must not get it.
    pool = make_pool(min_size=2, max_size=2, check_after=60.0)
    await pool.wait(5)
    first = await pool.getconn()
    second = await pool.getconn()
    old = {backend_pid(first), backend_pid(second)}
    admin.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
        " WHERE datname = current_database() AND application_name = %s",
        [pool.name],
    )
    await wait_until(lambda: not backends(admin, pool.name))
    with pytest.raises(Exception):  # noqa: B017 - each driver raises its own error here
        await fetchval(first, "SELECT 1")
    await pool.putconn(first)
    await pool.putconn(second)
    async with pool.connection(timeout=5) as conn:
        assert await fetchval(conn, "SELECT 1") == 1
        assert backend_pid(conn) not in old

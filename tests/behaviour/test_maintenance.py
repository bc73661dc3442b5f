"""resize(), check(), drain(), stats and leak reports, on both pool classes."""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg
import pytest

from poolkeeper import AsyncDatabase, PoolTimeout
from tests.behaviour.conftest import MakePool
from tests.behaviour.kinds import (
    Kind,
    assert_books_balance,
    backend_pid,
    fetchval,
    lending_pools,
    wait_until,
)
from tests.conftest import backends

Admin = psycopg.Connection[Any]


def terminate(admin: Admin, application_name: str) -> None:
    admin.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
        " WHERE datname = current_database() AND application_name = %s",
        [application_name],
    )


@pytest.mark.per_model("the pool's bounds and retirement; opening is covered elsewhere")
async def test_resize_grows_now_and_shrinks_idle(make_pool: MakePool, admin: Admin) -> None:
    pool = make_pool(min_size=1, max_size=2)
    await pool.wait(5)
    await pool.resize(4, 6)
    await pool.wait(5)
    assert pool.stats().size == 4
    await pool.resize(1, 2)
    await wait_until(lambda: pool.stats().size == 2)
    assert pool.config.max_size == 2
    await wait_until(lambda: len(backends(admin, pool.name)) == 2)


@pytest.mark.per_model("the pool's bounds and retirement on return; no driver call differs")
async def test_resize_down_retires_borrowed_connections_beyond_max(
    make_pool: MakePool, admin: Admin
) -> None:
    pool = make_pool(min_size=0, max_size=8)
    held = [await pool.getconn() for _ in range(8)]
    assert len(backends(admin, pool.name)) == 8
    await pool.resize(1, 2)
    for conn in held:
        await pool.putconn(conn)
    await wait_until(lambda: len(backends(admin, pool.name)) == 2)
    stats = pool.stats()
    assert (stats.size, stats.idle, stats.in_use) == (2, 2, 0)
    # Two can be lent at once, not eight.
    two = [await pool.getconn(timeout=1) for _ in range(2)]
    with pytest.raises(PoolTimeout):
        await pool.getconn(timeout=0.2)
    for conn in two:
        await pool.putconn(conn)
    assert len(backends(admin, pool.name)) == 2


async def test_check_replaces_connections_that_died(make_pool: MakePool, admin: Admin) -> None:
    pool = make_pool(min_size=2, max_size=2)
    await pool.wait(5)
    old = set(backends(admin, pool.name))
    terminate(admin, pool.name)
    await wait_until(lambda: not backends(admin, pool.name))
    await pool.check()
    await wait_until(lambda: pool.stats().idle == 2)
    new = set(backends(admin, pool.name))
    assert len(new) == 2
    assert not new & old
    assert pool.stats().checks_failed == 2


async def test_check_runs_the_pools_check_callable(
    make_pool: MakePool, kind: Kind, admin: Admin
) -> None:
    # pool.check() uses check= where one is given, as lending does: a check that
    # refuses live connections gets them replaced, which the server shows as new pids.
    calls: list[int] = []

    async def refuse(conn: Any) -> None:
        calls.append(backend_pid(conn))
        raise RuntimeError("refused by check=")

    pool = make_pool(min_size=2, max_size=2, check=kind.hook(refuse), check_after=60)
    await pool.wait(5)
    old = set(backends(admin, pool.name))
    await pool.check()
    assert sorted(calls) == sorted(old)
    await wait_until(lambda: pool.stats().idle == 2)
    await wait_until(lambda: len(backends(admin, pool.name)) == 2)
    assert not set(backends(admin, pool.name)) & old
    assert pool.stats().checks_failed == 2


async def test_live_connections_pass_their_check_and_are_kept(
    make_pool: MakePool, admin: Admin
) -> None:
    # A check that fails on a healthy connection would reopen the pool's connections
    # after every idle spell of check_after (asyncpg once choked on an empty query).
    pool = make_pool(min_size=2, max_size=2, check_after=0.05)
    await pool.wait(5)
    before = set(backends(admin, pool.name))
    await pool.check()
    await asyncio.sleep(0.1)
    async with pool.connection():
        pass
    assert pool.stats().checks_failed == 0
    assert pool.stats().connections_opened == 2
    assert set(backends(admin, pool.name)) == before


async def test_terminated_backends_are_never_lent(make_pool: MakePool, admin: Admin) -> None:
    pool = make_pool(min_size=3, max_size=3, check_after=0.1)
    await pool.wait(5)
    terminate(admin, pool.name)
    await wait_until(lambda: not backends(admin, pool.name))
    await asyncio.sleep(pool.config.check_after + 0.05)  # idle long enough to be checked
    for _ in range(20):
        async with pool.connection() as conn:
            assert await fetchval(conn, "SELECT 1") == 1
    assert pool.stats().checks_failed >= 1
    await assert_books_balance(pool)


@pytest.mark.per_model("the generation bookkeeping of drain(); closing is covered elsewhere")
async def test_drain_replaces_every_connection(make_pool: MakePool, admin: Admin) -> None:
    pool = make_pool(min_size=2, max_size=2)
    await pool.wait(5)
    old = set(backends(admin, pool.name))
    held = await pool.getconn()
    await pool.drain()
    await pool.putconn(held)
    await wait_until(lambda: pool.stats().idle == 2 and pool.stats().connections_opened == 4)
    await wait_until(lambda: not set(backends(admin, pool.name)) & old)


@pytest.mark.per_model("counters and gauges are the pool's own")
async def test_stats_snapshot_has_the_gauges_and_counters(make_pool: MakePool) -> None:
    pool = make_pool(min_size=1, max_size=3)
    await pool.wait(5)
    async with pool.connection(), pool.connection():
        stats = pool.stats()
        assert (stats.size, stats.in_use, stats.min_size, stats.max_size) == (2, 2, 1, 3)
    stats = pool.stats()
    assert stats.borrows == 2
    assert stats.connections_opened == 2
    assert stats.as_dict()["name"] == pool.name
    assert pool.health()["status"] == "ok"


@pytest.mark.per_model("the leak report is the pool's housekeeping")
async def test_leaked_connection_is_logged_once_with_the_borrowers_stack(
    make_pool: MakePool, pk_logs: pytest.LogCaptureFixture
) -> None:
    pool = make_pool(min_size=1, max_size=1, leak_threshold=0.1)

    async def borrow_and_forget() -> Any:
        return await pool.getconn()

    conn = await borrow_and_forget()
    await wait_until(lambda: pool.stats().leaks == 1)
    await asyncio.sleep(0.3)
    leaks = [r for r in pk_logs.records if "not returned" in r.getMessage()]
    assert len(leaks) == 1
    assert "borrow_and_forget" in leaks[0].getMessage()
    await pool.putconn(conn)


@pytest.mark.per_model("which pools a Database marks as replicas; no driver call")
async def test_readonly_connections_come_from_a_replica_pool(
    kind: Kind, dsn: str, admin: Admin
) -> None:
    name = f"pk-primary-{kind.id}"
    db = kind.database(name, dsn=dsn, replicas=[dsn])
    try:
        async with db.connection(readonly=True) as conn:
            await fetchval(conn, "SELECT 1")
            assert backends(admin, f"{name}-replica0") == [backend_pid(conn)]
        async with db.connection() as conn:
            assert backends(admin, name) == [backend_pid(conn)]
        # A read-only error on a replica is expected there, not a sign of failover.
        primary, *replicas = lending_pools(db)
        assert len(replicas) == 1
        assert not replicas[0].meant_for_primary
        assert primary.meant_for_primary
    finally:
        if isinstance(db, AsyncDatabase):
            await AsyncDatabase.reset_all(timeout=1.0)


@pytest.mark.per_model("health() reads the pool's own books")
async def test_health_is_degraded_while_callers_wait_and_closed_after_close(
    make_pool: MakePool, kind: Kind
) -> None:
    pool = make_pool(min_size=1, max_size=1)
    await pool.wait(5)
    assert pool.health()["status"] == "ok"
    held = await pool.getconn()
    waiter = kind.spawn(pool.getconn(timeout=5))
    await wait_until(lambda: pool.stats().waiting == 1)
    health = pool.health()
    assert (health["status"], health["waiting"], health["in_use"]) == ("degraded", 1, 1)
    await pool.putconn(held)
    await pool.putconn(await waiter)
    assert pool.health()["status"] == "ok"
    await pool.close()
    assert pool.health()["status"] == "closed"


@pytest.mark.per_model("the leak report is the pool's housekeeping")
async def test_each_borrow_that_leaks_is_reported_with_its_own_stack(
    make_pool: MakePool, pk_logs: pytest.LogCaptureFixture
) -> None:
    pool = make_pool(min_size=1, max_size=1, leak_threshold=0.1)

    async def first_borrower() -> Any:
        return await pool.getconn()

    async def second_borrower() -> Any:
        return await pool.getconn()

    conn = await first_borrower()
    await wait_until(lambda: pool.stats().leaks == 1)
    await pool.putconn(conn)
    again = await second_borrower()
    assert again is conn  # the same connection, leaked a second time
    await wait_until(lambda: pool.stats().leaks == 2)
    leaks = [r.getMessage() for r in pk_logs.records if "not returned" in r.getMessage()]
    assert len(leaks) == 2
    assert "first_borrower" in leaks[0] and "second_borrower" not in leaks[0]
    assert "second_borrower" in leaks[1] and "first_borrower" not in leaks[1]
    await pool.putconn(again)


@pytest.mark.per_model("housekeeping's audit of the slots; no driver call differs")
async def test_a_connection_held_long_by_its_borrower_is_never_taken_back(
    make_pool: MakePool, kind: Kind, admin: Admin
) -> None:
    pool = make_pool(min_size=1, max_size=1, connect_timeout=0.5)
    await pool.wait(5)
    async with pool.connection() as conn:
        pid = backend_pid(conn)
        # Held past the audit's grace (2 x connect_timeout + 1 s) across several audits.
        await kind.sleep(2 * pool.config.connect_timeout + 2.5)
        assert await fetchval(conn, "SELECT pg_backend_pid()") == pid
    assert backends(admin, pool.name) == [pid]

"""AsyncPool on a real server, on both drivers: what the sync suite checks, plus
cancellation and event loops."""

from __future__ import annotations

import asyncio
import logging
import os
import random
import time
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from poolkeeper import (
    AsyncPool,
    ConnectionFailed,
    PoolClosed,
    PoolError,
    PoolTimeout,
    TooManyWaiters,
    WrongEventLoop,
)
from poolkeeper.drivers.asyncpg_async import asyncpg_connect_args
from poolkeeper.drivers.base import ConnectSpec
from poolkeeper.drivers.psycopg_async import AsyncGuardedConnection
from poolkeeper.stats import RING_SIZE
from tests import async_helpers
from tests.async_helpers import (
    AsyncPoolFactory,
    assert_books_balance,
    backend_pid,
    begin,
    execute,
    fetchval,
    is_asyncpg,
    is_closed,
    wait_until,
)
from tests.conftest import backends, in_forked_child, settled_backends

driver = async_helpers.driver
make_async_pool = async_helpers.make_async_pool

Admin = psycopg.Connection[Any]


# -- lending and returning -------------------------------------------------------------


async def test_lends_the_drivers_own_connection_and_takes_it_back(
    make_async_pool: AsyncPoolFactory, driver: str
) -> None:
    pool = make_async_pool(min_size=1, max_size=2)
    await pool.wait(5)
    conn = await pool.getconn()
    if driver == "asyncpg":
        import asyncpg

        assert isinstance(conn, asyncpg.Connection)
    else:
        assert isinstance(conn, psycopg.AsyncConnection)
    assert await fetchval(conn, "SELECT 41 + 1") == 42
    assert pool.stats().in_use == 1
    await pool.putconn(conn)
    stats = pool.stats()
    assert (stats.in_use, stats.idle, stats.borrows) == (0, 1, 1)


async def test_min_size_connections_are_opened_in_the_background(
    make_async_pool: AsyncPoolFactory, admin: Admin
) -> None:
    pool = make_async_pool(min_size=3, max_size=5, name="pk-async-minsize")
    await pool.wait(5)
    assert len(backends(admin, "pk-async-minsize")) == 3
    assert pool.stats().size == 3


async def test_open_transaction_is_rolled_back_on_return(
    make_async_pool: AsyncPoolFactory, admin: Admin, driver: str
) -> None:
    table = f"pk_async_rollback_{driver}"
    admin.execute(f"DROP TABLE IF EXISTS {table}; CREATE TABLE {table} (x int)")
    pool = make_async_pool(min_size=1, max_size=1)
    conn = await pool.getconn()
    await begin(conn)
    await execute(conn, f"INSERT INTO {table} VALUES (1)")
    await pool.putconn(conn)
    assert admin.execute(f"SELECT count(*) FROM {table}").fetchone() == (0,)
    again = await pool.getconn()
    assert again is conn
    assert pool._driver.status(again) == 0
    await pool.putconn(again)
    assert pool.stats().rollbacks == 1


async def test_failed_transaction_is_rolled_back_and_the_connection_reused(
    make_async_pool: AsyncPoolFactory,
) -> None:
    pool = make_async_pool(min_size=1, max_size=1)
    conn = await pool.getconn()
    pid = backend_pid(conn)
    await begin(conn)
    with pytest.raises(Exception, match="division by zero"):
        await fetchval(conn, "SELECT 1 / 0")
    await pool.putconn(conn)
    async with pool.connection() as again:
        assert backend_pid(again) == pid
        assert await fetchval(again, "SELECT 1") == 1


async def test_a_connection_the_borrower_closed_is_replaced(
    make_async_pool: AsyncPoolFactory,
) -> None:
    pool = make_async_pool(min_size=2, max_size=2)
    await pool.wait(5)
    conn = await pool.getconn()
    old_pid = backend_pid(conn)
    await conn.close()
    await pool.putconn(conn)
    await wait_until(lambda: pool.stats().idle == 2)
    held = [await pool.getconn(), await pool.getconn()]
    pids = {backend_pid(c) for c in held}
    for c in held:
        assert not is_closed(c)
        await pool.putconn(c)
    assert old_pid not in pids


async def test_putconn_rejects_connections_it_did_not_lend(
    make_async_pool: AsyncPoolFactory, dsn: str
) -> None:
    pool = make_async_pool(min_size=1, max_size=2)
    other = make_async_pool(min_size=1, max_size=1)
    stranger = await psycopg.AsyncConnection.connect(dsn)
    try:
        with pytest.raises(PoolError, match="did not lend"):
            await pool.putconn(stranger)
    finally:
        await stranger.close()
    conn = await other.getconn()
    with pytest.raises(PoolError, match="did not lend"):
        await pool.putconn(conn)
    await other.putconn(conn)
    with pytest.raises(PoolError, match="did not lend"):
        await other.putconn(conn)  # twice


# -- waiting ---------------------------------------------------------------------------


async def test_exhausted_pool_times_out_on_time(make_async_pool: AsyncPoolFactory) -> None:
    pool = make_async_pool(min_size=2, max_size=2, timeout=0.4)
    held = [await pool.getconn(), await pool.getconn()]
    start = time.monotonic()
    with pytest.raises(PoolTimeout, match=r"max_size=2") as info:
        await pool.getconn()
    elapsed = time.monotonic() - start
    assert 0.39 <= elapsed < 0.9
    assert "raise max_size" in str(info.value)
    start = time.monotonic()
    with pytest.raises(PoolTimeout):
        await pool.getconn(timeout=0.1)
    assert time.monotonic() - start < 0.5
    for c in held:
        await pool.putconn(c)
    assert pool.stats().timeouts == 2
    assert pool.stats().waiting == 0


async def test_a_waiter_gets_the_connection_another_task_returns(
    make_async_pool: AsyncPoolFactory,
) -> None:
    pool = make_async_pool(min_size=1, max_size=1)
    await pool.wait(5)
    conn = await pool.getconn()

    async def give_back_later() -> None:
        await asyncio.sleep(0.2)
        await pool.putconn(conn)

    returner = asyncio.create_task(give_back_later())
    start = time.monotonic()
    again = await pool.getconn(timeout=5)
    assert again is conn
    assert 0.15 < time.monotonic() - start < 2
    await pool.putconn(again)
    await returner
    assert pool.stats().waits == 1


async def test_wait_statistics_survive_more_waits_than_the_ring_holds(
    make_async_pool: AsyncPoolFactory,
) -> None:
    # Eight tasks over one connection: nearly every borrow waits, and more waits are
    # recorded than the ring of recent ones has slots, so it wraps around.
    pool = make_async_pool(min_size=1, max_size=1, timeout=10)
    await pool.wait(5)
    rounds = 700

    async def borrower() -> None:
        for _ in range(rounds):
            conn = await pool.getconn()
            await asyncio.sleep(0)
            await pool.putconn(conn)

    await asyncio.gather(*(borrower() for _ in range(8)))
    stats = pool.stats()
    assert stats.borrows == 8 * rounds
    assert RING_SIZE < stats.waits <= stats.borrows
    assert 0 < stats.wait_p50_ms <= stats.wait_p99_ms <= stats.wait_max_ms < 10_000


async def test_max_waiting_rejects_the_next_caller_at_once(
    make_async_pool: AsyncPoolFactory,
) -> None:
    pool = make_async_pool(min_size=1, max_size=1, max_waiting=2, timeout=5)
    conn = await pool.getconn()
    waiters = [asyncio.create_task(pool.getconn()) for _ in range(2)]
    await wait_until(lambda: pool.stats().waiting == 2)
    start = time.monotonic()
    with pytest.raises(TooManyWaiters, match="max_waiting=2"):
        await pool.getconn()
    assert time.monotonic() - start < 0.1
    await pool.putconn(conn)
    await pool.putconn(await waiters[0])
    await pool.putconn(await waiters[1])
    await assert_books_balance(pool)


async def test_waiters_are_served_first_come_first_served(
    make_async_pool: AsyncPoolFactory,
) -> None:
    pool = make_async_pool(min_size=1, max_size=1, timeout=10)
    conn = await pool.getconn()
    order: list[int] = []

    async def borrower(i: int) -> None:
        c = await pool.getconn()
        order.append(i)
        await asyncio.sleep(0.002)
        await pool.putconn(c)

    tasks = []
    for i in range(8):
        tasks.append(asyncio.create_task(borrower(i)))
        await wait_until(lambda i=i: pool.stats().waiting == i + 1)  # type: ignore[misc]
    await pool.putconn(conn)
    await asyncio.gather(*tasks)
    assert order == list(range(8))


async def test_waiters_time_out_at_their_own_deadlines_in_order(
    make_async_pool: AsyncPoolFactory,
) -> None:
    # One timer serves the whole queue: a later waiter with an earlier deadline must
    # re-arm it, and each must still give up at its own deadline, not its neighbour's.
    pool = make_async_pool(min_size=1, max_size=1, timeout=10)
    conn = await pool.getconn()
    timeouts = [0.5, 0.1, 0.3, 0.2, 0.4, 0.2]
    ended: list[tuple[float, float, str]] = []
    start = time.monotonic()

    async def waiter(limit: float) -> None:
        with pytest.raises(PoolTimeout) as info:
            await pool.getconn(timeout=limit)
        ended.append((limit, time.monotonic() - start, str(info.value)))

    tasks = []
    for limit in timeouts:
        tasks.append(asyncio.create_task(waiter(limit)))
        await asyncio.sleep(0)  # queued in this order
    await asyncio.gather(*tasks)
    assert [limit for limit, _, _ in ended] == sorted(timeouts)
    for limit, elapsed, message in ended:
        assert limit - 0.005 <= elapsed < limit + 0.25, (limit, elapsed)
        assert f"no connection free within {limit:g}s" in message
    stats = pool.stats()
    assert (stats.timeouts, stats.waiting) == (len(timeouts), 0)
    await pool.putconn(conn)
    await assert_books_balance(pool)


async def test_queued_waiters_share_one_deadline_timer(
    make_async_pool: AsyncPoolFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    pool = make_async_pool(min_size=1, max_size=1, timeout=10)
    await pool.wait(5)
    conn = await pool.getconn()  # not a wait: no timer yet
    loop = asyncio.get_running_loop()
    armed: list[float] = []
    call_later = loop.call_later

    def counting_call_later(delay: float, callback: Any, *args: Any, **kwargs: Any) -> Any:
        if getattr(callback, "__self__", None) is pool:
            armed.append(delay)
        return call_later(delay, callback, *args, **kwargs)

    monkeypatch.setattr(loop, "call_later", counting_call_later)
    waiters = [asyncio.create_task(pool.getconn()) for _ in range(20)]
    await wait_until(lambda: pool.stats().waiting == 20)
    assert len(armed) == 1  # not one timer per wait
    # Served one after another, none times out, and no timer is set on the way.
    for task in waiters:
        await pool.putconn(conn)
        conn = await task
    assert len(armed) == 1
    await pool.putconn(conn)
    assert pool.stats().timeouts == 0


async def test_a_cancelled_waiter_sets_off_nothing_at_its_deadline(
    make_async_pool: AsyncPoolFactory,
) -> None:
    pool = make_async_pool(min_size=1, max_size=1, timeout=10)
    conn = await pool.getconn()
    loop = asyncio.get_running_loop()
    errors: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, context: errors.append(context))
    try:
        task = asyncio.create_task(pool.getconn(timeout=0.15))
        await wait_until(lambda: pool.stats().waiting == 1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert pool.stats().waiting == 0
        later = asyncio.create_task(pool.getconn(timeout=0.6))
        await asyncio.sleep(0.3)  # past the cancelled waiter's deadline
        assert not later.done()  # the timer fired for nobody, and expired nobody else
        assert pool.stats().timeouts == 0
        await pool.putconn(conn)
        conn = await asyncio.wait_for(later, 1)
        await pool.putconn(conn)
        await asyncio.sleep(0.4)  # past the served waiter's deadline too
        assert pool.stats().timeouts == 0
        await assert_books_balance(pool)
    finally:
        loop.set_exception_handler(None)
    assert errors == []


async def test_opening_a_connection_does_not_block_borrowers(
    make_async_pool: AsyncPoolFactory,
) -> None:
    slow = asyncio.Event()

    async def configure(conn: Any) -> None:
        if slow.is_set():
            await asyncio.sleep(1.0)

    pool = make_async_pool(min_size=1, max_size=2, configure=configure)
    await pool.wait(5)
    first = await pool.getconn()
    slow.set()

    async def borrow_once() -> None:
        await pool.putconn(await pool.getconn(timeout=5))

    opener = asyncio.create_task(borrow_once())  # waits while a second one opens (1 s)
    await wait_until(lambda: pool.stats().opening == 1)
    start = time.monotonic()
    await pool.putconn(first)  # handed to the waiting task at once
    again = await pool.getconn(timeout=5)
    await pool.putconn(again)
    assert time.monotonic() - start < 0.5
    await opener


# -- context managers ------------------------------------------------------------------


async def test_transaction_commits_on_success_and_rolls_back_on_error(
    make_async_pool: AsyncPoolFactory, admin: Admin, driver: str
) -> None:
    table = f"pk_async_tx_{driver}"
    admin.execute(f"DROP TABLE IF EXISTS {table}; CREATE TABLE {table} (x int)")
    pool = make_async_pool(min_size=1, max_size=1)
    async with pool.transaction() as conn:
        await execute(conn, f"INSERT INTO {table} VALUES (1)")
    with pytest.raises(RuntimeError):
        async with pool.transaction() as conn:
            await execute(conn, f"INSERT INTO {table} VALUES (2)")
            raise RuntimeError("boom")
    assert admin.execute(f"SELECT array_agg(x) FROM {table}").fetchone() == ([1],)
    assert pool.stats().in_use == 0


async def test_connection_block_returns_even_on_error(make_async_pool: AsyncPoolFactory) -> None:
    pool = make_async_pool(min_size=1, max_size=1)
    with pytest.raises(ZeroDivisionError):
        async with pool.connection():
            _ = 1 / 0
    assert pool.stats().in_use == 0
    assert pool.stats().idle == 1


# -- lifecycle -------------------------------------------------------------------------


async def test_close_waits_for_borrowed_connections_then_closes_them(
    make_async_pool: AsyncPoolFactory,
) -> None:
    pool = make_async_pool(min_size=2, max_size=2)
    conn = await pool.getconn()
    other = await pool.getconn()
    waiter = asyncio.create_task(pool.getconn(timeout=10))
    await wait_until(lambda: pool.stats().waiting == 1)

    async def give_back_later() -> None:
        await asyncio.sleep(0.2)
        await pool.putconn(other)

    returner = asyncio.create_task(give_back_later())
    start = time.monotonic()
    await pool.close(timeout=0.6)
    elapsed = time.monotonic() - start
    with pytest.raises(PoolClosed):
        await waiter
    await returner
    assert 0.55 <= elapsed < 2.0  # `conn` was never returned: close waited out its deadline
    assert is_closed(conn)
    assert is_closed(other)
    with pytest.raises(PoolClosed):
        await pool.getconn()
    await pool.putconn(conn)  # closed under its borrower: returning it is harmless
    assert pool.stats().size == 0


async def test_wait_times_out_when_min_size_cannot_be_reached(driver: str) -> None:
    pool = AsyncPool(
        "postgresql://nobody@127.0.0.1:1/none", min_size=1, connect_timeout=1, driver=driver
    )
    try:
        start = time.monotonic()
        with pytest.raises(PoolTimeout, match="min_size"):
            await pool.wait(timeout=0.5)
        assert time.monotonic() - start < 1.5
    finally:
        await pool.close(0.5)


async def test_an_unreachable_server_fails_callers_within_their_timeout(driver: str) -> None:
    pool = AsyncPool(
        "postgresql://nobody@127.0.0.1:1/none", min_size=0, connect_timeout=1, driver=driver
    )
    try:
        for _ in range(3):
            start = time.monotonic()
            with pytest.raises((PoolTimeout, ConnectionFailed)):
                await pool.getconn(timeout=1.0)
            assert time.monotonic() - start < 1.5
        assert pool.stats().connect_errors >= 1
        assert pool.health()["status"] in ("down", "degraded")
    finally:
        await pool.close(0.5)


async def test_open_false_waits_for_open(dsn: str, driver: str) -> None:
    pool = AsyncPool(dsn, open=False, min_size=1, driver=driver, name="pk-async-openfalse")
    with pytest.raises(PoolClosed, match=r"await pool\.open"):
        await pool.getconn()
    await pool.open()
    await pool.wait(5)
    async with pool.connection() as conn:
        assert await fetchval(conn, "SELECT 1") == 1
    await pool.close()
    with pytest.raises(PoolClosed, match="closed"):
        await pool.open()


async def test_async_with_opens_and_closes(dsn: str, driver: str, admin: Admin) -> None:
    async with AsyncPool(dsn, open=False, driver=driver, name="pk-async-with") as pool:
        await pool.wait(5)
        assert len(backends(admin, "pk-async-with")) == 1
    assert pool.closed
    await wait_until(lambda: not backends(admin, "pk-async-with"))


async def test_application_name_defaults_to_the_pool_name(
    make_async_pool: AsyncPoolFactory, dsn: str, admin: Admin
) -> None:
    await make_async_pool(min_size=1, max_size=1, name="pk-async-appname").wait(5)
    assert len(backends(admin, "pk-async-appname")) == 1
    sep = "&" if "?" in dsn else "?"
    await make_async_pool(dsn + f"{sep}application_name=mine-async", min_size=1).wait(5)
    assert len(backends(admin, "mine-async")) == 1


async def test_a_key_value_conninfo_works_on_every_driver(
    make_async_pool: AsyncPoolFactory, dsn: str, admin: Admin
) -> None:
    params = {k: v for k, v in conninfo_to_dict(dsn).items() if v is not None}
    params["application_name"] = "pk-async-kv"
    params["options"] = "-c work_mem=7MB"
    pool = make_async_pool(make_conninfo("", **params), min_size=1, max_size=1)
    async with pool.connection() as conn:
        assert await fetchval(conn, "SHOW work_mem") == "7MB"
    assert len(backends(admin, "pk-async-kv")) == 1


async def test_statement_timeout_reaches_the_server(make_async_pool: AsyncPoolFactory) -> None:
    pool = make_async_pool(min_size=1, max_size=1, statement_timeout=1.5)
    async with pool.connection() as conn:
        assert await fetchval(conn, "SHOW statement_timeout") == "1500ms"


def test_asyncpg_arguments_follow_the_pool_settings() -> None:
    spec = ConnectSpec(
        conninfo="host=db.example port=6432 dbname=app user=u password=s3cret sslmode=require "
        "application_name=web keepalives_idle=5 connect_timeout=3",
        kwargs={"server_settings": {"jit": "off"}},
        connect_timeout=10.0,
        tcp_user_timeout=30.0,
        keepalive_idle=30.0,
        statement_timeout=2.0,
        idle_in_transaction_timeout=None,
        pgbouncer=True,
    )
    dsn, kwargs = asyncpg_connect_args(spec)
    assert dsn is not None
    assert "host=db.example" in dsn
    assert "dbname=app" in dsn
    assert "sslmode=require" in dsn
    assert "keepalives" not in dsn
    assert kwargs["statement_cache_size"] == 0
    assert kwargs["timeout"] == 3.0
    assert kwargs["server_settings"] == {
        "statement_timeout": "2000",
        "application_name": "web",
        "jit": "off",
    }


# -- maintenance -----------------------------------------------------------------------


async def test_resize_grows_now_and_shrinks_idle(make_async_pool: AsyncPoolFactory) -> None:
    pool = make_async_pool(min_size=1, max_size=2)
    await pool.wait(5)
    await pool.resize(4, 6)
    await pool.wait(5)
    assert pool.stats().size == 4
    await pool.resize(1, 2)
    await wait_until(lambda: pool.stats().size == 2)
    assert pool.config.max_size == 2


async def test_check_replaces_connections_that_died(
    make_async_pool: AsyncPoolFactory, admin: Admin
) -> None:
    pool = make_async_pool(min_size=2, max_size=2, name="pk-async-check")
    await pool.wait(5)
    old = set(backends(admin, "pk-async-check"))
    admin.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        "WHERE application_name = 'pk-async-check'"
    )
    await wait_until(lambda: not backends(admin, "pk-async-check"))
    await pool.check()
    await wait_until(lambda: pool.stats().idle == 2)
    new = set(backends(admin, "pk-async-check"))
    assert len(new) == 2
    assert not new & old
    assert pool.stats().checks_failed == 2


async def test_live_connections_pass_their_check_and_are_kept(
    make_async_pool: AsyncPoolFactory, admin: Admin
) -> None:
    # A check that fails on a healthy connection would reopen the pool's connections
    # after every idle spell of check_after (asyncpg once choked on an empty query).
    pool = make_async_pool(min_size=2, max_size=2, check_after=0.05, name="pk-async-live")
    await pool.wait(5)
    before = set(backends(admin, "pk-async-live"))
    await pool.check()
    await asyncio.sleep(0.1)
    async with pool.connection():
        pass
    assert pool.stats().checks_failed == 0
    assert pool.stats().connections_opened == 2
    assert set(backends(admin, "pk-async-live")) == before


async def test_terminated_backends_are_never_lent(
    make_async_pool: AsyncPoolFactory, admin: Admin
) -> None:
    pool = make_async_pool(min_size=3, max_size=3, name="pk-async-terminated")
    await pool.wait(5)
    admin.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        "WHERE application_name = 'pk-async-terminated'"
    )
    await wait_until(lambda: not backends(admin, "pk-async-terminated"))
    await asyncio.sleep(pool.config.check_after + 0.05)  # idle long enough to be checked
    for _ in range(20):
        async with pool.connection() as conn:
            assert await fetchval(conn, "SELECT 1") == 1
    assert pool.stats().checks_failed >= 1
    await assert_books_balance(pool)


async def test_drain_replaces_every_connection(
    make_async_pool: AsyncPoolFactory, admin: Admin
) -> None:
    pool = make_async_pool(min_size=2, max_size=2, name="pk-async-drain")
    await pool.wait(5)
    old = set(backends(admin, "pk-async-drain"))
    held = await pool.getconn()
    await pool.drain()
    await pool.putconn(held)
    await wait_until(lambda: pool.stats().idle == 2 and pool.stats().connections_opened == 4)
    await wait_until(lambda: not set(backends(admin, "pk-async-drain")) & old)


async def test_stats_snapshot_has_the_gauges_and_counters(
    make_async_pool: AsyncPoolFactory,
) -> None:
    pool = make_async_pool(min_size=1, max_size=3)
    await pool.wait(5)
    async with pool.connection(), pool.connection():
        stats = pool.stats()
        assert (stats.size, stats.in_use, stats.min_size, stats.max_size) == (2, 2, 1, 3)
    stats = pool.stats()
    assert stats.borrows == 2
    assert stats.connections_opened == 2
    assert stats.as_dict()["name"] == pool.name
    assert pool.health()["status"] == "ok"


async def test_leaked_connection_is_logged_once_with_the_borrowers_stack(
    make_async_pool: AsyncPoolFactory, pk_logs: pytest.LogCaptureFixture
) -> None:
    pool = make_async_pool(min_size=1, max_size=1, leak_threshold=0.1)

    async def borrow_and_forget() -> Any:
        return await pool.getconn()

    conn = await borrow_and_forget()
    await wait_until(lambda: pool.stats().leaks == 1)
    await asyncio.sleep(0.3)
    leaks = [r for r in pk_logs.records if "not returned" in r.getMessage()]
    assert len(leaks) == 1
    assert "borrow_and_forget" in leaks[0].getMessage()
    await pool.putconn(conn)


async def test_password_never_appears_in_errors_logs_or_repr(
    dsn: str, driver: str, pk_logs: pytest.LogCaptureFixture
) -> None:
    secret = "pk-async-s3cret-pw"
    params = conninfo_to_dict(dsn)
    bad = make_conninfo("", **{**params, "password": secret, "port": "1", "connect_timeout": "1"})
    pool = AsyncPool(bad, min_size=1, driver=driver, name="pk-async-redact")
    try:
        with pytest.raises(PoolError) as info:
            await pool.wait(timeout=1.0)
        texts = [repr(pool), str(pool), str(info.value), repr(pool.config)]
        texts += [str(pool.stats().last_error), str(info.value.__cause__)]
        texts += [r.getMessage() for r in pk_logs.records]
        assert all(secret not in t for t in texts)
        assert pool.stats().connect_errors >= 1
    finally:
        await pool.close(0.5)


# -- reset="auto" ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def _reader_role(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as admin:
        admin.execute(
            "DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'pk_reader') "
            "THEN CREATE ROLE pk_reader; END IF; END $$"
        )


DIRTIERS: dict[str, tuple[str, str, Any]] = {
    "role": ("SET ROLE pk_reader", "SELECT current_user", "postgres-ish"),
    "search_path": ("SET search_path TO pg_catalog", "SHOW search_path", "public"),
    "set_config": ("SELECT set_config('work_mem', '7MB', false)", "SHOW work_mem", "not 7MB"),
    "temp_table": (
        "CREATE TEMP TABLE pk_scratch (x int)",
        "SELECT to_regclass('pg_temp.pk_scratch') IS NULL",
        True,
    ),
    "advisory_lock": (
        "SELECT pg_advisory_lock(4243)",
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()",
        0,
    ),
    "listen": ("LISTEN pk_channel", "SELECT count(*) FROM pg_listening_channels()", 0),
    "prepared_statement": (
        "PREPARE pk_stmt AS SELECT 1",
        "SELECT count(*) FROM pg_prepared_statements WHERE name = 'pk_stmt'",
        0,
    ),
}


@pytest.mark.usefixtures("_reader_role")
@pytest.mark.parametrize("kind", sorted(DIRTIERS))
async def test_session_state_is_reset_before_the_next_borrower(
    make_async_pool: AsyncPoolFactory, kind: str
) -> None:
    dirty, probe, clean = DIRTIERS[kind]
    pool = make_async_pool(min_size=1, max_size=1)
    conn = await pool.getconn()
    pid = backend_pid(conn)
    if not is_asyncpg(conn):
        await conn.set_autocommit(True)
    await execute(conn, dirty)
    if not is_asyncpg(conn):
        await conn.set_autocommit(False)
    await pool.putconn(conn)
    async with pool.connection() as again:
        assert backend_pid(again) == pid  # reset, not discarded
        seen = await fetchval(again, probe)
        if kind == "role":
            assert seen != "pk_reader"
        elif kind == "search_path":
            assert "public" in seen
        elif kind == "set_config":
            assert seen != "7MB"
        else:
            assert seen == clean
        # The driver's own statement cache survived DISCARD ALL.
        assert await fetchval(again, "SELECT 1") == 1
        assert await fetchval(again, "SELECT 1") == 1
    assert pool.stats().resets == 1


async def test_return_state_is_clean_only_for_an_idle_clean_open_connection(
    make_async_pool: AsyncPoolFactory,
) -> None:
    pool = make_async_pool(min_size=1, max_size=1, connect_kwargs={"autocommit": True})
    conn = await pool.getconn()
    drv = pool._driver

    def clean() -> bool:
        return bool(drv.return_state(conn) == drv.clean_state)

    assert clean()
    await fetchval(conn, "SELECT 1")
    await fetchval(conn, "SELECT 1")  # a verdict already known
    assert clean()
    await execute(conn, "BEGIN")
    assert not clean()
    await drv.rollback(conn)
    assert clean()
    for _ in range(2):  # scanned, then known: dirty both times
        await execute(conn, "SET search_path TO pg_catalog")
        assert not clean()
        await drv.reset_session(conn)
        assert clean()
    await conn.close()
    assert not clean()
    await pool.putconn(conn)
    await wait_until(lambda: pool.stats().idle == 1)
    assert pool.stats().connections_closed == 1


@pytest.mark.parametrize("driver", async_helpers.DRIVERS[1:])  # asyncpg only
async def test_asyncpg_tracking_passes_arguments_and_sees_listeners(
    make_async_pool: AsyncPoolFactory, driver: str
) -> None:
    pool = make_async_pool(min_size=1, max_size=1)
    conn = await pool.getconn()
    drv = pool._driver
    # Positional and keyword arguments reach asyncpg untouched.
    assert await conn.fetchval("SELECT $1::int + 1", 41) == 42
    assert await conn.fetchval("SELECT 1, 2", column=1) == 2
    assert await conn.fetchrow("SELECT $1::text AS x", "a", timeout=5) == ("a",)
    assert [r[0] for r in await conn.fetch("SELECT generate_series(1, $1)", 3)] == [1, 2, 3]
    await conn.execute("CREATE TEMP TABLE IF NOT EXISTS pk_many (x int)")
    await drv.reset_session(conn)
    await conn.executemany(command="SELECT $1::int", args=[(1,), (2,)])
    assert drv.return_state(conn) == drv.clean_state
    # A log listener runs no SQL: the return check sees it anyway.
    conn.add_log_listener(lambda *_: None)
    assert drv.return_state(conn) != drv.clean_state
    await pool.putconn(conn)
    assert pool.stats().resets == 1
    conn = await pool.getconn()
    assert drv.return_state(conn) == drv.clean_state
    await conn.add_listener("pk_channel", lambda *_: None)
    assert drv.return_state(conn) != drv.clean_state
    await pool.putconn(conn)
    assert pool.stats().resets == 2


async def test_plain_queries_cost_no_reset(make_async_pool: AsyncPoolFactory) -> None:
    pool = make_async_pool(min_size=1, max_size=1)
    for _ in range(5):
        async with pool.connection() as conn:
            await fetchval(conn, "SELECT relname FROM pg_class LIMIT 1")
            await fetchval(conn, "SELECT 1")
    assert pool.stats().resets == 0


async def test_configure_settings_survive_a_reset(make_async_pool: AsyncPoolFactory) -> None:
    async def configure(conn: Any) -> None:
        await conn.execute("SET application_name = 'configured'")
        if not is_asyncpg(conn):
            await conn.commit()

    pool = make_async_pool(min_size=1, max_size=1, configure=configure)
    async with pool.connection() as conn:
        await execute(conn, "SET search_path TO pg_catalog")
    async with pool.connection() as conn:
        assert await fetchval(conn, "SHOW application_name") == "configured"
        assert "public" in await fetchval(conn, "SHOW search_path")


async def test_reset_none_leaves_the_session_alone(make_async_pool: AsyncPoolFactory) -> None:
    pool = make_async_pool(min_size=1, max_size=1, reset=None)
    async with pool.connection() as conn:
        await execute(conn, "SET search_path TO pg_catalog")
        if not is_asyncpg(conn):
            await conn.commit()
    async with pool.connection() as conn:
        assert await fetchval(conn, "SHOW search_path") == "pg_catalog"


# -- load and cancellation -------------------------------------------------------------


async def test_64_tasks_on_8_connections_never_share_one(
    make_async_pool: AsyncPoolFactory, admin: Admin
) -> None:
    pool = make_async_pool(min_size=8, max_size=8, timeout=30, name="pk-async-stress")
    await pool.wait(10)
    in_use: set[int] = set()

    async def worker() -> None:
        for _ in range(100):
            conn = await pool.getconn()
            pid = backend_pid(conn)
            assert pid not in in_use, f"backend {pid} lent twice at once"
            in_use.add(pid)
            assert await fetchval(conn, "SELECT pg_backend_pid()") == pid
            in_use.remove(pid)
            await pool.putconn(conn)

    await asyncio.gather(*(worker() for _ in range(64)))
    stats = pool.stats()
    assert stats.in_use == 0
    assert stats.idle == stats.size == 8
    assert stats.borrows == 64 * 100
    assert stats.connections_opened == 8
    assert len(backends(admin, "pk-async-stress")) == 8


async def test_wait_for_timeouts_on_getconn_never_lose_a_connection(
    make_async_pool: AsyncPoolFactory,
) -> None:
    pool = make_async_pool(min_size=2, max_size=2, timeout=5)
    await pool.wait(5)
    rng = random.Random(4)
    got = lost = 0

    async def borrower() -> None:
        nonlocal got, lost
        for _ in range(60):
            try:
                conn = await asyncio.wait_for(pool.getconn(), rng.uniform(0, 0.004))
            except asyncio.TimeoutError:
                lost += 1
                continue
            got += 1
            await asyncio.sleep(rng.uniform(0, 0.002))
            await pool.putconn(conn)

    await asyncio.gather(*(borrower() for _ in range(12)))
    assert got > 0
    assert lost > 0
    await wait_until(lambda: pool.stats().idle == 2)
    await assert_books_balance(pool)
    assert pool.stats().size == 2


async def test_tasks_cancelled_while_waiting_or_holding_never_lose_a_connection(
    make_async_pool: AsyncPoolFactory, admin: Admin
) -> None:
    pool = make_async_pool(min_size=3, max_size=3, timeout=10, name="pk-async-cancel")
    await pool.wait(5)
    rng = random.Random(7)

    async def user() -> None:
        async with pool.connection() as conn:
            await begin(conn)  # cancelled here, the return path must also roll back
            await fetchval(conn, "SELECT pg_sleep(0.002)")

    for _ in range(30):
        tasks = [asyncio.create_task(user()) for _ in range(10)]
        await asyncio.sleep(rng.uniform(0, 0.01))
        for task in tasks:
            if rng.random() < 0.6:
                task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    await wait_until(lambda: pool.stats().idle == 3 and pool.stats().opening == 0)
    await assert_books_balance(pool)
    # The server agrees: exactly the pool's connections, none left in a transaction.
    await wait_until(lambda: len(backends(admin, "pk-async-cancel")) == 3)
    states = admin.execute(
        "SELECT state FROM pg_stat_activity WHERE application_name = 'pk-async-cancel'"
    ).fetchall()
    assert {s for (s,) in states} == {"idle"}


async def test_a_waiter_cancelled_as_it_is_handed_a_connection_passes_it_on(
    make_async_pool: AsyncPoolFactory,
) -> None:
    pool = make_async_pool(min_size=1, max_size=1)
    conn = await pool.getconn()
    first = asyncio.create_task(pool.getconn())
    second = asyncio.create_task(pool.getconn())
    await wait_until(lambda: pool.stats().waiting == 2)
    await pool.putconn(conn)  # handed to `first`, which has not run yet...
    first.cancel()  # ...and is cancelled before it could
    with pytest.raises(asyncio.CancelledError):
        await first
    again = await asyncio.wait_for(second, 5)
    assert again is conn
    await pool.putconn(again)
    await assert_books_balance(pool)
    assert pool.stats().idle == 1


async def test_cancelled_mid_query_the_connection_is_replaced(
    make_async_pool: AsyncPoolFactory,
) -> None:
    pool = make_async_pool(min_size=1, max_size=1)

    async def long_query() -> None:
        async with pool.connection() as conn:
            await fetchval(conn, "SELECT pg_sleep(5)")

    task = asyncio.create_task(long_query())
    await wait_until(lambda: pool.stats().in_use == 1)
    await asyncio.sleep(0.1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    async with pool.connection(timeout=5) as conn:
        assert await fetchval(conn, "SELECT 1") == 1
    await assert_books_balance(pool)


# -- event loops -----------------------------------------------------------------------


def test_a_pool_used_from_another_loop_says_what_to_do(dsn: str, driver: str) -> None:
    async def make() -> AsyncPool:
        pool = AsyncPool(dsn, min_size=1, driver=driver, name="pk-async-loop")
        await pool.wait(5)
        return pool

    pool = asyncio.run(make())
    # The first loop shut down, and the pool with it.
    assert pool.closed
    with pytest.raises(WrongEventLoop, match="AsyncDatabase"):
        asyncio.run(pool.getconn())


def test_a_pool_whose_loop_runs_elsewhere_refuses_to_lend(dsn: str, driver: str) -> None:
    async def scenario() -> None:
        pool = AsyncPool(dsn, min_size=1, driver=driver, name="pk-async-otherloop")
        await pool.wait(5)
        errors: list[BaseException] = []

        def in_thread() -> None:
            try:
                asyncio.run(pool.getconn())
            except BaseException as exc:
                errors.append(exc)

        await asyncio.to_thread(in_thread)
        assert isinstance(errors[0], WrongEventLoop)
        await pool.close()

    asyncio.run(scenario())


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_pool_made_with_open_false_before_fork_opens_in_the_child(dsn: str, driver: str) -> None:
    # The pre-fork server pattern: built at import time, opened in each worker's loop.
    pool = AsyncPool(dsn, min_size=1, driver=driver, open=False, name="pk-async-prefork")

    async def borrow() -> object:
        await pool.open()
        async with pool.connection() as conn:
            value = await fetchval(conn, "SELECT 1")
        await pool.close()
        return value

    assert in_forked_child(lambda: asyncio.run(borrow())) == ["ok: 1"]


def test_a_pool_made_outside_any_loop_opens_at_first_use(
    dsn: str, driver: str, admin: Admin
) -> None:
    pool = AsyncPool(dsn, min_size=2, driver=driver, name="pk-async-lazy")
    assert not pool.closed

    async def use() -> int:
        async with pool.connection() as conn:
            value: int = await fetchval(conn, "SELECT 7")
        await pool.wait(5)
        return value

    assert asyncio.run(use()) == 7
    # asyncio.run closed the loop, and the pool closed its connections with it.
    assert pool.closed
    assert settled_backends(admin, "pk-async-lazy", []) == []


def test_close_on_loop_shutdown_logs_nothing_alarming(
    dsn: str, driver: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)

    async def forget_to_close() -> None:
        pool = AsyncPool(dsn, min_size=2, driver=driver, name="pk-async-forgot")
        await pool.wait(5)
        async with pool.connection() as conn:
            await fetchval(conn, "SELECT 1")

    asyncio.run(forget_to_close())
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


@pytest.mark.parametrize("statement_timeout", [1.5, None])
async def test_statement_timeout_guards_psycopg_connections_against_silence(
    dsn: str, statement_timeout: float | None
) -> None:
    # Only pools with statement_timeout pay for the no-answer guard (see reliability.md).
    pool = AsyncPool(dsn, min_size=1, name="pk-async-guarded", statement_timeout=statement_timeout)
    try:
        async with pool.connection() as conn:
            guarded = isinstance(conn, AsyncGuardedConnection)
            assert guarded is (statement_timeout is not None)
            assert await fetchval(conn, "SELECT 1") == 1
    finally:
        await pool.close()

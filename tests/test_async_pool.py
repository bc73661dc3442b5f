"""What only AsyncPool has: cancellation, event loops, its loop timer, asyncpg.

Everything Pool and AsyncPool share is written once in tests/behaviour/ and runs
against both; each test here says why it cannot be (tests/pool_kinds.py checks).
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import weakref
from typing import Any

import asyncpg
import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from poolkeeper import AsyncPool, WrongEventLoop
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
    fetchval,
    wait_until,
)
from tests.conftest import backends, in_forked_child, settled_backends

driver = async_helpers.driver
make_async_pool = async_helpers.make_async_pool

Admin = psycopg.Connection[Any]


# -- load --------------------------------------------------------------------------------


@pytest.mark.one_model(
    "asyncio",
    "AsyncPool's wait ring takes plain stores from its loop's thread; Pool's samples are "
    "thread-safe (test_stress.py)",
)
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


@pytest.mark.one_model(
    "asyncio", "AsyncPool's deadline keeper is one loop timer (Pool's is a thread)"
)
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
        # The pool's timer holds it weakly: callback(ref) with ref() the pool.
        if args and isinstance(args[0], weakref.ref) and args[0]() is pool:
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


@pytest.mark.one_model(
    "asyncio",
    "load on one event loop; Pool under threads is tests/test_stress.py, run free-threaded too",
)
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


# -- cancellation ------------------------------------------------------------------------


@pytest.mark.one_model(
    "asyncio", "cancellation: a task can be cancelled at any await; a blocked thread cannot"
)
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


@pytest.mark.one_model(
    "asyncio", "cancellation: a task can be cancelled at any await; a blocked thread cannot"
)
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


@pytest.mark.one_model(
    "asyncio", "cancellation: a task can be cancelled at any await; a blocked thread cannot"
)
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
        "SELECT state FROM pg_stat_activity"
        " WHERE datname = current_database() AND application_name = 'pk-async-cancel'"
    ).fetchall()
    assert {s for (s,) in states} == {"idle"}


@pytest.mark.one_model(
    "asyncio", "cancellation: a task can be cancelled at any await; a blocked thread cannot"
)
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


@pytest.mark.one_model(
    "asyncio", "cancellation: a task can be cancelled at any await; a blocked thread cannot"
)
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


# -- event loops -------------------------------------------------------------------------


@pytest.mark.one_model("asyncio", "an AsyncPool belongs to one event loop")
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


@pytest.mark.one_model("asyncio", "an AsyncPool belongs to one event loop")
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


@pytest.mark.one_model(
    "asyncio",
    "the child opens the pool in its own event loop; Pool's pre-fork case is in test_pool.py",
)
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


@pytest.mark.one_model(
    "asyncio", "binding to the first loop that uses it; a Pool opens in its constructor"
)
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


@pytest.mark.one_model("asyncio", "closing with the loop that asyncio.run shuts down")
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


# -- asyncio drivers ---------------------------------------------------------------------


@pytest.mark.one_model(
    "asyncio",
    "psycopg's AsyncGuardedConnection; the sync GuardedConnection is in test_self_healing.py",
)
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


#: Statements as a caller sends them, with their arguments: answers of every shape,
#: and the errors asyncpg raises before, while and after the server runs them (a
#: type asyncpg must introspect first, pk_drv_mood, among them).
_AS_ASYNCPG_QUERIES: list[tuple[str, tuple[Any, ...]]] = [
    ("SELECT 1", ()),
    ("SELECT $1::int + 1", (41,)),
    ("SELECT 1 AS a, 'b' AS b", ()),
    ("SELECT generate_series(1, $1) AS g", (3,)),
    ("SELECT 1 WHERE false", ()),
    ("SELECT NULL", ()),
    ("VALUES (1, 'a'), (2, 'b')", ()),
    ("SELECT $1::int[]", ([1, 2],)),
    ("SELECT $1::pk_drv_mood, ARRAY['ok']::pk_drv_mood[]", ("sad",)),
    ("SELECT 1/0", ()),
    ("SELEC 1", ()),
    ("SELECT 1; SELECT 2", ()),
    ("SELECT $1::text", (5,)),
    ("SELECT $1::int", ()),
    ("SELECT 1", (1,)),
    ("SELECT 'x'::pk_drv_no_such_type", ()),
    ("SHOW search_path", ()),
]

_Call = tuple[str, str, tuple[Any, ...], dict[str, Any]]


class _Tagged(asyncpg.Record):
    """A caller's record_class."""


@st.composite
def _asyncpg_calls(draw: st.DrawFn) -> _Call:
    query, args = draw(st.sampled_from(_AS_ASYNCPG_QUERIES))
    method = draw(st.sampled_from(["fetch", "fetchval", "fetchrow", "execute", "prepared"]))
    kwargs: dict[str, Any] = {}
    if method in ("fetch", "fetchrow", "prepared") and draw(st.booleans()):
        kwargs["record_class"] = _Tagged
    if method == "fetchval" and draw(st.booleans()):
        kwargs["column"] = draw(st.sampled_from([0, 1, 5]))
    if draw(st.booleans()):
        kwargs["timeout"] = draw(st.sampled_from([None, 5.0]))
    return method, query, args, kwargs


def _as_asyncpg_answer(value: Any) -> Any:
    if isinstance(value, asyncpg.Record):
        return (type(value).__name__, tuple(value.items()))
    if isinstance(value, list):
        return [_as_asyncpg_answer(item) for item in value]
    return value


async def _asyncpg_call(conn: Any, call: _Call) -> Any:
    """What the caller sees: the answer, or the exception's class and message."""
    method, query, args, kwargs = call
    kwargs = dict(kwargs)
    try:
        if method == "prepared":
            record_class = kwargs.pop("record_class", None)
            statement = await conn.prepare(query, record_class=record_class, **kwargs)
            answer = await statement.fetch(*args)
        else:
            answer = await getattr(conn, method)(query, *args, **kwargs)
    except Exception as exc:
        return ("raised", type(exc).__name__, str(exc))
    return ("answered", _as_asyncpg_answer(answer))


async def _asyncpg_both(plain: Any, pool: AsyncPool, script: list[_Call]) -> None:
    """Run ``script`` on ``plain`` and on a connection of ``pool``, call by call."""
    logged: tuple[list[Any], list[Any]] = ([], [])
    async with pool.connection() as ours:
        for conn, log in ((plain, logged[0]), (ours, logged[1])):
            conn.add_query_logger(
                lambda r, log=log: log.append(
                    (r.query, r.args, r.timeout, type(r.exception).__name__)
                )
            )
        try:
            for call in script:
                expected = await _asyncpg_call(plain, call)
                assert await _asyncpg_call(ours, call) == expected, call
            await asyncio.sleep(0)  # asyncpg calls loggers with call_soon
        finally:
            plain._query_loggers.clear()
    assert logged[1] == logged[0]


@pytest.mark.one_model("asyncio", "asyncpg is an asyncio-only driver")
def test_asyncpg_pool_connection_answers_as_asyncpg_does(dsn: str, admin: Admin) -> None:
    """Whatever a caller sends through fetch, fetchval, fetchrow, execute or a prepared
    statement, with any of their keyword arguments, a pool connection (which judges
    every statement in its own _execute and _introspect_types) gives what a plain
    asyncpg connection gives: the same values, records of the same class, the same
    exception with the same message, and the same records for its query loggers."""
    admin.execute("DROP TYPE IF EXISTS pk_drv_mood")
    admin.execute("CREATE TYPE pk_drv_mood AS ENUM ('sad', 'ok')")
    loop = asyncio.new_event_loop()
    pool = AsyncPool(dsn, driver="asyncpg", min_size=1, max_size=1, name="pk-as-asyncpg")
    plain: Any = None
    try:
        loop.run_until_complete(pool.open())
        plain = loop.run_until_complete(asyncpg.connect(dsn))

        @settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
        @given(script=st.lists(_asyncpg_calls(), min_size=1, max_size=4))
        def answers_alike(script: list[_Call]) -> None:
            loop.run_until_complete(_asyncpg_both(plain, pool, script))

        answers_alike()
    finally:
        if plain is not None:
            loop.run_until_complete(plain.close())
        loop.run_until_complete(pool.close())
        loop.close()
        admin.execute("DROP TYPE IF EXISTS pk_drv_mood")


@pytest.mark.one_model("asyncio", "asyncpg is an asyncio-only driver")
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


@pytest.mark.one_model("asyncio", "asyncpg is an asyncio-only driver")
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
    # Judged (a cast may run user code: a settings check), and not a reset.
    assert drv.return_state(conn) == drv.check_state
    drv.mark_clean(conn)
    # A log listener runs no SQL: the return check sees it anyway, and takes it off
    # without a session reset (it is client-side only).
    conn.add_log_listener(lambda *_: None)
    assert drv.return_state(conn) != drv.clean_state
    await pool.putconn(conn)
    assert pool.stats().resets == 0
    conn = await pool.getconn()
    assert drv.return_state(conn) == drv.clean_state
    await conn.add_listener("pk_channel", lambda *_: None)
    assert drv.return_state(conn) != drv.clean_state
    await pool.putconn(conn)
    assert pool.stats().resets == 1

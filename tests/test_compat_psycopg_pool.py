"""``poolkeeper.compat.psycopg_pool``: psycopg_pool's API and semantics, on the server.

The cases follow what psycopg_pool's own tests/pool/ check (sizes, configure,
reset, rollback of a returned transaction, open/wait/close, resize, check,
stats, max_waiting, timeouts), written afresh against the drop-in classes.
"""

from __future__ import annotations

import asyncio
import inspect
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg.pq import TransactionStatus
from psycopg.rows import DictRow, Row, dict_row

from poolkeeper import ConfigurationError
from poolkeeper.compat import psycopg_pool as compat
from poolkeeper.compat.psycopg_pool import (
    AsyncConnectionPool,
    ConnectionPool,
    PoolClosed,
    PoolTimeout,
    TooManyRequests,
)
from tests.conftest import backends, settled_backends


@pytest.fixture
def table(admin: psycopg.Connection[Any]) -> Iterator[str]:
    """A table the test writes to, dropped afterwards."""
    admin.execute("DROP TABLE IF EXISTS pk_compat_rows")
    admin.execute("CREATE TABLE pk_compat_rows (x int)")
    yield "pk_compat_rows"
    admin.execute("DROP TABLE IF EXISTS pk_compat_rows")


def _rows(admin: psycopg.Connection[Any]) -> list[int]:
    return [r[0] for r in admin.execute("SELECT x FROM pk_compat_rows ORDER BY x").fetchall()]


def _terminate(admin: psycopg.Connection[Any], pids: list[int]) -> None:
    for pid in pids:
        admin.execute("SELECT pg_terminate_backend(%s)", [pid])
    deadline = time.monotonic() + 5
    while set(pids) & {r[0] for r in admin.execute("SELECT pid FROM pg_stat_activity")}:
        assert time.monotonic() < deadline
        time.sleep(0.01)


# -- construction --------------------------------------------------------------------------


@pytest.mark.one_model(
    "threads",
    "psycopg_pool's ConnectionPool API, case by case as psycopg_pool's own tests",
)
def test_default_sizes_and_names(dsn: str) -> None:
    with ConnectionPool(dsn, open=False) as pool:
        assert (pool.min_size, pool.max_size) == (4, 4)
        assert pool.name.startswith("pool-")
        assert pool.timeout == 30.0
    with ConnectionPool(dsn, min_size=2, max_size=5, name="pk-compat-sizes", open=False) as p:
        assert (p.min_size, p.max_size, p.name) == (2, 5, "pk-compat-sizes")


@pytest.mark.parametrize("name", ["ConnectionPool", "AsyncConnectionPool"])
def test_the_constructors_take_psycopg_pools_arguments_and_defaults(name: str) -> None:
    """Each argument has psycopg_pool's name, kind and default (``connection_class``:
    each class's own psycopg connection class)."""
    upstream = pytest.importorskip("psycopg_pool")

    def shape(cls: type) -> list[tuple[str, object, object]]:
        params = inspect.signature(cls).parameters.values()
        return [(p.name, p.kind, p.default) for p in params]

    theirs = shape(getattr(upstream, name))
    assert [p for p in shape(getattr(compat, name)) if p not in theirs] == []


def test_the_pools_keep_psycopg_pools_attributes(dsn: str) -> None:
    kwargs = {"application_name": "pk-compat-attrs"}
    pool = ConnectionPool(dsn, kwargs=kwargs, open=False)
    assert (pool.conninfo, pool.kwargs, pool.connection_class) == (
        dsn,
        kwargs,
        psycopg.Connection,
    )
    apool = AsyncConnectionPool(dsn, kwargs=kwargs, open=False)
    assert (apool.conninfo, apool.kwargs, apool.connection_class) == (
        dsn,
        kwargs,
        psycopg.AsyncConnection,
    )


@pytest.mark.parametrize("cls", [ConnectionPool, AsyncConnectionPool])
def test_the_pools_show_their_settings_under_psycopg_pools_names(dsn: str, cls: type) -> None:
    defaults = cls(dsn, open=False)
    assert (defaults.max_waiting, defaults.max_lifetime, defaults.max_idle) == (0, 3600, 600)
    assert (defaults.reconnect_timeout, defaults.num_workers) == (300, 3)
    given = cls(
        dsn,
        max_waiting=7,
        max_lifetime=120.0,
        max_idle=45.0,
        reconnect_timeout=9.0,
        num_workers=2,
        open=False,
    )
    assert (given.max_waiting, given.max_lifetime, given.max_idle) == (7, 120.0, 45.0)
    assert (given.reconnect_timeout, given.num_workers) == (9.0, 2)


class _RowConnection(psycopg.Connection[Row]):
    """A connection class generic in its row type, as psycopg's typing guide writes one."""


@pytest.mark.one_model(
    "threads",
    "psycopg_pool's ConnectionPool API, case by case as psycopg_pool's own tests",
)
def test_a_pool_is_generic_in_the_connection_class_it_lends(
    dsn: str, admin: psycopg.Connection[Any]
) -> None:
    """``ConnectionPool[C]`` works at run time, and ``connection_class=C[DictRow]`` lends
    instances of ``C`` (the subscript is for type checkers)."""
    name = "pk-compat-generic"
    typed_pool = ConnectionPool[_RowConnection[DictRow]]
    with (
        typed_pool(
            dsn,
            connection_class=_RowConnection[DictRow],
            kwargs={"row_factory": dict_row},
            min_size=1,
            name=name,
        ) as pool,
        pool.connection() as conn,
    ):
        assert isinstance(conn, _RowConnection)
        row = conn.execute("SELECT pg_backend_pid() AS pid").fetchone()
        assert row is not None
        assert backends(admin, name) == [row["pid"]]


@pytest.mark.one_model(
    "threads",
    "psycopg_pool's ConnectionPool API, case by case as psycopg_pool's own tests",
)
@pytest.mark.parametrize(("min_size", "max_size"), [(2, 1), (-1, None), (0, 0)])
def test_bad_sizes(dsn: str, min_size: int, max_size: int | None) -> None:
    with pytest.raises(ConfigurationError):
        ConnectionPool(dsn, min_size=min_size, max_size=max_size, open=False)


@pytest.mark.one_model(
    "threads",
    "psycopg_pool's ConnectionPool API, case by case as psycopg_pool's own tests",
)
def test_kwargs_reach_the_server(dsn: str, admin: psycopg.Connection[Any]) -> None:
    with ConnectionPool(
        dsn, min_size=1, kwargs={"application_name": "pk-compat-kwargs"}, name="pk-compat-kw"
    ) as pool:
        pool.wait(5)
        assert len(backends(admin, "pk-compat-kwargs")) == 1


# -- connection(): commit on a clean exit -----------------------------------------------


@pytest.mark.one_model(
    "threads",
    "psycopg_pool's ConnectionPool API, case by case as psycopg_pool's own tests",
)
def test_connection_commits_on_a_clean_exit(
    dsn: str, admin: psycopg.Connection[Any], table: str
) -> None:
    """psycopg_pool's semantics: an INSERT without commit() is kept."""
    with ConnectionPool(dsn, min_size=1, name="pk-compat-commit") as pool:
        with pool.connection() as conn:
            conn.execute("INSERT INTO pk_compat_rows VALUES (1)")
        assert _rows(admin) == [1]


@pytest.mark.one_model(
    "threads",
    "psycopg_pool's ConnectionPool API, case by case as psycopg_pool's own tests",
)
def test_connection_rolls_back_when_the_block_raises(
    dsn: str, admin: psycopg.Connection[Any], table: str
) -> None:
    with ConnectionPool(dsn, min_size=1, name="pk-compat-rollback") as pool:
        with pytest.raises(ZeroDivisionError), pool.connection() as conn:
            conn.execute("INSERT INTO pk_compat_rows VALUES (1)")
            1 / 0  # noqa: B018
        assert _rows(admin) == []
        with pool.connection() as conn:  # the connection is fine afterwards
            assert conn.info.transaction_status == TransactionStatus.IDLE


@pytest.mark.one_model(
    "threads",
    "psycopg_pool's ConnectionPool API, case by case as psycopg_pool's own tests",
)
def test_connection_closed_in_the_block_is_replaced(dsn: str) -> None:
    inits: list[int] = []

    def configure(conn: psycopg.Connection[Any]) -> None:
        inits.append(conn.info.backend_pid)
        with conn.transaction():
            conn.execute("SET default_transaction_read_only TO on")

    with ConnectionPool(dsn, min_size=1, configure=configure, name="pk-compat-conf") as pool:
        pool.wait(5)
        with pool.connection() as conn:
            assert conn.execute("SHOW default_transaction_read_only").fetchone() == ("on",)
        with pool.connection() as conn:
            assert len(inits) == 1
            conn.close()
        with pool.connection() as conn:
            assert len(inits) == 2
            assert conn.execute("SHOW default_transaction_read_only").fetchone() == ("on",)


@pytest.mark.one_model(
    "threads",
    "psycopg_pool's ConnectionPool API, case by case as psycopg_pool's own tests",
)
def test_with_conn_in_a_borrow_commits_and_leaves_the_connection_to_the_pool(
    dsn: str, admin: psycopg.Connection[Any], table: str
) -> None:
    """psycopg's ``with conn:`` closes a connection at its end unless a pool lent it:
    inside a borrow it only commits, and the pool keeps the session."""
    name = "pk-compat-withconn"
    with ConnectionPool(dsn, min_size=1, max_size=1, name=name, timeout=5) as pool:
        pool.wait(5)
        [pid] = backends(admin, name)
        with pool.connection() as conn:
            with conn:
                conn.execute("INSERT INTO pk_compat_rows VALUES (1)")
            assert not conn.closed
        conn = pool.getconn()
        with conn:
            conn.execute("INSERT INTO pk_compat_rows VALUES (2)")
        pool.putconn(conn)
        assert _rows(admin) == [1, 2]
        with pool.connection() as conn:
            assert conn.info.backend_pid == pid
        assert backends(admin, name) == [pid]


class _ClosesIntoItsPool(psycopg.Connection[Any]):
    """An integration's connection (SQLAlchemy's NullPool recipe for psycopg_pool)
    whose ``close()`` gives a lent connection back to the pool psycopg's ``_pool``
    names, and really closes any other."""

    def close(self) -> None:
        lender = getattr(self, "_pool", None)
        if lender is not None:
            lender.putconn(self)
        else:
            super().close()


@pytest.mark.one_model(
    "threads",
    "psycopg_pool's ConnectionPool API, case by case as psycopg_pool's own tests",
)
def test_a_connection_class_can_return_itself_to_its_pool_on_close(
    dsn: str, admin: psycopg.Connection[Any]
) -> None:
    name = "pk-compat-selfreturn"
    with ConnectionPool(
        dsn, min_size=1, max_size=1, connection_class=_ClosesIntoItsPool, name=name, timeout=5
    ) as pool:
        conn = pool.getconn()
        pid = conn.info.backend_pid
        conn.close()
        assert not conn.closed
        with pool.connection() as again:
            assert again.info.backend_pid == pid
        assert backends(admin, name) == [pid]
    assert conn.closed
    assert settled_backends(admin, name, []) == []


# -- getconn/putconn -------------------------------------------------------------------------


@pytest.mark.one_model(
    "threads",
    "psycopg_pool's ConnectionPool API, case by case as psycopg_pool's own tests",
)
def test_a_returned_transaction_is_rolled_back(dsn: str) -> None:
    with ConnectionPool(dsn, min_size=1, name="pk-compat-intrans") as pool:
        conn = pool.getconn()
        pid = conn.info.backend_pid
        conn.execute("CREATE TABLE pk_compat_intrans ()")
        assert conn.info.transaction_status == TransactionStatus.INTRANS
        pool.putconn(conn)
        with pool.connection() as again:
            assert again.info.backend_pid == pid
            row = again.execute("SELECT to_regclass('pk_compat_intrans')").fetchone()
            assert row == (None,)


@pytest.mark.one_model(
    "threads",
    "psycopg_pool's ConnectionPool API, case by case as psycopg_pool's own tests",
)
def test_putconn_of_a_foreign_connection_is_an_error(dsn: str) -> None:
    with (
        ConnectionPool(dsn, min_size=1, name="pk-compat-foreign") as pool,
        psycopg.connect(dsn) as other,
        pytest.raises(Exception, match="did not lend"),
    ):
        pool.putconn(other)


# -- open, wait, close --------------------------------------------------------------------


@pytest.mark.one_model(
    "threads",
    "psycopg_pool's ConnectionPool API, case by case as psycopg_pool's own tests",
)
def test_open_wait_and_close(dsn: str, admin: psycopg.Connection[Any]) -> None:
    pool = ConnectionPool(dsn, min_size=2, open=False, name="pk-compat-open")
    assert pool.closed
    with pytest.raises(PoolClosed):
        pool.getconn()
    pool.open(wait=True, timeout=5)
    assert not pool.closed
    assert len(backends(admin, "pk-compat-open")) == 2
    pool.close()
    assert pool.closed
    with pytest.raises(PoolClosed):
        pool.getconn()
    assert settled_backends(admin, "pk-compat-open", []) == []


@pytest.mark.one_model(
    "threads",
    "psycopg_pool's ConnectionPool API, case by case as psycopg_pool's own tests",
)
def test_wait_times_out_on_a_port_nobody_answers() -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))  # bound, not listening: refused
    port = sock.getsockname()[1]
    try:
        pool = ConnectionPool(f"postgresql://postgres@127.0.0.1:{port}/x", min_size=1)
        with pytest.raises(PoolTimeout):
            pool.wait(timeout=0.5)
        pool.close()
    finally:
        sock.close()


@pytest.mark.one_model(
    "threads",
    "psycopg_pool's ConnectionPool API, case by case as psycopg_pool's own tests",
)
def test_reconnect_failed_is_called_with_the_pool() -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    called = threading.Event()
    seen: list[object] = []

    def failed(pool: object) -> None:
        seen.append(pool)
        called.set()

    try:
        pool = ConnectionPool(
            f"postgresql://postgres@127.0.0.1:{port}/x",
            min_size=1,
            reconnect_timeout=0.3,
            reconnect_failed=failed,
        )
        assert called.wait(5)
        assert seen[0] is pool
        pool.close()
    finally:
        sock.close()


# -- resize, check ---------------------------------------------------------------------------


@pytest.mark.one_model(
    "threads",
    "psycopg_pool's ConnectionPool API, case by case as psycopg_pool's own tests",
)
def test_resize(dsn: str, admin: psycopg.Connection[Any]) -> None:
    with ConnectionPool(dsn, min_size=1, max_size=2, name="pk-compat-resize") as pool:
        pool.wait(5)
        pool.resize(3)
        assert (pool.min_size, pool.max_size) == (3, 3)
        pool.wait(5)
        assert len(backends(admin, "pk-compat-resize")) == 3
        with pytest.raises(ConfigurationError):
            pool.resize(3, 2)


@pytest.mark.one_model(
    "threads",
    "psycopg_pool's ConnectionPool API, case by case as psycopg_pool's own tests",
)
def test_check_replaces_dead_connections(dsn: str, admin: psycopg.Connection[Any]) -> None:
    name = "pk-compat-check"
    with ConnectionPool(dsn, min_size=2, name=name) as pool:
        pool.wait(5)
        old = backends(admin, name)
        _terminate(admin, old)
        pool.check()
        pool.wait(5)
        new = backends(admin, name)
        assert len(new) == 2 and not set(new) & set(old)


@pytest.mark.one_model(
    "threads",
    "psycopg_pool's ConnectionPool API, case by case as psycopg_pool's own tests",
)
def test_check_connection_runs_before_every_lend(dsn: str, admin: psycopg.Connection[Any]) -> None:
    """psycopg_pool's recipe: a connection killed a moment after its return is
    caught before it is lent, and the check leaves no transaction open."""
    name = "pk-compat-checkconn"
    with ConnectionPool(dsn, min_size=1, name=name, check=ConnectionPool.check_connection) as pool:
        with pool.connection() as conn:
            pid = conn.info.backend_pid
        _terminate(admin, [pid])
        with pool.connection() as conn:
            assert conn.info.backend_pid != pid
            assert conn.info.transaction_status == TransactionStatus.IDLE
            conn.execute("SELECT 1")


# -- reset= ----------------------------------------------------------------------------------


@pytest.mark.one_model(
    "threads",
    "psycopg_pool's ConnectionPool API, case by case as psycopg_pool's own tests",
)
def test_reset_runs_on_every_return_and_has_the_last_word(dsn: str) -> None:
    resets: list[int] = []

    def reset(conn: psycopg.Connection[Any]) -> None:
        resets.append(1)
        with conn.transaction():
            conn.execute("SET timezone TO 'Asia/Tokyo'")

    with ConnectionPool(dsn, min_size=1, max_size=1, reset=reset, name="pk-compat-reset") as p:
        with p.connection() as conn:
            conn.execute("SET timezone TO '+2:00'")
        assert len(resets) == 1
        with p.connection() as conn:
            assert conn.execute("SHOW timezone").fetchone() == ("Asia/Tokyo",)
        assert len(resets) == 2


@pytest.mark.one_model(
    "threads",
    "psycopg_pool's ConnectionPool API, case by case as psycopg_pool's own tests",
)
@pytest.mark.parametrize(
    ("sql", "said"),
    [("RESET ALL", "inside a transaction"), ("WAT", 'syntax error at or near "WAT"')],
)
def test_a_reset_that_fails_or_leaves_a_transaction_discards_the_connection(
    dsn: str, admin: psycopg.Connection[Any], pk_logs: pytest.LogCaptureFixture, sql: str, said: str
) -> None:
    """The connection is closed on the server, and the log says why: a reset= that
    fails on every return would otherwise replace every connection silently."""

    def reset(conn: psycopg.Connection[Any]) -> None:
        conn.execute(sql)  # no commit: a transaction is left open (or the SQL fails)

    name = "pk-compat-badr"
    with ConnectionPool(dsn, min_size=1, max_size=1, reset=reset, name=name) as p:
        with p.connection() as conn:
            pid1 = conn.info.backend_pid
        with p.connection() as conn:
            pid2 = conn.info.backend_pid
        assert pid1 not in settled_backends(admin, name, [pid2])
    assert pid1 != pid2
    warnings = [r.getMessage() for r in pk_logs.records if r.levelname == "WARNING"]
    assert any("reset= failed" in m and said in m for m in warnings), warnings


# -- limits --------------------------------------------------------------------------------


@pytest.mark.one_model(
    "threads",
    "psycopg_pool's ConnectionPool API, case by case as psycopg_pool's own tests",
)
def test_max_waiting_refuses_at_once(dsn: str) -> None:
    with ConnectionPool(dsn, min_size=1, max_waiting=1, name="pk-compat-maxw") as pool:
        held = pool.getconn()
        waiter = threading.Thread(target=lambda: pool.putconn(pool.getconn(timeout=5)))
        waiter.start()
        deadline = time.monotonic() + 5
        while pool.get_stats()["requests_waiting"] < 1:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        with pytest.raises(TooManyRequests):
            pool.getconn()
        pool.putconn(held)
        waiter.join(5)
        assert pool.get_stats()["requests_errors"] == 1


@pytest.mark.one_model(
    "threads",
    "psycopg_pool's ConnectionPool API, case by case as psycopg_pool's own tests",
)
def test_getconn_times_out(dsn: str) -> None:
    with ConnectionPool(dsn, min_size=1, name="pk-compat-timeout") as pool:
        held = pool.getconn()
        start = time.monotonic()
        with pytest.raises(PoolTimeout):
            pool.getconn(timeout=0.2)
        assert time.monotonic() - start >= 0.2
        pool.putconn(held)


# -- stats -----------------------------------------------------------------------------------


@pytest.mark.one_model(
    "threads",
    "psycopg_pool's ConnectionPool API, case by case as psycopg_pool's own tests",
)
def test_get_stats_and_pop_stats(dsn: str) -> None:
    with ConnectionPool(dsn, min_size=2, name="pk-compat-stats") as pool:
        pool.wait(5)
        for _ in range(3):
            with pool.connection() as conn:
                conn.execute("SELECT pg_sleep(0.01)")
        stats = pool.get_stats()
        assert (stats["pool_min"], stats["pool_max"], stats["pool_size"]) == (2, 2, 2)
        assert stats["requests_num"] == 3
        assert stats["usage_ms"] >= 30
        assert stats["connections_num"] == 2
        assert pool.pop_stats()["requests_num"] == 3
        with pool.connection():
            pass
        popped = pool.pop_stats()
        assert popped["requests_num"] == 1
        assert popped["pool_available"] == 2  # gauges are not differences
        # psycopg_pool's pop_stats() starts its counters again; poolkeeper's own go on.
        assert pool.get_stats()["requests_num"] == 0
        assert pool.stats().borrows == 4


@pytest.mark.one_model(
    "threads",
    "psycopg_pool's ConnectionPool API, case by case as psycopg_pool's own tests",
)
def test_failed_requests_count_as_requests(dsn: str) -> None:
    """As in psycopg_pool, a request is counted when it is made, whatever its end: a
    timed-out one is a request, a queued one and an error, and its wait is counted."""
    with ConnectionPool(dsn, min_size=1, name="pk-compat-reqs", timeout=5) as pool:
        pool.wait(5)
        held = pool.getconn()
        with pytest.raises(PoolTimeout):
            pool.getconn(timeout=0.05)
        stats = pool.get_stats()
        assert (stats["requests_num"], stats["requests_queued"]) == (2, 1)
        assert stats["requests_errors"] == 1
        assert stats["requests_wait_ms"] >= 50  # the failed request's wait counts too
        pool.putconn(held)


# -- close_returns and connection_class ------------------------------------------------------


class _Custom(psycopg.Connection[Any]):
    pass


@pytest.mark.one_model(
    "threads",
    "psycopg_pool's ConnectionPool API, case by case as psycopg_pool's own tests",
)
def test_close_returns_with_a_custom_class(dsn: str, admin: psycopg.Connection[Any]) -> None:
    name = "pk-compat-closeret"
    with ConnectionPool(
        dsn, min_size=1, max_size=1, name=name, close_returns=True, connection_class=_Custom
    ) as pool:
        conn = pool.getconn()
        assert isinstance(conn, _Custom)
        pid = conn.info.backend_pid
        conn.close()
        assert pool.get_stats()["pool_available"] == 1
        with pool.connection() as again:
            assert again.info.backend_pid == pid
        assert backends(admin, name) == [pid]


# -- the asyncio pool ------------------------------------------------------------------------


@pytest.mark.one_model("asyncio", "psycopg_pool's AsyncConnectionPool API")
async def test_async_connection_commits_and_rolls_back(
    dsn: str, admin: psycopg.Connection[Any], table: str
) -> None:
    async with AsyncConnectionPool(dsn, min_size=1, name="pk-compat-async-commit") as pool:
        async with pool.connection() as conn:
            await conn.execute("INSERT INTO pk_compat_rows VALUES (1)")
        with pytest.raises(ZeroDivisionError):
            async with pool.connection() as conn:
                await conn.execute("INSERT INTO pk_compat_rows VALUES (2)")
                1 / 0  # noqa: B018
        assert _rows(admin) == [1]


@pytest.mark.one_model("asyncio", "psycopg_pool's AsyncConnectionPool API")
async def test_async_getconn_putconn_reset_check_and_stats(
    dsn: str, admin: psycopg.Connection[Any]
) -> None:
    name = "pk-compat-async"
    resets: list[int] = []

    async def reset(conn: psycopg.AsyncConnection[Any]) -> None:
        resets.append(1)

    pool = AsyncConnectionPool(
        dsn,
        min_size=1,
        max_size=2,
        name=name,
        reset=reset,
        check=AsyncConnectionPool.check_connection,
        open=False,
    )
    await pool.open(wait=True, timeout=5)
    try:
        conn = await pool.getconn()
        pid = conn.info.backend_pid
        await conn.execute("CREATE TABLE pk_compat_async_intrans ()")
        await pool.putconn(conn)
        assert resets == [1]
        _terminate(admin, [pid])
        async with pool.connection() as conn:
            assert conn.info.backend_pid != pid  # caught by check_connection
            cur = await conn.execute("SELECT to_regclass('pk_compat_async_intrans')")
            assert await cur.fetchone() == (None,)
        await pool.resize(2)
        await pool.wait(5)
        assert pool.get_stats()["pool_size"] == 2
        assert pool.pop_stats()["requests_num"] == 2
        assert pool.pop_stats()["requests_num"] == 0
    finally:
        await pool.close()
    assert pool.closed
    with pytest.raises(PoolClosed):
        await pool.getconn()


@pytest.mark.one_model("asyncio", "psycopg_pool's AsyncConnectionPool API")
async def test_async_conninfo_and_kwargs_may_be_coroutine_functions(
    dsn: str, admin: psycopg.Connection[Any]
) -> None:
    """psycopg_pool's AsyncConnectionPool awaits a conninfo or kwargs callable that is
    a coroutine function (an async token fetch, say), at every connect."""
    calls: list[str] = []

    async def conninfo() -> str:
        calls.append("conninfo")
        return dsn

    async def kwargs() -> dict[str, Any]:
        calls.append("kwargs")
        return {"application_name": f"pk-compat-afetch-{len(calls)}"}

    async with AsyncConnectionPool(
        conninfo, kwargs=kwargs, min_size=2, name="pk-compat-afetch"
    ) as pool:
        await pool.wait(5)
        assert sorted(calls) == ["conninfo", "conninfo", "kwargs", "kwargs"]
        seen = admin.execute(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE datname = current_database() AND application_name LIKE %s",
            ["pk-compat-afetch-_"],
        ).fetchone()
        assert seen == (2,)


@pytest.mark.one_model("asyncio", "psycopg_pool's AsyncConnectionPool API")
async def test_async_max_waiting_and_timeout(dsn: str) -> None:
    async with AsyncConnectionPool(
        dsn, min_size=1, max_waiting=1, name="pk-compat-async-limits"
    ) as pool:
        held = await pool.getconn()
        waiter = asyncio.create_task(pool.getconn(timeout=0.3))
        while pool.get_stats()["requests_waiting"] < 1:
            await asyncio.sleep(0.01)
        with pytest.raises(TooManyRequests):
            await pool.getconn()
        with pytest.raises(PoolTimeout):
            await waiter
        await pool.putconn(held)
        stats = pool.get_stats()
        assert (stats["requests_num"], stats["requests_errors"]) == (3, 2)
        # The wait that timed out is a timeout, not also a cancelled wait.
        assert (pool.stats().timeouts, pool.stats().cancelled) == (1, 0)

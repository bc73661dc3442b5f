"""A silent network under an AsyncPool, once per driver: the asyncio twins of
test_backend_loss's black-hole and silent-server scenarios, and asyncpg's own
no-answer guard. A killed backend and a reset connection are written once, for
every pool kind, in test_backend_loss."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import psycopg
import pytest

from poolkeeper import AsyncPool, ConnectionFailed, PoolTimeout
from poolkeeper.drivers.psycopg_async import AsyncGuardedConnection
from poolkeeper.embedded import LocalServer
from poolkeeper.policy import silence_limit
from tests.async_helpers import driver, fetchval
from tests.faults.conftest import Report
from tests.faults.proxy import FaultProxy

pytestmark = pytest.mark.fault

__all__ = ["driver"]  # the fixture: each test runs once per driver


async def _warm(pool: AsyncPool, count: int) -> None:
    """Borrow ``count`` connections at once so that ``count`` are open and idle."""
    await pool.wait(10)
    held = [await pool.getconn(timeout=5) for _ in range(count)]
    for conn in held:
        await fetchval(conn, "SELECT 1")
    for conn in held:
        await pool.putconn(conn)


async def _borrow_many(pool: AsyncPool, count: int) -> tuple[int, list[str]]:
    """Borrow and query ``count`` times; return (successes, errors seen by callers)."""
    ok, errors = 0, []
    for _ in range(count):
        try:
            async with pool.connection(timeout=5) as conn:
                await fetchval(conn, "SELECT 1")
            ok += 1
        except Exception as exc:
            errors.append(f"{type(exc).__name__}: {exc}")
    return ok, errors


def _no_answer_error(driver: str) -> type[Exception]:
    """What the no-answer guard raises on ``driver`` (imported only when it runs)."""
    if driver == "asyncpg":
        from poolkeeper.drivers.asyncpg_async import NoAnswerTimeout

        return NoAnswerTimeout
    return psycopg.OperationalError


@pytest.mark.one_model(
    "asyncio",
    twin=(
        "tests/faults/test_backend_loss.py::test_proxy_black_hole_fails_within_timeouts_then_heals"
    ),
)
async def test_async_proxy_black_hole_fails_within_timeouts_then_heals(
    shared_server: LocalServer,
    proxy_to: Callable[[int], FaultProxy],
    driver: str,
    report: Report,
) -> None:
    """A peer that accepts but never answers ends queries, checks and borrows within
    the configured timeouts, and the pool serves again once the network heals."""
    proxy = proxy_to(shared_server.port)
    dsn = proxy.dsn
    statement_timeout = 1.0
    pool = AsyncPool(
        dsn, name=f"fault-async-blackhole-{driver}", min_size=2, max_size=4,
        connect_timeout=2.0, statement_timeout=statement_timeout, driver=driver,
    )  # fmt: skip
    no_answer = _no_answer_error(driver)
    try:
        await _warm(pool, 2)
        proxy.blackhole()

        # 1. A query on a connection that was just in use (no borrow-time check).
        conn = await pool.getconn(timeout=1)
        if driver == "psycopg":
            assert isinstance(conn, AsyncGuardedConnection)
        start = time.monotonic()
        with pytest.raises(no_answer, match="no answer from the server"):
            await fetchval(conn, "SELECT 1")
        query_failed_after = time.monotonic() - start
        await pool.putconn(conn)
        report["query_failed_after_s"] = query_failed_after
        assert silence_limit(statement_timeout) - 0.1 < query_failed_after
        assert query_failed_after < silence_limit(statement_timeout) + 1.5

        # 2. A borrow while black-holed: bounded by the caller's timeout.
        start = time.monotonic()
        with pytest.raises((PoolTimeout, ConnectionFailed)):
            async with pool.connection(timeout=3) as other:
                await other.execute("SELECT 1")
        borrow_failed_after = time.monotonic() - start
        report["borrow_failed_after_s"] = borrow_failed_after
        assert borrow_failed_after < 3 + 0.5 + statement_timeout * 2

        # 3. Heal: the pool serves again on its own.
        proxy.heal()
        healed_at = time.monotonic()
        while True:
            try:
                async with pool.connection(timeout=1) as again:
                    await again.execute("SELECT 1")
                break
            except Exception:
                assert time.monotonic() - healed_at < 10, "the pool did not serve after heal"
                await asyncio.sleep(0.02)
        report["seconds_to_serve_after_heal"] = time.monotonic() - healed_at
        _, errors = await _borrow_many(pool, 20)
        report["errors_after_heal"] = len(errors)
        assert errors == []
    finally:
        await pool.close(timeout=1.0)


@pytest.mark.one_model("asyncio", "asyncpg's own no-answer guard (an asyncio-only driver)")
async def test_asyncpg_no_answer_guard_yields_to_the_caller_and_to_session_changes(
    shared_server: LocalServer,
    proxy_to: Callable[[int], FaultProxy],
    report: Report,
) -> None:
    """asyncpg's no-answer guard is the pool's default timeout, not a ceiling: a
    caller's own ``timeout`` wins, and a session that ran SET (which may have raised
    its statement_timeout) gets no client-side limit, as with psycopg's guard."""
    pytest.importorskip("asyncpg")
    no_answer = _no_answer_error("asyncpg")
    proxy = proxy_to(shared_server.port)
    dsn = proxy.dsn
    statement_timeout = 0.5
    limit = silence_limit(statement_timeout)
    pool = AsyncPool(
        dsn, name="fault-asyncpg-guard", min_size=2, max_size=2, connect_timeout=2.0,
        statement_timeout=statement_timeout, driver="asyncpg",
    )  # fmt: skip
    try:
        await _warm(pool, 2)
        own_timeout, changed = await pool.getconn(), await pool.getconn()
        await changed.execute("SET application_name = 'guard-test'")
        proxy.blackhole()

        start = time.monotonic()
        with pytest.raises(asyncio.TimeoutError) as raised:
            await own_timeout.fetchval("SELECT 1", timeout=0.3)
        own_timeout_after = time.monotonic() - start
        report["own_timeout_after_s"] = own_timeout_after
        assert not isinstance(raised.value, no_answer)
        assert own_timeout_after < limit

        start = time.monotonic()
        with pytest.raises(asyncio.TimeoutError) as raised:
            await asyncio.wait_for(changed.fetchval("SELECT 1"), limit + 1.0)
        changed_waited = time.monotonic() - start
        report["changed_session_waited_s"] = changed_waited
        assert not isinstance(raised.value, no_answer)
        assert changed_waited >= limit + 0.9
        for conn in (own_timeout, changed):
            await pool.putconn(conn)
    finally:
        await pool.close(timeout=1.0)


@pytest.mark.one_model(
    "asyncio",
    twin="tests/faults/test_backend_loss.py::test_return_does_not_hang_on_a_silent_server",
)
async def test_async_return_in_a_transaction_does_not_hang_on_a_silent_server(
    shared_server: LocalServer,
    proxy_to: Callable[[int], FaultProxy],
    driver: str,
    report: Report,
) -> None:
    """Without statement_timeout, the pool's own ROLLBACK on return waits at most
    connect_timeout, as its ping does; the connection is discarded."""
    proxy = proxy_to(shared_server.port)
    dsn = proxy.dsn
    connect_timeout = 1.0
    pool = AsyncPool(
        dsn, name=f"fault-async-return-{driver}", min_size=1, max_size=1,
        connect_timeout=connect_timeout, driver=driver,
    )  # fmt: skip
    try:
        await _warm(pool, 1)
        conn = await pool.getconn()
        # psycopg opens a transaction on its own; asyncpg needs telling.
        await (conn.execute("BEGIN") if driver == "asyncpg" else fetchval(conn, "SELECT 1"))
        proxy.blackhole()

        start = time.monotonic()
        await asyncio.wait_for(pool.putconn(conn), connect_timeout + 5)
        returned_after = time.monotonic() - start
        report["returned_after_s"] = returned_after
        assert connect_timeout - 0.1 < returned_after < connect_timeout + 0.5
        assert pool.stats().idle == 0  # discarded, not lent again
    finally:
        await pool.close(timeout=1.0)


@pytest.mark.one_model(
    "asyncio",
    twin=(
        "tests/faults/test_backend_loss.py::test_check_on_a_silent_server_takes_one_connect_timeout"
    ),
)
async def test_async_check_on_a_silent_server_takes_one_connect_timeout(
    shared_server: LocalServer,
    proxy_to: Callable[[int], FaultProxy],
    driver: str,
    report: Report,
) -> None:
    """AsyncPool.check() gathers its pings: four that never answer cost one
    connect_timeout, and all four are replaced."""
    proxy = proxy_to(shared_server.port)
    dsn = proxy.dsn
    connect_timeout = 1.0
    pool = AsyncPool(
        dsn, name=f"fault-async-check-{driver}", min_size=4, max_size=4,
        connect_timeout=connect_timeout, driver=driver,
    )  # fmt: skip
    try:
        await _warm(pool, 4)
        proxy.blackhole()

        start = time.monotonic()
        await pool.check()
        took = time.monotonic() - start
        report["check_took_s"] = took
        assert connect_timeout - 0.1 < took < 2 * connect_timeout
        assert pool.stats().checks_failed == 4
    finally:
        await pool.close(timeout=1.0)

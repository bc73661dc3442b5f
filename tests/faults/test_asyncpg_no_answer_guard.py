"""asyncpg's own no-answer guard on a silent network: the pool's default, not a
ceiling. What every driver shares (a killed backend, a reset connection, a black
hole, a silent server) is written once, for every pool kind, in test_backend_loss."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest

from poolkeeper import AsyncPool
from poolkeeper.embedded import LocalServer
from poolkeeper.policy import silence_limit
from tests.faults.conftest import Report
from tests.faults.proxy import FaultProxy

pytestmark = pytest.mark.fault


async def _warm(pool: AsyncPool, count: int) -> None:
    """Borrow ``count`` connections at once so that ``count`` are open and idle."""
    await pool.wait(10)
    held = [await pool.getconn(timeout=5) for _ in range(count)]
    for conn in held:
        await conn.fetchval("SELECT 1")
    for conn in held:
        await pool.putconn(conn)


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
    from poolkeeper.drivers.asyncpg_async import NoAnswerTimeout

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
        assert not isinstance(raised.value, NoAnswerTimeout)
        assert own_timeout_after < limit

        start = time.monotonic()
        with pytest.raises(asyncio.TimeoutError) as raised:
            await asyncio.wait_for(changed.fetchval("SELECT 1"), limit + 1.0)
        changed_waited = time.monotonic() - start
        report["changed_session_waited_s"] = changed_waited
        assert not isinstance(raised.value, NoAnswerTimeout)
        assert changed_waited >= limit + 0.9
        for conn in (own_timeout, changed):
            await pool.putconn(conn)
    finally:
        await pool.close(timeout=1.0)

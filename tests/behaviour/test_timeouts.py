"""Per-call timeouts and the bounds of the duration settings, on every pool kind."""

from __future__ import annotations

import asyncio
import math
from typing import Any

import pytest

from poolkeeper import ConfigurationError, PoolTimeout
from poolkeeper.config import DURATION_BOUNDS, MAX_SECONDS
from poolkeeper.policy import silence_limit
from tests.behaviour.conftest import MakePool
from tests.behaviour.kinds import autocommit, begin, execute, fetchval

BAD_TIMEOUTS = [math.nan, math.inf, 1e10, 10**400, -1, -0.0, "0.5", True]


async def test_the_bounds_themselves_connect_and_reach_the_server(make_pool: MakePool) -> None:
    pool = make_pool(
        min_size=1,
        max_size=1,
        statement_timeout=MAX_SECONDS,
        idle_in_transaction_timeout=0.001,
        tcp_user_timeout=MAX_SECONDS,
        keepalive_interval=DURATION_BOUNDS["keepalive_interval"].high,
        timeout=MAX_SECONDS,
        max_lifetime=MAX_SECONDS,
    )
    async with pool.connection() as conn:
        # Outside a transaction: idle in one for 1 ms would end the session.
        await autocommit(conn, True)
        settings = {
            name: await fetchval(conn, f"SELECT setting FROM pg_settings WHERE name = '{name}'")
            for name in ("statement_timeout", "idle_in_transaction_session_timeout")
        }
    assert settings == {
        "statement_timeout": str(2**31 - 1),
        "idle_in_transaction_session_timeout": "1",
    }


@pytest.mark.per_model("argument checks before any driver call")
@pytest.mark.parametrize("value", BAD_TIMEOUTS, ids=lambda v: repr(v)[:20])
async def test_a_per_call_timeout_is_validated_like_a_setting(
    make_pool: MakePool, value: Any
) -> None:
    pool = make_pool(min_size=1, max_size=1)
    await pool.wait(5)
    held = await pool.getconn()
    try:
        for call in (pool.getconn, pool.wait):
            with pytest.raises(ConfigurationError, match=r"^timeout: "):
                await asyncio.wait_for(call(value), 5)
        with pytest.raises(ConfigurationError, match=r"^timeout: "):
            async with pool.connection(value):
                pass
    finally:
        await pool.putconn(held)
    # With an idle connection at hand too: a bad timeout is an error, not ignored.
    with pytest.raises(ConfigurationError, match=r"^timeout: "):
        await pool.getconn(value)
    with pytest.raises(ConfigurationError, match=r"^timeout: "):
        await pool.close(value)


@pytest.mark.per_model("the waiter queue's bookkeeping; no driver call differs")
async def test_timeout_zero_still_means_do_not_wait(make_pool: MakePool) -> None:
    pool = make_pool(min_size=1, max_size=1)
    async with pool.connection():
        with pytest.raises(PoolTimeout):
            await pool.getconn(0)


async def test_a_transaction_that_raises_its_statement_timeout_may_run_past_the_guard(
    make_pool: MakePool,
) -> None:
    # The no-answer guard (psycopg 3, asyncpg) fails a statement silent past
    # silence_limit(statement_timeout): 1.2 s here. A transaction that raised its own
    # statement_timeout with SET LOCAL may rightly run longer, and must not be cut off
    # as if the server were gone.
    statement_timeout = 0.2
    pool = make_pool(min_size=1, max_size=1, statement_timeout=statement_timeout)
    sleep = silence_limit(statement_timeout) + 0.3
    async with pool.connection() as conn:
        await begin(conn)
        await execute(conn, "SET LOCAL statement_timeout = '30s'")
        assert await fetchval(conn, f"SELECT 1 FROM pg_sleep({sleep})") == 1
    assert pool.stats().connections_closed == 0

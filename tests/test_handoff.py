"""AsyncPool's hand-off to a waiter that was cancelled in the same step of the loop.

``task.cancel()`` cancels the future the task awaits at once, but the task learns of
it only when it next runs: until then its waiter is still queued, already done. A
connection returned in between must go to the next waiter (or back to the stack),
never into the cancelled one, where nobody would ever take it.
"""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg
import pytest

from tests import async_helpers
from tests.async_helpers import AsyncPoolFactory, backend_pid, fetchval, wait_until
from tests.conftest import backends

driver = async_helpers.driver
make_async_pool = async_helpers.make_async_pool


@pytest.mark.one_model("asyncio", "task.cancel() of a queued waiter: asyncio cancellation")
async def test_a_connection_returned_right_after_a_waiter_is_cancelled_is_not_lost(
    make_async_pool: AsyncPoolFactory, admin: psycopg.Connection[Any]
) -> None:
    pool = make_async_pool(min_size=1, max_size=1)
    conn = await pool.getconn()
    pid = backend_pid(conn)
    cancelled = asyncio.create_task(pool.getconn())
    await wait_until(lambda: pool.stats().waiting == 1)
    cancelled.cancel()  # its waiter is done now, still in the queue until it runs
    await pool.putconn(conn)
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    # The one connection is still the pool's to lend: the same session, at once.
    again = await pool.getconn(timeout=2)
    assert await fetchval(again, "SELECT pg_backend_pid()") == pid
    await pool.putconn(again)
    assert backends(admin, pool.name) == [pid]

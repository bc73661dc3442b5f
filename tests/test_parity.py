"""Behaviours a psycopg_pool user relies on, in both pools, proven on the server.

Each scenario is written once as a coroutine and runs against ``Pool`` and
``AsyncPool``: ``_call`` awaits what the async pool returns.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from typing import Any

import psycopg
import pytest

from poolkeeper import AsyncPool, Pool
from tests.conftest import backends

KINDS = ["Pool", "AsyncPool"]


async def _call(value: Any) -> Any:
    return await value if inspect.isawaitable(value) else value


def _make(kind: str, dsn: str, name: str, **settings: Any) -> Pool | AsyncPool:
    settings.setdefault("timeout", 5.0)
    return (Pool if kind == "Pool" else AsyncPool)(dsn, name=name, **settings)


def _terminate(admin: psycopg.Connection[Any], pid: int) -> None:
    admin.execute("SELECT pg_terminate_backend(%s)", [pid])
    deadline = time.monotonic() + 5
    while admin.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s", [pid]).fetchone():
        assert time.monotonic() < deadline, "the terminated backend did not exit"
        time.sleep(0.01)


# -- check= with a callable runs before every lend ----------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_a_check_callable_runs_before_every_lend(
    dsn: str, admin: psycopg.Connection[Any], kind: str
) -> None:
    """A connection returned a moment ago whose backend was then killed is caught by
    ``check=`` before it is lent again, whatever ``check_after`` says (it applies to
    ``check="auto"`` only): the borrower gets a working connection to a new backend."""
    name = f"pk-parity-check-{kind.lower()}"
    calls: list[int] = []

    async def scenario() -> None:
        def check(conn: Any) -> Any:
            calls.append(1)
            if kind == "Pool":
                conn.execute("SELECT 1")
                return None
            return conn.execute("SELECT 1")

        pool = _make(kind, dsn, name, min_size=1, max_size=1, check=check, check_after=600)
        try:
            await _call(pool.wait())
            conn = await _call(pool.getconn())
            await _call(pool.putconn(conn))
            (old,) = backends(admin, name)
            _terminate(admin, old)
            conn = await _call(pool.getconn())
            try:
                cur = await _call(conn.execute("SELECT pg_backend_pid()"))
                row = await _call(cur.fetchone())
                assert row[0] != old
                assert row[0] in backends(admin, name)
            finally:
                await _call(pool.putconn(conn))
            assert len(calls) >= 3  # each of the three lends was checked
        finally:
            await _call(pool.close())

    asyncio.run(scenario())

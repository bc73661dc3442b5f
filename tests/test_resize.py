"""``resize()`` down while connections are borrowed: the ones beyond the new
``max_size`` retire when they come back, checked on the server."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import psycopg
import pytest

from poolkeeper import AsyncPool, PoolTimeout
from tests.conftest import PoolFactory, backends


def _count_settles(admin: psycopg.Connection[Any], name: str, want: int) -> int:
    """The pool's sessions on the server, once there are ``want`` (or after 5 s)."""
    deadline = time.monotonic() + 5
    while (n := len(backends(admin, name))) != want and time.monotonic() < deadline:
        time.sleep(0.02)
    return n


def test_resize_down_retires_borrowed_connections_beyond_max(
    make_pool: PoolFactory, admin: psycopg.Connection[Any]
) -> None:
    name = "pk-resize-down"
    pool = make_pool(name=name, min_size=0, max_size=8)
    held = [pool.getconn() for _ in range(8)]
    assert len(backends(admin, name)) == 8
    pool.resize(1, 2)
    for conn in held:
        pool.putconn(conn)
    assert _count_settles(admin, name, 2) == 2
    stats = pool.stats()
    assert (stats.size, stats.idle, stats.in_use) == (2, 2, 0)
    # Two can be lent at once, not eight.
    two = [pool.getconn(timeout=1) for _ in range(2)]
    with pytest.raises(PoolTimeout):
        pool.getconn(timeout=0.2)
    for conn in two:
        pool.putconn(conn)
    assert len(backends(admin, name)) == 2


def test_async_resize_down_retires_borrowed_connections_beyond_max(
    dsn: str, admin: psycopg.Connection[Any]
) -> None:
    name = "pk-aresize-down"

    async def run() -> tuple[int, tuple[int, int, int]]:
        async with AsyncPool(dsn, name=name, min_size=0, max_size=8, timeout=10) as pool:
            held = [await pool.getconn() for _ in range(8)]
            assert len(await asyncio.to_thread(backends, admin, name)) == 8
            await pool.resize(1, 2)
            for conn in held:
                await pool.putconn(conn)
            on_server = await asyncio.to_thread(_count_settles, admin, name, 2)
            stats = pool.stats()
            two = [await pool.getconn(timeout=1) for _ in range(2)]
            with pytest.raises(PoolTimeout):
                await pool.getconn(timeout=0.2)
            for conn in two:
                await pool.putconn(conn)
            return on_server, (stats.size, stats.idle, stats.in_use)

    on_server, sizes = asyncio.run(run())
    assert on_server == 2
    assert sizes == (2, 2, 0)

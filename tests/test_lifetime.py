"""Retirement, seen on the server, in the ordinary suite (both CI passes run it).

A connection older than ``max_lifetime``, or opened before ``drain()``, is replaced:
idle, at once (by housekeeping, or by drain() itself); borrowed, never under its
borrower but as soon as it comes back. The proof is the backend pids pg_stat_activity
lists for the pool's application_name, not the pool's counters.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import psycopg
import pytest

from tests import async_helpers
from tests.async_helpers import AsyncPoolFactory, backend_pid, fetchval
from tests.conftest import PoolFactory, backends

driver = async_helpers.driver
make_async_pool = async_helpers.make_async_pool

Admin = psycopg.Connection[Any]
LIFETIME = 0.5


def server_pids(admin: Admin, name: str) -> set[int]:
    return set(backends(admin, name))


def wait_for_server(admin: Admin, name: str, want: Any, what: str) -> set[int]:
    """Poll pg_stat_activity until ``want(pids)``; fail after 5 s (ten lifetimes)."""
    deadline = time.monotonic() + 5.0
    while True:
        pids = server_pids(admin, name)
        if want(pids):
            return pids
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: pg_stat_activity still lists {sorted(pids)}")
        time.sleep(0.01)


def sync_pid(conn: Any) -> int:
    """The backend pid, asked of the server (psycopg 3 and psycopg2 alike)."""
    with conn.cursor() as cur:
        cur.execute("SELECT pg_backend_pid()")
        return int(cur.fetchone()[0])


@pytest.mark.parametrize("sync_driver", ["psycopg", "psycopg2"])
def test_connections_past_max_lifetime_are_replaced_but_never_under_a_borrower(
    make_pool: PoolFactory, admin: Admin, sync_driver: str
) -> None:
    pool = make_pool(min_size=2, max_size=2, max_lifetime=LIFETIME, driver=sync_driver)
    pool.wait(5)
    name = pool.name
    original = server_pids(admin, name)
    assert len(original) == 2
    held = pool.getconn()
    held_pid = sync_pid(held)
    # Both connections were open by now, so both are past their lifetime at this time.
    all_expired_at = time.monotonic() + LIFETIME

    # The idle one is retired and a new backend takes its place.
    wait_for_server(
        admin,
        name,
        lambda pids: held_pid in pids and len(pids) == 2 and not (pids - {held_pid}) & original,
        "the idle connection to be replaced",
    )
    # Past its lifetime but borrowed: still the same session, still answering.
    time.sleep(max(0.0, all_expired_at - time.monotonic()) + 0.05)
    assert held_pid in server_pids(admin, name)
    assert sync_pid(held) == held_pid

    # Returned, it is retired at once: the next borrower gets another backend...
    pool.putconn(held)
    nxt = pool.getconn()
    assert sync_pid(nxt) != held_pid
    pool.putconn(nxt)
    # ...and the server sees that session end; none of the original ones is left.
    wait_for_server(
        admin, name, lambda pids: not pids & original, "the expired connections to close"
    )


async def test_async_connections_past_max_lifetime_are_replaced_but_never_under_a_borrower(
    make_async_pool: AsyncPoolFactory, admin: Admin
) -> None:
    pool = make_async_pool(min_size=2, max_size=2, max_lifetime=LIFETIME)
    await pool.wait(5)
    name = pool.name
    original = server_pids(admin, name)
    assert len(original) == 2
    held = await pool.getconn()
    held_pid = backend_pid(held)
    assert await fetchval(held, "SELECT pg_backend_pid()") == held_pid
    all_expired_at = time.monotonic() + LIFETIME

    def poll(want: Any, what: str) -> Any:
        # Off the loop: the pool's housekeeping task must keep running meanwhile.
        return asyncio.to_thread(wait_for_server, admin, name, want, what)

    await poll(
        lambda pids: held_pid in pids and len(pids) == 2 and not (pids - {held_pid}) & original,
        "the idle connection to be replaced",
    )
    await asyncio.sleep(max(0.0, all_expired_at - time.monotonic()) + 0.05)
    assert held_pid in server_pids(admin, name)
    assert await fetchval(held, "SELECT pg_backend_pid()") == held_pid

    await pool.putconn(held)
    nxt = await pool.getconn()
    assert await fetchval(nxt, "SELECT pg_backend_pid()") != held_pid
    await pool.putconn(nxt)
    await poll(lambda pids: not pids & original, "the expired connections to close")


@pytest.mark.parametrize("sync_driver", ["psycopg", "psycopg2"])
def test_a_connection_borrowed_across_drain_retires_when_it_comes_back(
    make_pool: PoolFactory, admin: Admin, sync_driver: str
) -> None:
    pool = make_pool(min_size=2, max_size=2, driver=sync_driver)
    pool.wait(5)
    held = pool.getconn()
    held_pid = sync_pid(held)
    original = server_pids(admin, pool.name)
    pool.drain()
    assert sync_pid(held) == held_pid  # not under its borrower
    pool.putconn(held)
    # Every borrow from now on is served by a backend opened after drain().
    conns = [pool.getconn() for _ in range(2)]
    assert not {sync_pid(conn) for conn in conns} & original
    for conn in conns:
        pool.putconn(conn)
    wait_for_server(admin, pool.name, lambda pids: not pids & original, "drained ones to close")


async def test_async_a_connection_borrowed_across_drain_retires_when_it_comes_back(
    make_async_pool: AsyncPoolFactory, admin: Admin
) -> None:
    pool = make_async_pool(min_size=2, max_size=2)
    await pool.wait(5)
    held = await pool.getconn()
    held_pid = backend_pid(held)
    original = server_pids(admin, pool.name)
    await pool.drain()
    assert await fetchval(held, "SELECT pg_backend_pid()") == held_pid
    await pool.putconn(held)
    conns = [await pool.getconn() for _ in range(2)]
    assert not {await fetchval(conn, "SELECT pg_backend_pid()") for conn in conns} & original
    for conn in conns:
        await pool.putconn(conn)
    await asyncio.to_thread(
        wait_for_server, admin, pool.name, lambda pids: not pids & original, "drained ones to close"
    )

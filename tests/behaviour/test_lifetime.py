"""Retirement, seen on the server, on every pool kind (both CI passes run it).

A connection older than ``max_lifetime``, or opened before ``drain()``, is replaced:
idle, at once (by housekeeping, or by drain() itself); borrowed, never under its
borrower but as soon as it comes back. The proof is the backend pids pg_stat_activity
lists for the pool's application_name, not the pool's counters.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import psycopg
import pytest

from tests.behaviour.conftest import MakePool
from tests.behaviour.kinds import fetchval
from tests.conftest import backends

Admin = psycopg.Connection[Any]
LIFETIME = 0.5


async def wait_for_server(
    admin: Admin, name: str, want: Callable[[set[int]], bool], what: str
) -> set[int]:
    """Poll pg_stat_activity until ``want(pids)``; fail after 5 s (ten lifetimes).
    Sleeps yield, so an AsyncPool's housekeeping task runs meanwhile."""
    deadline = time.monotonic() + 5.0
    while True:
        pids = set(backends(admin, name))
        if want(pids):
            return pids
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: pg_stat_activity still lists {sorted(pids)}")
        await asyncio.sleep(0.01)


async def pid_of(conn: Any) -> int:
    """The backend pid, asked of the server."""
    return int(await fetchval(conn, "SELECT pg_backend_pid()"))


async def test_connections_past_max_lifetime_are_replaced_but_never_under_a_borrower(
    make_pool: MakePool, admin: Admin
) -> None:
    pool = make_pool(min_size=2, max_size=2, max_lifetime=LIFETIME)
    await pool.wait(5)
    name = pool.name
    original = set(backends(admin, name))
    assert len(original) == 2
    held = await pool.getconn()
    held_pid = await pid_of(held)
    # Both connections were open by now, so both are past their lifetime at this time.
    all_expired_at = time.monotonic() + LIFETIME

    # The idle one is retired and a new backend takes its place.
    await wait_for_server(
        admin,
        name,
        lambda pids: held_pid in pids and len(pids) == 2 and not (pids - {held_pid}) & original,
        "the idle connection to be replaced",
    )
    # Past its lifetime but borrowed: still the same session, still answering.
    await asyncio.sleep(max(0.0, all_expired_at - time.monotonic()) + 0.05)
    assert held_pid in backends(admin, name)
    assert await pid_of(held) == held_pid

    # Returned, it is retired at once: the next borrower gets another backend...
    await pool.putconn(held)
    nxt = await pool.getconn()
    assert await pid_of(nxt) != held_pid
    await pool.putconn(nxt)
    # ...and the server sees that session end; none of the original ones is left.
    await wait_for_server(
        admin, name, lambda pids: not pids & original, "the expired connections to close"
    )


async def test_a_connection_borrowed_across_drain_retires_when_it_comes_back(
    make_pool: MakePool, admin: Admin
) -> None:
    pool = make_pool(min_size=2, max_size=2)
    await pool.wait(5)
    held = await pool.getconn()
    held_pid = await pid_of(held)
    original = set(backends(admin, pool.name))
    await pool.drain()
    assert await pid_of(held) == held_pid  # not under its borrower
    await pool.putconn(held)
    # Every borrow from now on is served by a backend opened after drain().
    conns = [await pool.getconn() for _ in range(2)]
    assert not {await pid_of(conn) for conn in conns} & original
    for conn in conns:
        await pool.putconn(conn)
    await wait_for_server(
        admin, pool.name, lambda pids: not pids & original, "drained ones to close"
    )


async def test_a_borrow_due_a_check_never_lends_a_connection_past_its_lifetime(
    make_pool: MakePool, admin: Admin
) -> None:
    # Housekeeping retires an idle connection within one tick of its expiry; this is the
    # borrow that comes inside that tick, with a check due: it must look at the lifetime.
    # The record's expiry (jittered, so not known from outside) is read only to time the
    # borrow; the proof is on the server.
    pool = make_pool(min_size=1, max_size=1, max_lifetime=1.0, check_after=0.05)
    await pool.wait(5)
    inner: Any = getattr(pool, "pool", pool)  # the Pool behind a BlockingPool
    idle = inner._idle
    original = set(backends(admin, pool.name))
    assert len(original) == 1 and len(idle) == 1
    rec = idle[0]
    # A blocking sleep: an AsyncPool's housekeeping task cannot run before the borrow (on
    # a Pool its thread can, at most once a quarter second: then this proves less).
    time.sleep(max(0.0, max(rec.expires_at, rec.check_due) - time.monotonic()) + 0.002)
    conn = await pool.getconn()
    try:
        assert await pid_of(conn) not in original
    finally:
        await pool.putconn(conn)
    await wait_for_server(
        admin, pool.name, lambda pids: not pids & original, "the expired connection to close"
    )

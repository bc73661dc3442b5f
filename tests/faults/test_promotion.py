"""Failover with promotion: the primary stops, its standby is promoted, and a pool on
a multi-host DSN (``target_session_attrs=read-write``) writes to the new primary
within its timeout, with no restart and every connection on the new primary."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import pytest

from poolkeeper import AsyncDatabase, Database
from poolkeeper.embedded import LocalServer
from tests.faults.conftest import Report, backend_pids
from tests.faults.replication import KINDS, connect, start_primary, start_standby

pytestmark = pytest.mark.fault

SIZE = 2
TIMEOUT = 10.0
WRITE = "INSERT INTO events VALUES (1)"
WHO = "SELECT pg_backend_pid(), inet_server_port(), pg_is_in_recovery()"


@pytest.fixture
def pair() -> Iterator[tuple[LocalServer, LocalServer]]:
    """A fresh primary and streaming standby: this test promotes the standby."""
    primary = start_primary()
    try:
        with connect(primary) as conn:
            conn.execute("CREATE TABLE events (x int)")
        standby = start_standby(primary)
        try:
            yield primary, standby
        finally:
            standby.stop("immediate", remove=True)
    finally:
        primary.stop("immediate", remove=True)


def _multi_host_dsn(primary: LocalServer, standby: LocalServer) -> str:
    return (
        f"postgresql://postgres@127.0.0.1:{primary.port},127.0.0.1:{standby.port}/postgres"
        "?target_session_attrs=read-write&connect_timeout=2"
    )


def _promote(primary: LocalServer, standby: LocalServer) -> None:
    primary.stop("fast")
    standby._pg_ctl(["-w", "-t", "20", "promote"])


def _sync_row(conn: Any, driver: str, sql: str) -> tuple[Any, ...]:
    if driver == "psycopg2":
        with conn.cursor() as cur:
            cur.execute(sql)
            return tuple(cur.fetchone())
    return tuple(conn.execute(sql).fetchone())


async def _async_row(conn: Any, driver: str, sql: str) -> tuple[Any, ...]:
    if driver == "asyncpg":
        return tuple(await conn.fetchrow(sql))
    cursor = await conn.execute(sql)
    return tuple(await cursor.fetchone())


def _check_on_servers(name: str, standby: LocalServer, seen: set[int]) -> None:
    """Every connection the pool lent after the failover is a backend of the new
    primary, and the pool holds no other connection there."""
    on_new_primary = backend_pids(standby, name)
    assert seen <= on_new_primary, (seen, on_new_primary)
    assert len(on_new_primary) <= SIZE


@pytest.mark.parametrize(("facade", "driver"), KINDS)
def test_writes_resume_on_the_promoted_standby(
    pair: tuple[LocalServer, LocalServer], facade: str, driver: str, report: Report
) -> None:
    primary, standby = pair
    name = f"promote-{facade}-{driver}"
    dsn = _multi_host_dsn(primary, standby)
    settings: dict[str, Any] = {"driver": driver, "min_size": SIZE, "max_size": SIZE}
    if facade == "sync":
        db = Database(name, dsn=dsn, **settings)
        try:
            took = _sync_scenario(db, driver, primary, standby)
        finally:
            db.close_all_connections(timeout=1.0)
    else:

        async def scenario() -> float:
            adb = AsyncDatabase(name, dsn=dsn, **settings)
            try:
                return await _async_scenario(adb, driver, primary, standby)
            finally:
                await AsyncDatabase.reset_all(timeout=1.0)

        took = asyncio.run(scenario())
    report["first_write_after_promotion_s"] = took
    assert took < TIMEOUT


def _sync_scenario(db: Database, driver: str, primary: LocalServer, standby: LocalServer) -> float:
    with db.transaction() as conn:
        assert _sync_row(conn, driver, WHO)[1] == primary.port
        _sync_row(conn, driver, WRITE + " RETURNING x")
    db.pool.wait(timeout=5)
    _promote(primary, standby)
    started = time.monotonic()
    # The pool's contract: a connection idle past check_after is checked first.
    time.sleep(db.config.check_after + 0.05)
    with db.transaction(timeout=TIMEOUT) as conn:
        _sync_row(conn, driver, WRITE + " RETURNING x")
    took = time.monotonic() - started
    seen: set[int] = set()
    with db.connection(timeout=TIMEOUT) as one, db.connection(timeout=TIMEOUT) as two:
        for conn in (one, two):
            pid, port, in_recovery = _sync_row(conn, driver, WHO)
            assert (port, in_recovery) == (standby.port, False)
            seen.add(pid)
    _check_on_servers(db.name, standby, seen)
    return took


async def _async_scenario(
    db: AsyncDatabase, driver: str, primary: LocalServer, standby: LocalServer
) -> float:
    async with db.transaction() as conn:
        assert (await _async_row(conn, driver, WHO))[1] == primary.port
        await _async_row(conn, driver, WRITE + " RETURNING x")
    await db.pool.wait(timeout=5)
    _promote(primary, standby)
    started = time.monotonic()
    await asyncio.sleep(db.config.check_after + 0.05)
    async with db.transaction(timeout=TIMEOUT) as conn:
        await _async_row(conn, driver, WRITE + " RETURNING x")
    took = time.monotonic() - started
    seen: set[int] = set()
    async with db.connection(timeout=TIMEOUT) as one, db.connection(timeout=TIMEOUT) as two:
        for conn in (one, two):
            pid, port, in_recovery = await _async_row(conn, driver, WHO)
            assert (port, in_recovery) == (standby.port, False)
            seen.add(pid)
    _check_on_servers(db.name, standby, seen)
    return took

"""The primary is demoted to a hot standby under the pool (25006 on a pool for the primary)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import psycopg
import pytest

from poolkeeper import AsyncDatabase, Database, Pool
from tests.faults.conftest import Report, ServerFactory, backend_pids, wait_until

pytestmark = pytest.mark.fault


def test_demoted_primary_makes_the_pool_replace_every_connection(
    own_server: ServerFactory, pools: Callable[..., Pool], report: Report
) -> None:
    """After a restart as a standby, the first write fails with SQLSTATE 25006 and the
    pool replaces every connection (a ping would pass on a standby, so it cannot just
    verify); once promoted again, writes succeed on fresh connections."""
    server = own_server()
    name = "fault-demoted"
    pool = pools(server.dsn, name=name, min_size=3, max_size=3)
    pool.wait(timeout=10)
    server.stop("fast")
    (server.data_dir / "standby.signal").touch()
    server.start()

    # The restart is noticed as usual; connections now reach a read-only standby.
    time.sleep(pool.config.check_after + 0.05)
    with pool.connection(timeout=5) as conn:
        conn.execute("SELECT 1")
    # Every connection open and idle, none still opening: the pids read next are all
    # of them (the pool also replaces one whose connect straddles the drain below).
    wait_until(lambda: pool.stats().idle == 3, 5, "refill on the standby")
    standby_pids = backend_pids(server, name)
    with pytest.raises(psycopg.errors.ReadOnlySqlTransaction), pool.connection() as conn:
        conn.execute("CREATE TABLE t (x int)")
    replaced_after = wait_until(
        lambda: not backend_pids(server, name) & standby_pids, 5, "every connection replaced"
    )
    report["all_connections_replaced_after_25006_s"] = replaced_after

    server.psql("SELECT pg_promote()")
    with pool.connection(timeout=5) as conn:
        conn.execute("CREATE TABLE t (x int)")
        conn.commit()


def _readonly_pid(db: Database) -> int:
    with db.connection(readonly=True) as conn:
        row = conn.execute("SELECT pg_backend_pid()").fetchone()
    assert row is not None
    return int(row[0])


async def _async_readonly_pid(db: AsyncDatabase) -> int:
    async with db.connection(readonly=True) as conn:
        cursor = await conn.execute("SELECT pg_backend_pid()")
        row = await cursor.fetchone()
    assert row is not None
    return int(row[0])


def _write_on_replica(db: Database) -> None:
    with pytest.raises(psycopg.errors.ReadOnlySqlTransaction), db.connection(readonly=True) as conn:
        conn.execute("CREATE TABLE t (x int)")


async def _async_write_on_replica(db: AsyncDatabase) -> None:
    with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
        async with db.connection(readonly=True) as conn:
            await conn.execute("CREATE TABLE t (x int)")


@pytest.mark.parametrize("facade", ["Database", "AsyncDatabase"])
def test_a_read_only_error_on_a_replica_keeps_its_connections(
    own_server: ServerFactory, dsn: str, facade: str
) -> None:
    """A replica is a hot standby: 25006 there is the expected answer to a write, not a
    demoted primary, so the replica pool keeps its connection (same backend after)."""
    standby = own_server()
    standby.stop("fast")
    (standby.data_dir / "standby.signal").touch()
    standby.start()
    name = f"fault-replica-{facade.lower()}"
    if facade == "Database":
        db = Database(name, dsn=dsn, replicas=[standby.dsn], max_size=1)
        before = _readonly_pid(db)
        _write_on_replica(db)
        after = _readonly_pid(db)
    else:

        async def scenario() -> tuple[int, int]:
            adb = AsyncDatabase(name, dsn=dsn, replicas=[standby.dsn], max_size=1)
            try:
                first = await _async_readonly_pid(adb)
                await _async_write_on_replica(adb)
                return first, await _async_readonly_pid(adb)
            finally:
                await AsyncDatabase.reset_all(timeout=1.0)

        before, after = asyncio.run(scenario())
    assert after == before

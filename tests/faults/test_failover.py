"""The primary is demoted to a hot standby under the pool (25006 on a pool for the primary)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import psycopg
import pytest

from poolkeeper import AsyncDatabase, Database
from tests.behaviour.kinds import ALL_KINDS, AnyPool, Kind, commit, execute, fetchval, sqlstate
from tests.faults.conftest import Report, ServerFactory, backend_pids

pytestmark = pytest.mark.fault


async def _until(predicate: Callable[[], bool], timeout: float, what: str) -> float:
    """Poll ``predicate`` until true, yielding to the loop (an AsyncPool's openers run
    meanwhile); return the seconds it took, or fail the test."""
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.02)
    return time.monotonic() - start


@pytest.mark.parametrize("kind", ALL_KINDS)
async def test_demoted_primary_makes_the_pool_replace_every_connection(
    own_server: ServerFactory, kind_pools: Callable[..., AnyPool], report: Report, kind: Kind
) -> None:
    """After a restart as a standby, the first write fails with SQLSTATE 25006 and the
    pool replaces every connection (a ping would pass on a standby, so it cannot just
    verify); once promoted again, writes succeed on fresh connections. On every driver:
    each reports the SQLSTATE its own way."""
    server = own_server()
    name = f"fault-demoted-{kind.id}"
    pool = kind_pools(server.dsn, name=name, min_size=3, max_size=3)
    await pool.wait(timeout=10)
    server.stop("fast")
    (server.data_dir / "standby.signal").touch()
    server.start()

    # The restart is noticed as usual; connections now reach a read-only standby.
    await asyncio.sleep(pool.config.check_after + 0.05)
    async with pool.connection(timeout=5) as conn:
        await fetchval(conn, "SELECT 1")
    # Every connection open and idle, none still opening: the pids read next are all
    # of them (the pool also replaces one whose connect straddles the drain below).
    await _until(lambda: pool.stats().idle == 3, 5, "refill on the standby")
    standby_pids = backend_pids(server, name)
    with pytest.raises(Exception, match="read-only transaction") as caught:
        async with pool.connection() as conn:
            await execute(conn, "CREATE TABLE t (x int)")
    assert sqlstate(caught.value) == "25006"
    replaced_after = await _until(
        lambda: not backend_pids(server, name) & standby_pids, 5, "every connection replaced"
    )
    report["all_connections_replaced_after_25006_s"] = replaced_after

    server.psql("SELECT pg_promote()")
    async with pool.connection(timeout=5) as conn:
        await execute(conn, "CREATE TABLE t (x int)")
        await commit(conn)


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

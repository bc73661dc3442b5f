"""Reads on a real streaming replica: routing, lag, a replica that stops.

One primary and one standby (``pg_basebackup -R``) are built once for the module;
every test leaves them streaming. The test that stops a replica makes its own.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest

from poolkeeper import AsyncDatabase, ConfigurationError, Database, NoReplicaAvailable
from poolkeeper.embedded import LocalServer
from tests.faults.replication import (
    KINDS,
    connect,
    scalar,
    start_primary,
    start_standby,
    wait_caught_up,
)

pytestmark = pytest.mark.fault

WHERE = "SELECT inet_server_port()"


class Cluster:
    """The module's primary and standby."""

    def __init__(self, primary: LocalServer, standby: LocalServer) -> None:
        self.primary = primary
        self.standby = standby


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    """A primary and a streaming standby, shared by the tests that keep them streaming."""
    primary = start_primary()
    try:
        standby = start_standby(primary)
        try:
            yield Cluster(primary, standby)
        finally:
            standby.stop("immediate", remove=True)
    finally:
        primary.stop("immediate", remove=True)


def _value(conn: Any, driver: str, sql: str) -> Any:
    if driver == "psycopg2":
        with conn.cursor() as cur:
            cur.execute(sql)
            return cur.fetchone()[0]
    return conn.execute(sql).fetchone()[0]


async def _avalue(conn: Any, driver: str, sql: str) -> Any:
    if driver == "asyncpg":
        return await conn.fetchval(sql)
    cursor = await conn.execute(sql)
    row = await cursor.fetchone()
    return row[0]


def _run(scenario: Callable[[], Awaitable[None]]) -> None:
    async def wrapped() -> None:
        try:
            await scenario()
        finally:
            await AsyncDatabase.reset_all(timeout=1.0)

    asyncio.run(wrapped())


def _eventually(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


async def _aeventually(predicate: Callable[[], Awaitable[bool]], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not await predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.05)


@pytest.mark.parametrize(("facade", "driver"), KINDS)
def test_reads_hit_the_replica_and_writes_the_primary(
    cluster: Cluster, facade: str, driver: str
) -> None:
    """``connection(readonly=True)`` and ``transaction(readonly=True)`` reach the
    standby (in recovery, its port); ``connection()`` the primary."""
    name = f"repl-route-{facade}-{driver}"
    dsn, replica = cluster.primary.dsn, cluster.standby.dsn
    recovery = "SELECT pg_is_in_recovery()"
    if facade == "sync":
        db = Database(name, dsn=dsn, replicas=[replica], driver=driver, max_replica_lag=5)
        try:
            with db.connection(readonly=True) as conn:
                assert _value(conn, driver, recovery) is True
                assert _value(conn, driver, WHERE) == cluster.standby.port
            with db.transaction(readonly=True) as conn:
                assert _value(conn, driver, recovery) is True
            with db.connection() as conn:
                assert _value(conn, driver, recovery) is False
            with db.transaction() as conn:
                assert _value(conn, driver, WHERE) == cluster.primary.port
            replicas: Any = db.health()["replicas"]
            assert replicas[0]["routing"] == "ok"
            assert replicas[0]["lag"] is not None
        finally:
            db.close_all_connections(timeout=1.0)
        return

    async def scenario() -> None:
        adb = AsyncDatabase(name, dsn=dsn, replicas=[replica], driver=driver, max_replica_lag=5)
        async with adb.connection(readonly=True) as conn:
            assert await _avalue(conn, driver, recovery) is True
            assert await _avalue(conn, driver, WHERE) == cluster.standby.port
        async with adb.transaction(readonly=True) as conn:
            assert await _avalue(conn, driver, recovery) is True
        async with adb.connection() as conn:
            assert await _avalue(conn, driver, recovery) is False
        async with adb.transaction() as conn:
            assert await _avalue(conn, driver, WHERE) == cluster.primary.port

    _run(scenario)


def _write_on_primary(cluster: Cluster) -> None:
    with connect(cluster.primary) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS ticks (at timestamptz)")
        conn.execute("INSERT INTO ticks VALUES (now())")


@pytest.mark.parametrize("facade", ["sync", "async"])
def test_a_lagging_replica_is_skipped_until_it_catches_up(cluster: Cluster, facade: str) -> None:
    """Replay paused while the primary writes: once the lag passes max_replica_lag,
    reads go to the primary (or raise, with replica_fallback='fail') and health()
    says so; replay resumed, reads come back to the replica."""
    name = f"repl-lag-{facade}"
    dsn, replica = cluster.primary.dsn, cluster.standby.dsn
    standby = cluster.standby
    settings: dict[str, Any] = {"replicas": [replica], "max_replica_lag": 0.5, "timeout": 5}
    scalar(standby, "SELECT pg_wal_replay_pause()")
    try:
        _write_on_primary(cluster)
        if facade == "sync":
            db = Database(name, dsn=dsn, **settings)
            strict = Database(f"{name}-fail", dsn=dsn, replica_fallback="fail", **settings)
            try:
                _sync_lag_scenario(cluster, db, strict)
            finally:
                db.close_all_connections(timeout=1.0)
                strict.close_all_connections(timeout=1.0)
        else:
            _run(lambda: _async_lag_scenario(cluster, name, dsn, settings))
    finally:
        scalar(standby, "SELECT pg_wal_replay_resume()")
    wait_caught_up(cluster.primary, standby)


def _read_port(db: Database) -> int:
    with db.connection(readonly=True) as conn:
        return int(conn.execute(WHERE).fetchone()[0])


def _sync_lag_scenario(cluster: Cluster, db: Database, strict: Database) -> None:
    # The standby has received WAL it has not replayed, from a commit at least
    # max_replica_lag old: reads are already on the primary.
    time.sleep(0.6)
    _write_on_primary(cluster)
    assert _read_port(db) == cluster.primary.port
    replicas: Any = db.health()["replicas"]
    assert replicas[0]["routing"] == "lagging"
    assert replicas[0]["status"] == "lagging"
    assert replicas[0]["lag"] is None or replicas[0]["lag"] > 0.5
    assert db.health()["status"] == "degraded"
    with pytest.raises(NoReplicaAvailable, match="replica_fallback='primary'"):
        _read_port(strict)
    scalar(cluster.standby, "SELECT pg_wal_replay_resume()")
    wait_caught_up(cluster.primary, cluster.standby)
    _eventually(lambda: _read_port(db) == cluster.standby.port, 5, "reads back on the replica")
    assert db.health()["replicas"][0]["routing"] == "ok"  # type: ignore[index]

    # A replica seen lagging is measured again at most a second later.
    def strict_back() -> bool:
        try:
            return _read_port(strict) == cluster.standby.port
        except NoReplicaAvailable:
            return False

    _eventually(strict_back, 5, "strict reads back")


async def _async_lag_scenario(
    cluster: Cluster, name: str, dsn: str, settings: dict[str, Any]
) -> None:
    db = AsyncDatabase(name, dsn=dsn, **settings)
    strict = AsyncDatabase(f"{name}-fail", dsn=dsn, replica_fallback="fail", **settings)

    async def port(of: AsyncDatabase) -> int:
        async with of.connection(readonly=True) as conn:
            return int(await _avalue(conn, "psycopg", WHERE))

    await asyncio.sleep(0.6)
    _write_on_primary(cluster)
    assert await port(db) == cluster.primary.port
    replicas: Any = db.health()["replicas"]
    assert replicas[0]["status"] == "lagging"
    with pytest.raises(NoReplicaAvailable):
        await port(strict)
    scalar(cluster.standby, "SELECT pg_wal_replay_resume()")
    wait_caught_up(cluster.primary, cluster.standby)

    async def back() -> bool:
        return await port(db) == cluster.standby.port

    await _aeventually(back, 5, "reads back on the replica")

    async def strict_back() -> bool:
        try:
            return await port(strict) == cluster.standby.port
        except NoReplicaAvailable:
            return False

    await _aeventually(strict_back, 5, "strict reads back on the replica")


@pytest.mark.parametrize(("facade", "driver"), [KINDS[0], KINDS[3]])
def test_reads_fall_back_to_the_primary_when_the_replica_stops(
    cluster: Cluster, facade: str, driver: str
) -> None:
    """The replica's server stops under open connections: reads go on, on the primary,
    with no error (once the idle connection is due its check, as on any pool), and
    health() reports the replica down."""
    standby = start_standby(cluster.primary)
    name = f"repl-down-{facade}-{driver}"
    dsn = cluster.primary.dsn
    settings: dict[str, Any] = {"replicas": [standby.dsn], "driver": driver, "timeout": 5}
    try:
        if facade == "sync":
            db = Database(name, dsn=dsn, **settings)
            try:
                assert _read_port(db) == standby.port
                standby.stop("fast")
                # The pool's contract: a connection idle past check_after is checked.
                time.sleep(db.config.check_after + 0.05)
                for _ in range(5):
                    assert _read_port(db) == cluster.primary.port
                replicas: Any = db.health()["replicas"]
                assert replicas[0]["routing"] == "down"
                assert db.health()["status"] == "degraded"
            finally:
                db.close_all_connections(timeout=1.0)
        else:

            async def scenario() -> None:
                adb = AsyncDatabase(name, dsn=dsn, **settings)

                async def port() -> int:
                    async with adb.connection(readonly=True) as conn:
                        return int(await _avalue(conn, driver, WHERE))

                assert await port() == standby.port
                standby.stop("fast")
                await asyncio.sleep(adb.config.check_after + 0.05)
                for _ in range(5):
                    assert await port() == cluster.primary.port
                replicas: Any = adb.health()["replicas"]
                assert replicas[0]["routing"] == "down"

            _run(scenario)
    finally:
        standby.stop("immediate", remove=True)


@pytest.mark.parametrize(
    ("setting", "value"),
    [("max_replica_lag", 0), ("max_replica_lag", "1"), ("replica_fallback", "replica")],
)
@pytest.mark.parametrize("facade", [Database, AsyncDatabase])
def test_replica_settings_are_checked_at_construction(
    setting: str, value: object, facade: type[Database[Any]] | type[AsyncDatabase[Any]]
) -> None:
    with pytest.raises(ConfigurationError, match=setting):
        facade(f"repl-bad-{setting}-{value}", dsn="", replicas=["x"], **{setting: value})

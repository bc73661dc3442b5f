"""``Database``/``AsyncDatabase`` with replicas: ``drain()`` replaces the replicas'
connections too, and ``health()`` reports every pool, so a replica that is down shows."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import psycopg
import pytest

from poolkeeper import AsyncDatabase, Database
from tests.conftest import backends

Admin = psycopg.Connection[Any]


@pytest.fixture(autouse=True)
async def _forget_async_singletons() -> AsyncIterator[None]:
    yield
    await AsyncDatabase.reset_all(timeout=1.0)


def _closed_port_dsn() -> str:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"postgresql://postgres@127.0.0.1:{port}/postgres"


def _eventually(predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def test_drain_replaces_the_replicas_connections(dsn: str, admin: Admin) -> None:
    db = Database("pk-drain-rep", dsn=dsn, replicas=[dsn], min_size=1, max_size=1)
    with db.connection(readonly=True) as conn:
        conn.execute("SELECT 1")
    with db.connection() as conn:
        conn.execute("SELECT 1")
    replica_before = backends(admin, "pk-drain-rep-replica0")
    primary_before = backends(admin, "pk-drain-rep")
    assert len(replica_before) == 1
    assert len(primary_before) == 1
    db.drain()
    assert _eventually(
        lambda: (
            (now := backends(admin, "pk-drain-rep-replica0")) != []
            and not set(now) & set(replica_before)
        )
    ), "the replica's connection was not replaced"
    assert _eventually(
        lambda: (
            (now := backends(admin, "pk-drain-rep")) != [] and not set(now) & set(primary_before)
        )
    )


def test_health_shows_a_replica_that_is_down(dsn: str) -> None:
    db = Database(
        "pk-health-rep", dsn=dsn, replicas=[dsn, _closed_port_dsn()], min_size=1, timeout=1
    )

    # Nothing borrowed, nothing read: health() alone must tell.
    def replica_down() -> bool:
        report = db.health()
        replicas: list[dict[str, object]] = report["replicas"]  # type: ignore[assignment]
        return replicas[1]["status"] == "down"

    assert _eventually(replica_down)
    report = db.health()
    assert report["status"] == "degraded"
    replicas: list[dict[str, object]] = report["replicas"]  # type: ignore[assignment]
    assert [r["name"] for r in replicas] == ["pk-health-rep-replica0", "pk-health-rep-replica1"]
    assert replicas[0]["status"] == "ok" or _eventually(
        lambda: db.health()["replicas"][0]["status"] == "ok"  # type: ignore[index]
    )
    assert "could not connect" in str(replicas[1]["last_error"])


async def test_async_drain_replaces_the_replicas_connections(dsn: str, admin: Admin) -> None:
    db = AsyncDatabase("pk-adrain-rep", dsn=dsn, replicas=[dsn], min_size=1, max_size=1)
    async with db.connection(readonly=True) as conn:
        await conn.execute("SELECT 1")
    async with db.connection() as conn:
        await conn.execute("SELECT 1")
    replica_before = backends(admin, "pk-adrain-rep-replica0")
    assert len(replica_before) == 1
    await db.drain()

    async def replaced() -> bool:
        for _ in range(250):
            now = backends(admin, "pk-adrain-rep-replica0")
            if now and not set(now) & set(replica_before):
                return True
            await asyncio.sleep(0.02)
        return False

    assert await replaced(), "the replica's connection was not replaced"


async def test_async_health_shows_a_replica_that_is_down(dsn: str) -> None:
    db = AsyncDatabase("pk-ahealth-rep", dsn=dsn, replicas=[_closed_port_dsn()], min_size=1)
    for _ in range(250):
        report = db.health()
        replicas: list[dict[str, object]] = report["replicas"]  # type: ignore[assignment]
        if replicas[0]["status"] == "down":
            break
        await asyncio.sleep(0.02)
    assert replicas[0]["status"] == "down"
    assert report["status"] == "degraded"


def _show_read_only(conn: Any, driver: str) -> str:
    sql = "SELECT setting FROM pg_settings WHERE name = 'default_transaction_read_only'"
    if driver == "psycopg2":
        with conn.cursor() as cur:
            cur.execute(sql)
            return str(cur.fetchone()[0])
    return str(conn.execute(sql).fetchone()[0])


@pytest.mark.parametrize("driver", ["psycopg", "psycopg2"])
def test_replica_read_only_makes_a_mistaken_write_fail(dsn: str, driver: str) -> None:
    """replica_read_only=True: replica sessions start read-only on the server, so a
    write through connection(readonly=True) fails even on a writable server; the
    primary's sessions are untouched."""
    db = Database(
        f"pk-rro-{driver}", dsn=dsn, replicas=[dsn], replica_read_only=True, driver=driver
    )
    with db.connection(readonly=True) as conn:
        assert _show_read_only(conn, driver) == "on"
        with pytest.raises(Exception, match="read-only transaction"):
            _write(conn, driver)
    with db.connection() as conn:
        assert _show_read_only(conn, driver) == "off"


def _write(conn: Any, driver: str) -> None:
    if driver == "psycopg2":
        with conn.cursor() as cur:
            cur.execute("CREATE TABLE pk_rro (x int)")
    else:
        conn.execute("CREATE TABLE pk_rro (x int)")


@pytest.mark.parametrize("driver", ["psycopg", "asyncpg"])
async def test_async_replica_read_only_makes_a_mistaken_write_fail(dsn: str, driver: str) -> None:
    db = AsyncDatabase(
        f"pk-arro-{driver}", dsn=dsn, replicas=[dsn], replica_read_only=True, driver=driver
    )
    sql = "SELECT setting FROM pg_settings WHERE name = 'default_transaction_read_only'"
    async with db.connection(readonly=True) as conn:
        if driver == "asyncpg":
            assert await conn.fetchval(sql) == "on"
            with pytest.raises(Exception, match="read-only transaction"):
                await conn.execute("CREATE TABLE pk_arro (x int)")
        else:
            assert (await (await conn.execute(sql)).fetchone())[0] == "on"
            with pytest.raises(Exception, match="read-only transaction"):
                await conn.execute("CREATE TABLE pk_arro (x int)")
    async with db.connection() as conn:
        if driver == "asyncpg":
            assert await conn.fetchval(sql) == "off"
        else:
            assert (await (await conn.execute(sql)).fetchone())[0] == "off"

"""``Database``/``AsyncDatabase`` with replicas, on every pool kind: ``drain()``
replaces the replicas' connections too, ``health()`` reports every pool, so a replica
that is down shows, and ``replica_read_only`` makes a mistaken write fail."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from typing import Any

import psycopg
import pytest

from tests.behaviour.kinds import Kind, execute, fetchval, wait_until
from tests.conftest import backends

Admin = psycopg.Connection[Any]
READ_ONLY = "SELECT setting FROM pg_settings WHERE name = 'default_transaction_read_only'"


@pytest.fixture(autouse=True)
async def _forget_singletons(kind: Kind) -> AsyncIterator[None]:
    yield
    await kind.forget_databases()


def _closed_port_dsn() -> str:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"postgresql://postgres@127.0.0.1:{port}/postgres"


def _replaced(admin: Admin, application_name: str, before: list[int]) -> bool:
    now = backends(admin, application_name)
    return bool(now) and not set(now) & set(before)


async def test_drain_replaces_the_replicas_connections(kind: Kind, dsn: str, admin: Admin) -> None:
    name = f"pk-drain-rep-{kind.id}"
    db = kind.database(name, dsn=dsn, replicas=[dsn], min_size=1, max_size=1)
    async with db.connection(readonly=True) as conn:
        await fetchval(conn, "SELECT 1")
    async with db.connection() as conn:
        await fetchval(conn, "SELECT 1")
    replica_before = backends(admin, f"{name}-replica0")
    primary_before = backends(admin, name)
    assert len(replica_before) == 1
    assert len(primary_before) == 1
    await db.drain()
    await wait_until(lambda: _replaced(admin, f"{name}-replica0", replica_before))
    await wait_until(lambda: _replaced(admin, name, primary_before))


@pytest.mark.per_model("health()'s report of each pool; no driver call differs")
async def test_health_shows_a_replica_that_is_down(kind: Kind, dsn: str) -> None:
    name = f"pk-health-rep-{kind.id}"
    db = kind.database(name, dsn=dsn, replicas=[dsn, _closed_port_dsn()], min_size=1, timeout=1)

    def replica(index: int) -> dict[str, Any]:
        replicas: list[dict[str, Any]] = db.health()["replicas"]  # type: ignore[assignment]
        return replicas[index]

    # Nothing borrowed, nothing read: health() alone must tell.
    await wait_until(lambda: replica(1)["status"] == "down")
    report = db.health()
    assert report["status"] == "degraded"
    replicas: list[dict[str, object]] = report["replicas"]  # type: ignore[assignment]
    assert [r["name"] for r in replicas] == [f"{name}-replica0", f"{name}-replica1"]
    assert "could not connect" in str(replicas[1]["last_error"])
    await wait_until(lambda: replica(0)["status"] == "ok")


async def test_replica_read_only_makes_a_mistaken_write_fail(kind: Kind, dsn: str) -> None:
    """replica_read_only=True: replica sessions start read-only on the server, so a
    write through connection(readonly=True) fails even on a writable server; the
    primary's sessions are untouched."""
    db = kind.database(f"pk-rro-{kind.id}", dsn=dsn, replicas=[dsn], replica_read_only=True)
    async with db.connection(readonly=True) as conn:
        assert await fetchval(conn, READ_ONLY) == "on"
        with pytest.raises(Exception, match="read-only transaction"):
            await execute(conn, "CREATE TABLE pk_rro (x int)")
    async with db.connection() as conn:
        assert await fetchval(conn, READ_ONLY) == "off"

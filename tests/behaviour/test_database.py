"""``Database`` and ``AsyncDatabase``, the process-wide singletons, on every pool kind.

What only one of them has (threads racing the first ``Database()``; one
``AsyncDatabase`` pool per running event loop) is in tests/test_database.py and
tests/test_async_database.py."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

from poolkeeper import ConfigurationError, PoolError
from tests.behaviour.kinds import (
    Kind,
    backend_pid,
    begin,
    close,
    commit,
    execute,
    fetchval,
    settle,
    wait_until,
)
from tests.conftest import backends, settled_backends

Admin = psycopg.Connection[Any]


def threads_of(name: str) -> list[str]:
    """The threads a Pool named ``name`` runs (an AsyncPool runs none)."""
    return [t.name for t in threading.enumerate() if t.name.startswith(f"poolkeeper-{name}-")]


@pytest.fixture(autouse=True)
async def _forget_singletons(kind: Kind) -> AsyncIterator[None]:
    yield
    await kind.forget_databases()


@pytest.mark.per_model("the registry of names; no connection is made")
async def test_same_object_on_every_call(kind: Kind, dsn: str) -> None:
    cls = kind.database_class
    db = cls(dsn=dsn)
    assert db is cls()
    assert db is cls("default")
    assert db is not cls("other", dsn=dsn)
    seen = await asyncio.gather(*(asyncio.to_thread(cls) for _ in range(16)))
    assert all(other is db for other in seen)


async def test_seed_recipe_api(kind: Kind, dsn: str, admin: Admin) -> None:
    name = f"pk-db-seed-{kind.id}"
    db = kind.database(name, dsn=dsn, min_size=1, max_size=2)
    conn = await db.get_connection()
    await begin(conn)
    await db.release_connection(conn)
    assert db.stats().rollbacks == 1
    pid_before = backends(admin, name)
    await db.close_all_connections()
    assert settled_backends(admin, name, []) == []
    async with kind.database(name).connection() as conn:
        assert backend_pid(conn) not in pid_before  # a fresh pool


@pytest.mark.per_model("the registry's settings check; no connection is made")
async def test_conflicting_settings_raise_naming_the_setting(kind: Kind, dsn: str) -> None:
    cls = kind.database_class
    name = f"pk-db-conf-{kind.id}"
    cls(name, dsn=dsn, max_size=5)
    assert cls(name) is cls(name, max_size=5)
    with pytest.raises(ConfigurationError, match="max_size"):
        cls(name, max_size=6)
    with pytest.raises(ConfigurationError, match="dsn"):
        cls(name, dsn=dsn + "x")


@pytest.mark.per_model("the registry of names; no connection is made")
async def test_reset_all_forgets_every_singleton(kind: Kind, dsn: str) -> None:
    cls = kind.database_class
    name = f"pk-db-reset-{kind.id}"
    first = cls(name, dsn=dsn, max_size=3)
    await kind.forget_databases()
    second = cls(name, dsn=dsn, max_size=4)
    assert first is not second


async def test_transaction_and_connection_forms(kind: Kind, dsn: str, admin: Admin) -> None:
    table = f"pk_db_tx_{kind.id.replace('-', '_')}"
    admin.execute(f"DROP TABLE IF EXISTS {table}; CREATE TABLE {table} (x int)")
    db = kind.database(f"pk-db-tx-{kind.id}", dsn=dsn)
    async with db.transaction() as conn:
        await execute(conn, f"INSERT INTO {table} VALUES (7)")
    with pytest.raises(RuntimeError):
        async with db.transaction() as conn:
            await execute(conn, f"INSERT INTO {table} VALUES (8)")
            raise RuntimeError("boom")
    async with db.connection() as conn:
        assert await fetchval(conn, f"SELECT array_agg(x) FROM {table}") == [7]
    admin.execute(f"DROP TABLE {table}")


async def test_releasing_a_foreign_connection_is_an_error(kind: Kind, dsn: str) -> None:
    db = kind.database(f"pk-db-foreign-{kind.id}", dsn=dsn)
    stranger = await kind.connect(dsn)
    try:
        with pytest.raises(PoolError):
            await db.release_connection(stranger)
    finally:
        await close(stranger)


@pytest.mark.per_model("close_all_connections() waiting for a return; no driver call differs")
async def test_release_during_close_all_connections_returns_promptly(
    kind: Kind, dsn: str, admin: Admin
) -> None:
    """An in-flight request during SIGTERM: its work commits, then it releases the
    connection while close_all_connections() waits for it."""
    name = f"pk-inflight-{kind.id}"
    table = name.replace("-", "_")
    admin.execute(f"DROP TABLE IF EXISTS {table}; CREATE TABLE {table} (n int)")
    db = kind.database(name, dsn=dsn, min_size=1, max_size=2)
    pool = db.pool
    conn = await db.get_connection()
    await execute(conn, f"INSERT INTO {table} VALUES (1)")
    await commit(conn)
    closer = kind.spawn(db.close_all_connections(timeout=30))
    await wait_until(lambda: pool.closed)
    await db.release_connection(conn)  # no PoolError
    # Well before its 30 s timeout: it returned once the connection came back.
    await asyncio.wait_for(closer, 10)
    assert settled_backends(admin, name, []) == []
    assert admin.execute(f"SELECT count(*) FROM {table}").fetchone() == (1,)
    admin.execute(f"DROP TABLE {table}")


@pytest.mark.per_model("the registry and the pool an object kept across reset_all() uses")
async def test_database_kept_across_reset_all_stays_closable(
    kind: Kind, dsn: str, admin: Admin
) -> None:
    """The README's module-level ``db``, used after reset_all(): one pool per name,
    and the next reset_all() closes it."""
    name = f"pk-kept-{kind.id}"
    db = kind.database(name, dsn=dsn, min_size=2, max_size=2)
    await settle(db.pool.wait(5))
    await kind.forget_databases()
    async with db.connection() as conn:
        await fetchval(conn, "SELECT 1")
    raw = getattr(db, "db", db)
    assert kind.database_class(name) is raw
    assert kind.database_class(name).pool is db.pool
    await settle(db.pool.wait(5))
    await wait_until(lambda: len(backends(admin, name)) == 2)
    await kind.forget_databases()
    assert settled_backends(admin, name, []) == []
    await wait_until(lambda: not threads_of(name))


@pytest.mark.per_model("the registry and the pool an object kept across reset_all() uses")
async def test_database_kept_across_reset_all_uses_the_new_object_for_its_name(
    kind: Kind, dsn: str, admin: Admin
) -> None:
    name = f"pk-kept-other-{kind.id}"
    old = kind.database(name, dsn=dsn, min_size=1, max_size=2)
    await settle(old.pool.wait(5))
    await kind.forget_databases()
    new = kind.database(name, dsn=dsn, min_size=1, max_size=3)
    assert getattr(new, "db", new) is not getattr(old, "db", old)
    conn = await old.get_connection()  # served by the new object's pool
    assert old.pool is new.pool
    assert new.pool.config.max_size == 3
    pid = backend_pid(conn)
    await old.release_connection(conn)
    async with new.connection() as again:
        assert backend_pid(again) == pid
    await kind.forget_databases()
    assert settled_backends(admin, name, []) == []
    await wait_until(lambda: not threads_of(name))


DEFAULTS_SECRET = "pk-defaults-s3cret"


def _point_libpq_defaults_at(
    dsn: str, name: str, monkeypatch: pytest.MonkeyPatch
) -> dict[str, str]:
    """Empty every DSN variable and set the PG* ones to the test server's parts."""
    params = {k: str(v) for k, v in conninfo_to_dict(dsn).items()}
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.delenv("PGSERVICE", raising=False)
    monkeypatch.delenv(f"POOLKEEPER_{name.upper().replace('-', '_')}_URL", raising=False)
    for key, var in (("host", "PGHOST"), ("port", "PGPORT"), ("user", "PGUSER")):
        monkeypatch.setenv(var, params.get(key, ""))
    monkeypatch.setenv("PGDATABASE", params.get("dbname", "postgres"))
    # The test server trusts local connections: libpq sends this only if asked for one.
    monkeypatch.setenv("PGPASSWORD", DEFAULTS_SECRET)
    return params


def _target_lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if "libpq's defaults" in r.getMessage()]


@pytest.mark.per_model("the registry's log line; where libpq connects is the test server's")
async def test_a_database_without_a_dsn_names_the_server_once(
    kind: Kind, dsn: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    name = f"pk-defaults-{kind.id}"
    params = _point_libpq_defaults_at(dsn, name, monkeypatch)
    caplog.set_level(logging.INFO, logger="poolkeeper")
    db = kind.database(name, min_size=0)
    kind.database(name)
    async with db.connection() as conn:
        user = await fetchval(conn, "SELECT current_user")
        database = await fetchval(conn, "SELECT current_database()")

    (record,) = _target_lines(caplog)
    assert record.levelno == logging.INFO
    message = record.getMessage()
    assert f"POOLKEEPER_{name.upper().replace('-', '_')}_URL" in message
    # The server it names is the one the connection reached.
    assert f"host={params['host']}" in message
    assert f"port={params['port']}" in message
    assert f"user={user}" in message
    assert f"dbname={database}" in message
    assert DEFAULTS_SECRET not in caplog.text


@pytest.mark.per_model("the registry's log line; no connection is made")
async def test_nothing_is_logged_when_a_dsn_is_given(
    kind: Kind, dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="poolkeeper")
    kind.database(f"pk-defaults-given-{kind.id}", dsn=dsn, min_size=0)
    assert not _target_lines(caplog)

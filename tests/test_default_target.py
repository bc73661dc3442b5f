"""With no DSN anywhere, ``Database()``/``AsyncDatabase()`` say once which server libpq's
defaults picked, at INFO, without the password."""

from __future__ import annotations

import logging

import pytest
from psycopg.conninfo import conninfo_to_dict

from poolkeeper import AsyncDatabase, Database

SECRET = "pk-defaults-s3cret"


def _point_libpq_defaults_at(dsn: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Empty every DSN variable and set the PG* ones to the test server's parts."""
    params = {k: str(v) for k, v in conninfo_to_dict(dsn).items()}
    monkeypatch.delenv("DATABASE_URL", raising=False)
    for var in ("POOLKEEPER_PK_DEFAULTS_URL", "POOLKEEPER_PK_DEFAULTS_ASYNC_URL", "PGSERVICE"):
        monkeypatch.delenv(var, raising=False)
    for key, var in (("host", "PGHOST"), ("port", "PGPORT"), ("user", "PGUSER")):
        monkeypatch.setenv(var, params.get(key, ""))
    monkeypatch.setenv("PGDATABASE", params.get("dbname", "postgres"))
    # The test server trusts local connections: libpq sends this only if asked for one.
    monkeypatch.setenv("PGPASSWORD", SECRET)
    return params


def _target_lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if "libpq's defaults" in r.getMessage()]


def test_database_without_a_dsn_names_the_server_once(
    dsn: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    params = _point_libpq_defaults_at(dsn, monkeypatch)
    caplog.set_level(logging.INFO, logger="poolkeeper")

    db = Database("pk-defaults", min_size=0)
    Database("pk-defaults")
    with db.connection() as conn:
        row = conn.execute("SELECT current_user, current_database()").fetchone()
        assert row is not None
        user, database = row

    (record,) = _target_lines(caplog)
    assert record.levelno == logging.INFO
    message = record.getMessage()
    assert "POOLKEEPER_PK_DEFAULTS_URL" in message
    # The server it names is the one the connection reached.
    assert f"host={params['host']}" in message
    assert f"port={params['port']}" in message
    assert f"user={user}" in message
    assert f"dbname={database}" in message
    assert SECRET not in caplog.text


async def test_async_database_without_a_dsn_names_the_server_once(
    dsn: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    params = _point_libpq_defaults_at(dsn, monkeypatch)
    caplog.set_level(logging.INFO, logger="poolkeeper")
    try:
        db = AsyncDatabase("pk-defaults-async", min_size=0)
        AsyncDatabase("pk-defaults-async")
        async with db.connection() as conn:
            cur = await conn.execute("SELECT current_user")
            row = await cur.fetchone()
            assert row is not None
            (user,) = row
    finally:
        await AsyncDatabase.reset_all()

    (record,) = _target_lines(caplog)
    assert f"port={params['port']}" in record.getMessage()
    assert f"user={user}" in record.getMessage()
    assert SECRET not in caplog.text


def test_nothing_is_logged_when_a_dsn_is_given(dsn: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="poolkeeper")
    Database("pk-defaults-given", dsn, min_size=0)
    assert not _target_lines(caplog)

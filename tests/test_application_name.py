"""``application_name`` as the server sees it, on every driver: the one given in the DSN,
``connect_kwargs`` or ``PGAPPNAME`` unchanged; the pool's name only when none is."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from poolkeeper import AsyncPool, Pool

DRIVERS = [("sync", "psycopg"), ("sync", "psycopg2"), ("async", "psycopg"), ("async", "asyncpg")]


def _with_query(dsn: str, pair: str) -> str:
    return f"{dsn}{'&' if '?' in dsn else '?'}{pair}"


def _server_side_name(kind: str, driver: str, dsn: str, **options: Any) -> str:
    """The application_name pg_stat_activity shows for the pool's own backend."""
    if kind == "sync":
        pool = Pool(dsn, driver=driver, min_size=1, max_size=1, **options)
        with pool, pool.connection() as conn:
            cur = conn.cursor()
            cur.execute(
                "SELECT application_name FROM pg_stat_activity WHERE pid = pg_backend_pid()"
            )
            row = cur.fetchone()
            return str(row[0])

    async def run() -> str:
        pool = AsyncPool(dsn, driver=driver, min_size=1, max_size=1, **options)
        async with pool, pool.connection() as conn:
            sql = "SELECT application_name FROM pg_stat_activity WHERE pid = pg_backend_pid()"
            if driver == "asyncpg":
                return str(await conn.fetchval(sql))
            cur = await conn.execute(sql)
            row = await cur.fetchone()
            return str(row[0])

    return asyncio.run(run())


@pytest.mark.parametrize(("kind", "driver"), DRIVERS, ids=str)
def test_pgappname_reaches_the_server(
    kind: str, driver: str, dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PGAPPNAME", "from-env-appname")
    assert _server_side_name(kind, driver, dsn, name="pk-appname") == "from-env-appname"


@pytest.mark.parametrize(("kind", "driver"), DRIVERS, ids=str)
def test_a_given_application_name_beats_pgappname_and_the_pool_name(
    kind: str, driver: str, dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PGAPPNAME", "from-env-appname")
    in_dsn = _with_query(dsn, "application_name=from-the-dsn")
    assert _server_side_name(kind, driver, in_dsn, name="pk-appname") == "from-the-dsn"
    kwargs = {"application_name": "from-kwargs"}
    got = _server_side_name(kind, driver, dsn, name="pk-appname", connect_kwargs=kwargs)
    assert got == "from-kwargs"


@pytest.mark.parametrize(("kind", "driver"), DRIVERS, ids=str)
def test_the_pool_name_is_the_fallback(
    kind: str, driver: str, dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PGAPPNAME", raising=False)
    assert _server_side_name(kind, driver, dsn, name="pk-appname-fallback") == (
        "pk-appname-fallback"
    )

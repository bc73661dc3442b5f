"""A ``Transaction`` handler's COMMIT finishes before the response, and a failed
COMMIT becomes the response: under a real uvicorn on a loopback port, httpx as
the client, the row checked on the server."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import httpx
import psycopg
import pytest
from fastapi import FastAPI

from poolkeeper import AsyncDatabase
from poolkeeper.integrations.fastapi import Transaction, lifespan
from tests.test_fastapi import RunningServer

TABLE = "pk_commit_orders"


def make_app(dsn: str, name: str, driver: str) -> FastAPI:
    app = FastAPI(lifespan=lifespan(name, dsn, max_size=2, driver=driver))
    placeholder = "$1" if driver == "asyncpg" else "%s"

    @app.post("/orders/{code}")
    async def create(conn: Transaction, code: str) -> dict[str, int]:
        sql = f"INSERT INTO {TABLE} (code) VALUES ({placeholder}) RETURNING id"
        if driver == "asyncpg":
            new_id = await conn.fetchval(sql, code)
        else:
            cur = await conn.execute(sql, [code])
            new_id = (await cur.fetchone())[0]
        # The unique check is deferred to COMMIT: nothing has failed yet.
        return {"id": new_id}

    @app.post("/orders/{code}/lose-connection")
    async def create_then_lose(conn: Transaction, code: str) -> dict[str, int]:
        cur = await conn.execute(
            f"INSERT INTO {TABLE} (code) VALUES (%s) RETURNING id, pg_backend_pid()", [code]
        )
        new_id, pid = await cur.fetchone()
        # The session ends before its COMMIT reaches it.
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as other:
            await other.execute("SELECT pg_terminate_backend(%s, 5000)", [pid])
        return {"id": new_id}

    @app.post("/boom")
    async def boom(conn: Transaction) -> dict[str, int]:
        raise RuntimeError("the handler failed")

    return app


@pytest.fixture
def orders(admin: psycopg.Connection[Any]) -> Iterator[None]:
    admin.execute(f"DROP TABLE IF EXISTS {TABLE}")
    admin.execute(
        f"CREATE TABLE {TABLE} (id serial PRIMARY KEY, code text NOT NULL, "
        "CONSTRAINT pk_commit_orders_code UNIQUE (code) DEFERRABLE INITIALLY DEFERRED)"
    )
    yield
    admin.execute(f"DROP TABLE IF EXISTS {TABLE}")


def _post(dsn: str, name: str, driver: str, *paths: str) -> list[httpx.Response]:
    """POST ``paths`` in turn to the app under uvicorn; the server and pools are
    gone when it returns."""
    server = RunningServer(make_app(dsn, name, driver))
    server.start()
    try:

        async def drive() -> list[httpx.Response]:
            async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
                return [await client.post(path) for path in paths]

        return asyncio.run(drive())
    finally:
        server.stop()
        asyncio.run(AsyncDatabase.reset_all(timeout=1.0))


@pytest.mark.parametrize("driver", ["psycopg", "asyncpg"])
def test_a_failed_commit_is_the_response_and_nothing_was_saved(
    dsn: str, admin: psycopg.Connection[Any], orders: None, driver: str
) -> None:
    first, second = _post(dsn, f"pk-commit-{driver}", driver, "/orders/A-1", "/orders/A-1")
    assert first.status_code == 200
    saved = first.json()["id"]
    rows = admin.execute(f"SELECT id FROM {TABLE} ORDER BY id").fetchall()
    # The second COMMIT failed on the deferred unique constraint: the client is told.
    assert not second.is_success, second.text
    assert second.status_code == 409
    assert "not committed" in second.json()["detail"]
    assert "23505" in second.json()["detail"]
    assert rows == [(saved,)]


def test_a_connection_lost_at_commit_is_a_503_and_nothing_was_saved(
    dsn: str, admin: psycopg.Connection[Any], orders: None
) -> None:
    (response,) = _post(dsn, "pk-commit-lost", "psycopg", "/orders/B-1/lose-connection")
    assert response.status_code == 503, response.text
    assert "may or may not" in response.json()["detail"]
    assert admin.execute(f"SELECT count(*) FROM {TABLE}").fetchone() == (0,)


def test_a_handler_error_is_not_turned_into_a_commit_error(
    dsn: str, admin: psycopg.Connection[Any], orders: None
) -> None:
    (response,) = _post(dsn, "pk-commit-boom", "psycopg", "/boom")
    assert response.status_code == 500

"""A small FastAPI service on poolkeeper.

Run it with the database in ``DATABASE_URL``::

    DATABASE_URL=postgresql://postgres@127.0.0.1/postgres \\
        uvicorn examples.fastapi_app.app:app --port 8000

Every request borrows one connection from a pool of five (``Connection``), or
runs inside a transaction (``Transaction``); the pool opens before the server
accepts requests and closes when it shuts down.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI

from poolkeeper import AsyncDatabase
from poolkeeper.integrations.fastapi import Connection, Transaction, lifespan

__all__ = ["app", "create_app"]


def create_app(
    dsn: str | None = None, *, name: str = "fastapi-example", **settings: Any
) -> FastAPI:
    """The app, on the pool ``AsyncDatabase(name)`` (five connections unless told otherwise)."""
    settings.setdefault("max_size", 5)
    pool_lifespan = lifespan(name, dsn, **settings)

    @contextlib.asynccontextmanager
    async def app_lifespan(app: FastAPI) -> AsyncIterator[None]:
        # poolkeeper's lifespan composes with your own start-up work.
        async with pool_lifespan(app):
            async with AsyncDatabase(name).transaction() as conn:
                await conn.execute(
                    "CREATE TABLE IF NOT EXISTS pk_example_counter "
                    "(id int PRIMARY KEY, n int NOT NULL)"
                )
            yield

    app = FastAPI(title="poolkeeper example", lifespan=app_lifespan)

    @app.get("/work")
    async def work(conn: Connection, ms: int = 0) -> dict[str, int]:
        """Hold a connection for ``ms`` milliseconds of server time; say which backend."""
        cur = await conn.execute("SELECT pg_backend_pid(), pg_sleep(%s)", [ms / 1000])
        row = await cur.fetchone()
        return {"backend_pid": row[0]}

    @app.post("/counter")
    async def bump(conn: Transaction) -> dict[str, int]:
        """Increment a counter inside a transaction (committed when the handler returns)."""
        cur = await conn.execute(
            "INSERT INTO pk_example_counter VALUES (1, 1) "
            "ON CONFLICT (id) DO UPDATE SET n = pk_example_counter.n + 1 RETURNING n"
        )
        row = await cur.fetchone()
        return {"n": row[0]}

    @app.get("/health")
    async def health() -> dict[str, object]:
        """The pool's health and counters, answered without touching the database."""
        db = AsyncDatabase(name)
        return {**db.health(), "stats": db.stats().as_dict()}

    return app


app = create_app()

"""FastAPI (and any Starlette app): open the pool at startup, close it at shutdown,
and hand each request a connection.

.. code-block:: python

    from fastapi import FastAPI
    from poolkeeper.integrations.fastapi import Connection, lifespan

    app = FastAPI(lifespan=lifespan(max_size=5))   # DSN from DATABASE_URL

    @app.get("/now")
    async def now(conn: Connection) -> dict[str, str]:
        cur = await conn.execute("SELECT now()::text")
        row = await cur.fetchone()
        return {"now": row[0]}

The pool is the server loop's pool of an :class:`~poolkeeper.AsyncDatabase`
(``name="default"`` unless you pass another), so code outside request handlers
can reach the same pool with ``AsyncDatabase()``.

``Transaction`` commits when the handler returns and *before* the response is
sent (``Depends(..., scope="function")``, FastAPI 0.121 and later): by default
FastAPI ends a ``yield`` dependency after the response has gone out, so a
COMMIT failing there (a deferred constraint, a serialization failure) would
follow a 2xx the client already has. A failed COMMIT is the response instead.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Request

from poolkeeper.async_database import AsyncDatabase

__all__ = ["Connection", "Transaction", "get_connection", "get_transaction", "lifespan"]

#: Where the lifespan leaves the database for the dependencies: ``app.state.<this>``.
STATE_KEY = "poolkeeper"


def lifespan(
    name: str = "default",
    dsn: Any = None,
    *,
    wait: bool = True,
    close_timeout: float = 5.0,
    **settings: Any,
) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    """A FastAPI ``lifespan``: opens ``AsyncDatabase(name, dsn, **settings)``'s pool at
    startup and closes it at shutdown.

    ``wait=True`` holds startup until ``min_size`` connections are open, so a server
    that cannot reach the database fails to start instead of failing its first
    requests. Call it inside your own lifespan to combine it with other resources:
    ``async with lifespan(...)(app): ...``.
    """

    @contextlib.asynccontextmanager
    async def run(app: FastAPI) -> AsyncIterator[None]:
        db = AsyncDatabase(name, dsn, **settings)
        setattr(app.state, STATE_KEY, db)
        pool = db.pool  # made now, in the server's event loop
        try:
            if wait:
                await pool.wait()
            yield
        finally:
            await db.close_all_connections(close_timeout)

    return run


def _database(request: Request) -> AsyncDatabase:
    db = getattr(request.app.state, STATE_KEY, None)
    return db if isinstance(db, AsyncDatabase) else AsyncDatabase()


async def get_connection(request: Request) -> AsyncIterator[Any]:
    """Dependency: a connection for this request, returned when the request is done
    (rolled back if left in a transaction), even if the client disconnects."""
    async with _database(request).connection() as conn:
        yield conn


async def get_transaction(request: Request) -> AsyncIterator[Any]:
    """Dependency: a connection inside a transaction, committed when the handler
    returns (before the response is sent) and rolled back if it raises.

    A COMMIT that fails becomes the response, an ``HTTPException``: 409 for a
    constraint violation, serialization failure or deadlock (nothing was saved;
    a retry may succeed), 503 if the connection was lost at COMMIT (whether it
    committed is unknown), 500 otherwise. A handler's own exception passes through.
    """
    pool = _database(request).pool
    handler_failed = committed = False
    try:
        async with pool.connection() as conn:
            async with pool._driver.transaction(conn):
                try:
                    yield conn
                except BaseException:
                    handler_failed = True
                    raise
            committed = True
    except Exception as exc:
        if handler_failed or committed:
            raise
        raise _commit_failed(exc, pool._driver.is_disconnect(exc)) from exc


#: SQLSTATEs after which nothing was saved and the same request may succeed again.
_CONFLICTS = ("40001", "40P01")


def _commit_failed(exc: Exception, lost: bool) -> HTTPException:
    """What the client hears of a COMMIT that failed: never the server's message,
    which can quote the row's values (a unique violation's DETAIL does)."""
    sqlstate = getattr(exc, "sqlstate", None) or getattr(exc, "pgcode", None)
    if lost:
        return HTTPException(
            503,
            "the connection to the database was lost during COMMIT: the transaction "
            "may or may not have been committed; check before retrying",
        )
    what = f"SQLSTATE {sqlstate}, {type(exc).__name__}" if sqlstate else type(exc).__name__
    status = 409 if sqlstate and (sqlstate.startswith("23") or sqlstate in _CONFLICTS) else 500
    return HTTPException(status, f"the transaction was not committed ({what}); nothing was saved")


#: ``conn: Connection`` in a handler's signature: the driver's connection for this request.
Connection = Annotated[Any, Depends(get_connection)]
#: ``conn: Transaction``: the same, inside BEGIN … COMMIT (ROLLBACK on error); the
#: COMMIT runs before the response is sent, and its failure is the response.
Transaction = Annotated[Any, Depends(get_transaction, scope="function")]

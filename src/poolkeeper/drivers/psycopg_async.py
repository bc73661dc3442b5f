"""psycopg 3, asyncio: the default asyncio driver."""

from __future__ import annotations

import asyncio
import contextlib
from contextlib import AbstractAsyncContextManager
from typing import Any

import psycopg
from psycopg import generators, waiting

from poolkeeper.drivers.base import ConnectSpec
from poolkeeper.drivers.psycopg_attrs import ClientStateTracking
from poolkeeper.drivers.psycopg_common import (
    PsycopgState,
    answer_within,
    check_ping_answer,
    compose_class,
    connect_params,
    forget_prepared,
    ping_limit,
    ping_timeout_error,
    send_ping,
    silence_guard,
    silence_limit,
)
from poolkeeper.drivers.sqlstate import REPLAY_LAG_SQL
from poolkeeper.session_state import RESET_SQL

__all__ = [
    "AsyncGuardedConnection",
    "AsyncPoolConnection",
    "AsyncPsycopgDriver",
]


class AsyncPoolConnection(ClientStateTracking, psycopg.AsyncConnection[Any]):
    """``psycopg.AsyncConnection`` with two flags: may this session carry state to the next
    borrower, and did a borrower change a client-side attribute (see ``psycopg_attrs``)."""

    #: False, CHECK or True: see poolkeeper.session_state.
    _pk_dirty: int = False
    # The reported settings (ParameterStatus) a borrower must find: see record_baseline.
    _pk_reported: tuple[bytes | None, ...] = ()
    # How long the pool's own statements (ping, ROLLBACK, DISCARD ALL) wait for an
    # answer: the pool's connect_timeout.
    _pk_answer_timeout: float = 10.0


class AsyncGuardedConnection(AsyncPoolConnection):
    """An ``AsyncPoolConnection`` on a pool with ``statement_timeout``: it does not wait
    forever for a server that stopped answering (see ``GuardedConnection``).

    Used only when the pool sets ``statement_timeout``, so that other pools pay nothing.
    """

    _pk_silence_limit: float = float("inf")

    async def wait(self, gen: Any, *args: Any, **kwargs: Any) -> Any:
        """psycopg's wait, giving up when the server stays silent past ``silence_limit``."""
        return await super().wait(silence_guard(gen, self), *args, **kwargs)


class AsyncReturnsOnClose(psycopg.AsyncConnection[Any]):
    """``close_returns=True``: ``await conn.close()`` on a lent connection returns it
    to its pool."""

    #: A weak reference to the pool, set when the pool opened this connection.
    _pk_pool: Any = None

    async def close(self) -> None:
        """Return to the pool if lent by one; otherwise close."""
        pool = self._pk_pool() if self._pk_pool is not None else None
        if pool is not None and self in pool._lent:
            await pool.putconn(self)
            return
        await super().close()


class AsyncPsycopgDriver(PsycopgState):
    """asyncio psycopg 3 behind the pool's driver interface."""

    #: What a ``connection_class=`` must subclass.
    connection_base = psycopg.AsyncConnection

    async def connect(self, spec: ConnectSpec) -> AsyncPoolConnection:
        """Open a connection whose statements are tracked for session changes (every
        cursor class: see ``psycopg_common.track_statements``)."""
        params = connect_params(spec)
        guarded = spec.statement_timeout is not None
        cls: type[AsyncPoolConnection] = compose_class(
            AsyncGuardedConnection if guarded else AsyncPoolConnection,
            spec.connection_class,
            AsyncReturnsOnClose if spec.close_returns else None,
        )
        conn = await cls.connect(**params)
        if guarded:
            assert spec.statement_timeout is not None
            conn._pk_silence_limit = silence_limit(spec.statement_timeout)
        # An instance attribute, not the class default: one dict hit per read.
        conn._pk_dirty = False
        if spec.connect_timeout != conn._pk_answer_timeout:
            # Stored only when it differs from the class default: see psycopg_attrs.
            conn._pk_answer_timeout = spec.connect_timeout
        self.record_baseline(conn)
        self.save_client_state(conn)
        return conn

    async def rollback(self, conn: AsyncPoolConnection) -> None:
        """Roll back the open transaction, waiting at most ``connect_timeout`` for the
        answer, as the ping does."""
        with answer_within(conn, conn._pk_answer_timeout, "ROLLBACK"):
            await conn.rollback()

    async def replay_lag(self, conn: AsyncPoolConnection) -> float | None:
        """Seconds this standby's replay is behind (0 on a primary or a caught-up
        standby), None when the server cannot tell; one round trip."""
        cursor = await conn.execute(REPLAY_LAG_SQL)
        row = await cursor.fetchone()
        return None if row is None or row[0] is None else float(row[0])

    async def ping(self, conn: AsyncPoolConnection, timeout: float | None = None) -> None:
        """Send an empty query straight through libpq: one round trip, no transaction.

        Waits at most the pool's ``connect_timeout`` (or ``timeout``, if shorter) for
        the answer: a peer that ACKs but never answers must not hang a borrower or a
        keepalive task. Driven here
        rather than by ``conn.execute``: cancelling psycopg's own wait makes it send
        the server a cancel request and wait up to 5 s more for that, which a dead
        path never answers.
        """
        limit = ping_limit(conn, timeout)
        pgconn = send_ping(conn)
        wait = waiting.wait_async(generators.execute(pgconn), pgconn.socket, interval=0.1)
        try:
            results = await asyncio.wait_for(wait, limit)
        except asyncio.TimeoutError:
            raise ping_timeout_error(limit) from None
        check_ping_answer(pgconn, results)

    async def close(self, conn: AsyncPoolConnection) -> None:
        """Close without raising: closing a dead connection must not fail the pool."""
        with contextlib.suppress(Exception):
            await conn.close()

    async def reset_session(self, conn: AsyncPoolConnection) -> None:
        """DISCARD ALL, outside any transaction (waiting at most ``connect_timeout``)."""
        autocommit = conn.autocommit
        client_dirty = conn._pk_client_dirty
        with answer_within(conn, conn._pk_answer_timeout, RESET_SQL):
            await conn.set_autocommit(True)
            try:
                await conn.execute(RESET_SQL)
            finally:
                await conn.set_autocommit(autocommit)
        forget_prepared(conn)
        conn._pk_dirty = False
        self.record_baseline(conn)
        # The autocommit switch above is the pool's, and undone: not a borrower's change.
        conn._pk_client_dirty = client_dirty

    def transaction(self, conn: AsyncPoolConnection) -> AbstractAsyncContextManager[Any]:
        """psycopg's own transaction block: BEGIN, then COMMIT or ROLLBACK."""
        return conn.transaction()

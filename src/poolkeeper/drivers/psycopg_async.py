"""psycopg 3, asyncio: the default asyncio driver."""

from __future__ import annotations

import asyncio
import contextlib
import operator
from contextlib import AbstractAsyncContextManager
from typing import Any

import psycopg
from psycopg import pq

from poolkeeper.drivers.base import BROKEN, IDLE, IN_TRANSACTION, ConnectSpec
from poolkeeper.drivers.libpq_options import is_server_gone_sqlstate, merge_conninfo
from poolkeeper.session_state import RESET_SQL, touches_session

__all__ = ["AsyncPoolConnection", "AsyncPsycopgDriver", "AsyncTrackingCursor"]

# pq.TransactionStatus as plain ints, indexed by the status libpq reports.
_STATUS_BY_PQ = (
    IDLE,  # IDLE
    BROKEN,  # ACTIVE: a command still running (a cancelled query) cannot be reused
    IN_TRANSACTION,  # INTRANS
    IN_TRANSACTION,  # INERROR
    BROKEN,  # UNKNOWN: closed or lost
)


class AsyncTrackingCursor(psycopg.AsyncCursor[Any]):
    """An async psycopg cursor that marks its connection dirty when SQL may change the session."""

    async def execute(self, query: Any, params: Any = None, **kwargs: Any) -> Any:
        if not self._conn._pk_dirty and touches_session(query):  # type: ignore[attr-defined]
            self._conn._pk_dirty = True  # type: ignore[attr-defined]
        return await super().execute(query, params, **kwargs)

    async def executemany(self, query: Any, params_seq: Any, **kwargs: Any) -> None:
        if touches_session(query):
            self._conn._pk_dirty = True  # type: ignore[attr-defined]
        await super().executemany(query, params_seq, **kwargs)


class AsyncPoolConnection(psycopg.AsyncConnection[Any]):
    """``psycopg.AsyncConnection`` with one flag: may this session carry state to the next
    borrower."""

    _pk_dirty: bool = False
    # How long the pool's ping waits for its answer (the pool's connect_timeout).
    _pk_ping_timeout: float = 10.0


class AsyncPsycopgDriver:
    """asyncio psycopg 3 behind the pool's driver interface."""

    name = "psycopg"
    # attrgetter runs in C: the whole per-return inspection costs one call.
    return_state = staticmethod(operator.attrgetter("pgconn.transaction_status", "_pk_dirty"))
    clean_state = (int(pq.TransactionStatus.IDLE), False)

    def mark_clean(self, conn: AsyncPoolConnection) -> None:
        """Forget the session-dirty flag."""
        conn._pk_dirty = False

    async def connect(self, spec: ConnectSpec) -> AsyncPoolConnection:
        """Open a connection whose cursors track session changes."""
        params = merge_conninfo(spec)
        if spec.pgbouncer:
            # Transaction-mode PgBouncer moves us between server sessions: no server-side
            # prepared statements, or the next transaction may not find them.
            params.setdefault("prepare_threshold", None)
        conn = await AsyncPoolConnection.connect(**params)
        conn.cursor_factory = AsyncTrackingCursor
        conn._pk_ping_timeout = spec.connect_timeout
        return conn

    def status(self, conn: AsyncPoolConnection) -> int:
        """Map libpq's transaction status to IDLE / IN_TRANSACTION / BROKEN."""
        return _STATUS_BY_PQ[conn.pgconn.transaction_status]

    async def rollback(self, conn: AsyncPoolConnection) -> None:
        """Roll back the open transaction."""
        await conn.rollback()

    async def ping(self, conn: AsyncPoolConnection) -> None:
        """An empty query: one round trip, no transaction left open.

        Waits at most the pool's ``connect_timeout`` for the answer: a peer that ACKs
        but never answers must not hang a borrower or a keepalive task.
        """
        if conn.closed:
            raise psycopg.OperationalError("the connection is closed")
        try:
            await asyncio.wait_for(self._empty_query(conn), conn._pk_ping_timeout)
        except asyncio.TimeoutError:
            raise psycopg.OperationalError(
                f"no answer from the server within {conn._pk_ping_timeout:g}s (connect_timeout)"
            ) from None

    @staticmethod
    async def _empty_query(conn: AsyncPoolConnection) -> None:
        if conn.autocommit:
            await conn.execute("")
            return
        # Switching autocommit on an idle connection is client-side only: no round trip.
        await conn.set_autocommit(True)
        try:
            await conn.execute("")
        finally:
            await conn.set_autocommit(False)

    async def close(self, conn: AsyncPoolConnection) -> None:
        """Close without raising: closing a dead connection must not fail the pool."""
        with contextlib.suppress(Exception):
            await conn.close()

    def session_dirty(self, conn: AsyncPoolConnection) -> bool:
        """Whether a statement since the last reset may have changed session state."""
        return conn._pk_dirty

    async def reset_session(self, conn: AsyncPoolConnection) -> None:
        """DISCARD ALL, outside any transaction."""
        autocommit = conn.autocommit
        await conn.set_autocommit(True)
        try:
            await conn.execute(RESET_SQL)
        finally:
            await conn.set_autocommit(autocommit)
        conn._pk_dirty = False

    def transaction(self, conn: AsyncPoolConnection) -> AbstractAsyncContextManager[Any]:
        """psycopg's own transaction block: BEGIN, then COMMIT or ROLLBACK."""
        return conn.transaction()

    def backend_pid(self, conn: AsyncPoolConnection) -> int:
        """The backend's process id."""
        return conn.info.backend_pid

    def is_disconnect(self, exc: BaseException) -> bool:
        """Connection lost, or a SQLSTATE that means the server restarted or was demoted."""
        if not isinstance(exc, psycopg.Error):
            return False
        if isinstance(exc, psycopg.OperationalError) and exc.sqlstate is None:
            return True
        return is_server_gone_sqlstate(exc.sqlstate)

    def fileno(self, conn: AsyncPoolConnection) -> int:
        """The libpq socket, or -1 once closed."""
        try:
            return conn.pgconn.socket
        except psycopg.OperationalError:
            return -1

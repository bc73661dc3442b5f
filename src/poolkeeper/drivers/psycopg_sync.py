"""psycopg 3, blocking: the default driver."""

from __future__ import annotations

import contextlib
from contextlib import AbstractContextManager
from typing import Any

import psycopg
from psycopg import pq

from poolkeeper.drivers.base import BROKEN, IDLE, IN_TRANSACTION, ConnectSpec
from poolkeeper.drivers.libpq_options import is_server_gone_sqlstate, merge_conninfo
from poolkeeper.session_state import RESET_SQL, touches_session

__all__ = ["PoolConnection", "PsycopgDriver", "TrackingCursor"]

# pq.TransactionStatus as plain ints, indexed by the status libpq reports.
_STATUS_BY_PQ = (
    IDLE,  # IDLE
    BROKEN,  # ACTIVE: a command still running on return means we cannot reuse it
    IN_TRANSACTION,  # INTRANS
    IN_TRANSACTION,  # INERROR
    BROKEN,  # UNKNOWN: closed or lost
)


class TrackingCursor(psycopg.Cursor[Any]):
    """A psycopg cursor that marks its connection dirty when SQL may change the session."""

    def execute(self, query: Any, params: Any = None, **kwargs: Any) -> Any:
        if not self._conn._pk_dirty and touches_session(query):  # type: ignore[attr-defined]
            self._conn._pk_dirty = True  # type: ignore[attr-defined]
        return super().execute(query, params, **kwargs)

    def executemany(self, query: Any, params_seq: Any, **kwargs: Any) -> None:
        if touches_session(query):
            self._conn._pk_dirty = True  # type: ignore[attr-defined]
        super().executemany(query, params_seq, **kwargs)


class PoolConnection(psycopg.Connection[Any]):
    """``psycopg.Connection`` with one flag: may this session carry state to the next borrower."""

    _pk_dirty: bool = False


class PsycopgDriver:
    """Sync psycopg 3 behind the pool's driver interface."""

    name = "psycopg"

    def connect(self, spec: ConnectSpec) -> PoolConnection:
        """Open a connection whose cursors track session changes."""
        params = merge_conninfo(spec)
        if spec.pgbouncer:
            # Transaction-mode PgBouncer moves us between server sessions: no server-side
            # prepared statements, or the next transaction may not find them.
            params.setdefault("prepare_threshold", None)
        conn = PoolConnection.connect(**params)
        conn.cursor_factory = TrackingCursor
        return conn

    def status(self, conn: PoolConnection) -> int:
        """Map libpq's transaction status to IDLE / IN_TRANSACTION / BROKEN."""
        return _STATUS_BY_PQ[conn.pgconn.transaction_status]

    def rollback(self, conn: PoolConnection) -> None:
        """Roll back the open transaction."""
        conn.rollback()

    def ping(self, conn: PoolConnection) -> None:
        """Send an empty query straight through libpq: one round trip, no transaction."""
        if conn.closed:
            raise psycopg.OperationalError("the connection is closed")
        result = conn.pgconn.exec_(b"")
        if result.status != pq.ExecStatus.EMPTY_QUERY:
            raise psycopg.OperationalError(
                conn.pgconn.get_error_message() or "the server did not answer the ping"
            )

    def close(self, conn: PoolConnection) -> None:
        """Close without raising: closing a dead connection must not fail the pool."""
        with contextlib.suppress(Exception):
            conn.close()

    def session_dirty(self, conn: PoolConnection) -> bool:
        """Whether a statement since the last reset may have changed session state."""
        return conn._pk_dirty

    def reset_session(self, conn: PoolConnection) -> None:
        """DISCARD ALL, outside any transaction."""
        autocommit = conn.autocommit
        conn.autocommit = True
        try:
            conn.execute(RESET_SQL)
        finally:
            conn.autocommit = autocommit
        conn._pk_dirty = False

    def transaction(self, conn: PoolConnection) -> AbstractContextManager[Any]:
        """psycopg's own transaction block: BEGIN, then COMMIT or ROLLBACK."""
        return conn.transaction()

    def backend_pid(self, conn: PoolConnection) -> int:
        """The backend's process id."""
        return conn.info.backend_pid

    def is_disconnect(self, exc: BaseException) -> bool:
        """Connection lost, or a SQLSTATE that means the server restarted or was demoted."""
        if not isinstance(exc, psycopg.Error):
            return False
        if isinstance(exc, psycopg.OperationalError) and exc.sqlstate is None:
            return True
        return is_server_gone_sqlstate(exc.sqlstate)

    def fileno(self, conn: PoolConnection) -> int:
        """The libpq socket, or -1 once closed."""
        try:
            return conn.pgconn.socket
        except psycopg.OperationalError:
            return -1

"""psycopg2, blocking: for code that still speaks psycopg2 (extra ``[psycopg2]``)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextlib import AbstractContextManager
from typing import Any

import psycopg2
import psycopg2.extensions

from poolkeeper.drivers.base import BROKEN, IDLE, IN_TRANSACTION, ConnectSpec
from poolkeeper.drivers.libpq_options import libpq_server_refused, merge_conninfo
from poolkeeper.drivers.sqlstate import READ_ONLY_SQLSTATE, is_server_gone_sqlstate
from poolkeeper.drivers.watchdog import watchdog
from poolkeeper.session_state import RESET_SQL, touches_session

__all__ = ["PoolConnection2", "Psycopg2Driver"]

_STATUS = (IDLE, BROKEN, IN_TRANSACTION, IN_TRANSACTION, BROKEN)


class _TracksSession:
    """Cursor mixin: flag the connection when SQL may change session state."""

    connection: Any

    def execute(self, query: Any, vars: Any = None) -> Any:
        if touches_session(query):
            self.connection._pk_dirty = True
        return super().execute(query, vars)  # type: ignore[misc]

    def executemany(self, query: Any, vars_list: Any) -> Any:
        if touches_session(query):
            self.connection._pk_dirty = True
        return super().executemany(query, vars_list)  # type: ignore[misc]


class PoolConnection2(psycopg2.extensions.connection):
    """psycopg2's connection with the pool's session-dirty flag."""

    _pk_dirty = False
    # How long the pool's own statements (ping, ROLLBACK, DISCARD ALL) wait for an
    # answer: the pool's connect_timeout.
    _pk_answer_timeout = 10.0


@contextlib.contextmanager
def _answer_within(conn: PoolConnection2, seconds: float, what: str) -> Iterator[None]:
    """The pool's own statement on ``conn`` gets an answer within ``seconds`` or fails.

    psycopg2 waits inside its C code with no limit, so a watchdog shuts the socket
    down at the deadline: the statement fails as on a lost connection, and the pool
    discards the connection."""
    with watchdog.limit(conn.fileno(), seconds) as expired:
        try:
            yield
        except psycopg2.Error:
            if not expired.fired:
                raise
            # Raised outside this handler's chain: the shut-down error says nothing more.
            lost = True
        else:
            lost = False
    if lost:
        raise psycopg2.OperationalError(
            f"no answer from the server within {seconds:.3g}s to the pool's {what}; the "
            "server or the network path to it is not responding, so the connection is "
            "discarded"
        )


def _tracking(cursor_class: type[Any]) -> type[Any]:
    return type(f"Tracking{cursor_class.__name__}", (_TracksSession, cursor_class), {})


class Psycopg2Driver:
    """Sync psycopg2 behind the pool's driver interface."""

    name = "psycopg2"
    clean_state = (IDLE, False)

    def return_state(self, conn: PoolConnection2) -> object:
        """(status, dirty): psycopg2 exposes the status only through a method call."""
        return (self.status(conn), conn._pk_dirty)

    def mark_clean(self, conn: PoolConnection2) -> None:
        """Forget the session-dirty flag."""
        conn._pk_dirty = False

    def connect(self, spec: ConnectSpec) -> PoolConnection2:
        """Open a connection whose cursors (the user's ``cursor_factory`` too) track SET & co."""
        params = merge_conninfo(spec)
        cursor_class = params.pop("cursor_factory", None) or psycopg2.extensions.cursor
        # An attribute in psycopg2, not a connect() argument; accepted as psycopg 3 does.
        autocommit = bool(params.pop("autocommit", False))
        conn: PoolConnection2 = psycopg2.connect(
            connection_factory=PoolConnection2, cursor_factory=_tracking(cursor_class), **params
        )
        conn._pk_answer_timeout = spec.connect_timeout
        if autocommit:
            conn.autocommit = True
        return conn

    def status(self, conn: PoolConnection2) -> int:
        """IDLE / IN_TRANSACTION / BROKEN from libpq's transaction status."""
        if conn.closed:
            return BROKEN
        return _STATUS[conn.get_transaction_status()]

    def rollback(self, conn: PoolConnection2) -> None:
        """Roll back, by the server's transaction status, not psycopg2's own; waiting
        at most ``connect_timeout`` for the answer."""
        with _answer_within(conn, conn._pk_answer_timeout, "ROLLBACK"):
            conn.rollback()
            if conn.get_transaction_status() != psycopg2.extensions.TRANSACTION_STATUS_IDLE:
                # A BEGIN sent as SQL (in autocommit, say): psycopg2 did not start it,
                # so its rollback() skipped it; the next borrower would inherit it.
                autocommit = conn.autocommit
                conn.autocommit = True
                try:
                    with conn.cursor() as cur:
                        cur.execute("ROLLBACK")
                finally:
                    if not conn.closed:
                        conn.autocommit = autocommit

    def ping(self, conn: PoolConnection2, timeout: float | None = None) -> None:
        """``SELECT 1`` in autocommit, so the ping opens no transaction; waits at most
        ``connect_timeout`` (or ``timeout``, if shorter) for the answer."""
        limit = conn._pk_answer_timeout
        if timeout is not None and timeout < limit:
            limit = max(timeout, 0.0)
        autocommit = conn.autocommit
        conn.autocommit = True
        try:
            with _answer_within(conn, limit, "ping"), conn.cursor() as cur:
                cur.execute("SELECT 1")
        finally:
            if not conn.closed:
                conn.autocommit = autocommit

    def close(self, conn: PoolConnection2) -> None:
        """Close without raising."""
        with contextlib.suppress(Exception):
            conn.close()

    def session_dirty(self, conn: PoolConnection2) -> bool:
        """Whether SQL since the last reset may have changed session state."""
        return conn._pk_dirty

    def reset_session(self, conn: PoolConnection2) -> None:
        """DISCARD ALL outside a transaction, waiting at most ``connect_timeout``."""
        autocommit = conn.autocommit
        conn.autocommit = True
        try:
            with _answer_within(conn, conn._pk_answer_timeout, RESET_SQL), conn.cursor() as cur:
                cur.execute(RESET_SQL)
        finally:
            if not conn.closed:
                conn.autocommit = autocommit
        conn._pk_dirty = False

    def transaction(self, conn: PoolConnection2) -> AbstractContextManager[Any]:
        """psycopg2's ``with conn:``: COMMIT on success, ROLLBACK on error."""
        return conn

    def backend_pid(self, conn: PoolConnection2) -> int:
        """The backend's process id."""
        return int(conn.get_backend_pid())

    def is_disconnect(self, exc: BaseException) -> bool:
        """Connection lost, or a SQLSTATE meaning the server restarted or was demoted."""
        lost = isinstance(exc, (psycopg2.OperationalError, psycopg2.InterfaceError))
        if lost and getattr(exc, "pgcode", None) is None:
            return True
        if isinstance(exc, psycopg2.Error):
            return is_server_gone_sqlstate(exc.pgcode)
        return False

    def is_refusal(self, exc: BaseException) -> bool:
        """The server answered the connection attempt with an error."""
        if not isinstance(exc, psycopg2.Error):
            return False
        return exc.pgcode is not None or libpq_server_refused(str(exc))

    def is_read_only_error(self, exc: BaseException) -> bool:
        """SQLSTATE 25006: a write in a read-only transaction (or on a standby)."""
        return isinstance(exc, psycopg2.Error) and exc.pgcode == READ_ONLY_SQLSTATE

    def fileno(self, conn: PoolConnection2) -> int:
        """The socket, or -1 once closed."""
        if conn.closed:
            return -1
        return int(conn.fileno())

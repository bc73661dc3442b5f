"""psycopg 3, blocking: the default driver."""

from __future__ import annotations

import contextlib
import operator
import select
import time
from collections.abc import Generator
from contextlib import AbstractContextManager
from typing import Any

import psycopg
from psycopg import generators, pq

from poolkeeper.drivers.base import BROKEN, IDLE, IN_TRANSACTION, ConnectSpec
from poolkeeper.drivers.libpq_options import is_server_gone_sqlstate, merge_conninfo
from poolkeeper.session_state import RESET_SQL, touches_session

__all__ = [
    "GuardedConnection",
    "PoolConnection",
    "PsycopgDriver",
    "TrackingCursor",
    "silence_limit",
]

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
    # How long the pool's ping waits for its answer (the pool's connect_timeout).
    _pk_ping_timeout: float = 10.0


def silence_limit(statement_timeout: float) -> float:
    """How long a statement may hear nothing from the server before the client gives up.

    The server cancels any statement at ``statement_timeout`` and says so at once, so
    silence well past it means the server or the path to it is gone: a hung host, or a
    middlebox that still ACKs (which TCP keepalives and ``tcp_user_timeout`` cannot see).
    """
    return statement_timeout + max(1.0, statement_timeout)


_POLL_READ = select.POLLIN | select.POLLPRI | select.POLLERR | select.POLLHUP
_POLL_WRITE = select.POLLOUT | select.POLLERR | select.POLLHUP


def _silence_guard(gen: Generator[Any, Any, Any], conn: GuardedConnection) -> Any:
    """Wrap a psycopg wait generator; raise once the server is silent past the limit."""
    try:
        state = next(gen)
    except StopIteration as stop:
        return stop.value
    last_heard = time.monotonic()
    while True:
        ready = yield state
        now = time.monotonic()
        if ready:
            last_heard = now
        elif (
            now - last_heard > conn._pk_silence_limit
            # A session that changed its own settings may have raised statement_timeout.
            and not conn._pk_dirty
            and conn.pgconn.transaction_status == pq.TransactionStatus.ACTIVE
        ):
            raise psycopg.OperationalError(
                f"no answer from the server for {now - last_heard:.1f}s, although "
                "statement_timeout would have ended the statement by now; the server or "
                "the network path to it is not responding"
            )
        try:
            state = gen.send(ready)
        except StopIteration as stop:
            return stop.value


class GuardedConnection(PoolConnection):
    """A ``PoolConnection`` on a pool with ``statement_timeout``: it does not wait forever.

    Used only when the pool sets ``statement_timeout``, so that other pools pay nothing.
    """

    _pk_silence_limit: float = float("inf")

    def wait(self, gen: Any, *args: Any, **kwargs: Any) -> Any:
        """psycopg's wait, giving up when the server stays silent past :func:`silence_limit`."""
        return super().wait(_silence_guard(gen, self), *args, **kwargs)


def _wait_within(gen: Generator[Any, Any, Any], fileno: int, timeout: float) -> Any:
    """Drive a psycopg generator on ``fileno``; raise if it has not finished in ``timeout``."""
    deadline = time.monotonic() + timeout
    poller = select.poll()
    try:
        state = next(gen)
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise psycopg.OperationalError(
                    f"no answer from the server within {timeout:g}s (connect_timeout)"
                )
            wanted = (select.POLLIN if state & 1 else 0) | (select.POLLOUT if state & 2 else 0)
            poller.register(fileno, wanted)
            events = poller.poll(remaining * 1000)
            poller.unregister(fileno)
            if not events:
                continue
            mask = events[0][1]
            ready = (1 if state & 1 and mask & _POLL_READ else 0) | (
                2 if state & 2 and mask & _POLL_WRITE else 0
            )
            state = gen.send(ready)
    except StopIteration as stop:
        return stop.value


class PsycopgDriver:
    """Sync psycopg 3 behind the pool's driver interface."""

    name = "psycopg"
    # attrgetter runs in C: the whole per-return inspection costs one call.
    return_state = staticmethod(operator.attrgetter("pgconn.transaction_status", "_pk_dirty"))
    clean_state = (int(pq.TransactionStatus.IDLE), False)

    def mark_clean(self, conn: PoolConnection) -> None:
        """Forget the session-dirty flag."""
        conn._pk_dirty = False

    def connect(self, spec: ConnectSpec) -> PoolConnection:
        """Open a connection whose cursors track session changes."""
        params = merge_conninfo(spec)
        if spec.pgbouncer:
            # Transaction-mode PgBouncer moves us between server sessions: no server-side
            # prepared statements, or the next transaction may not find them.
            params.setdefault("prepare_threshold", None)
        conn: PoolConnection
        if spec.statement_timeout is not None:
            guarded = GuardedConnection.connect(**params)
            guarded._pk_silence_limit = silence_limit(spec.statement_timeout)
            conn = guarded
        else:
            conn = PoolConnection.connect(**params)
        conn.cursor_factory = TrackingCursor
        conn._pk_ping_timeout = spec.connect_timeout
        return conn

    def status(self, conn: PoolConnection) -> int:
        """Map libpq's transaction status to IDLE / IN_TRANSACTION / BROKEN."""
        return _STATUS_BY_PQ[conn.pgconn.transaction_status]

    def rollback(self, conn: PoolConnection) -> None:
        """Roll back the open transaction."""
        conn.rollback()

    def ping(self, conn: PoolConnection) -> None:
        """Send an empty query straight through libpq: one round trip, no transaction.

        Waits at most the pool's ``connect_timeout`` for the answer: a peer that ACKs
        but never answers must not hang a borrower or a keepalive worker.
        """
        if conn.closed:
            raise psycopg.OperationalError("the connection is closed")
        pgconn = conn.pgconn
        pgconn.send_query(b"")
        results = _wait_within(generators.execute(pgconn), pgconn.socket, conn._pk_ping_timeout)
        if not results or results[-1].status != pq.ExecStatus.EMPTY_QUERY:
            message = pgconn.get_error_message().strip()
            raise psycopg.OperationalError(message or "the server did not answer the ping")

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

    def is_standby(self, conn: PoolConnection) -> bool:
        """True if the server reports it is a hot standby (PostgreSQL 14+ says so
        unasked, in ``in_hot_standby``): no round trip."""
        return conn.info.parameter_status("in_hot_standby") == "on"

    def fileno(self, conn: PoolConnection) -> int:
        """The libpq socket, or -1 once closed."""
        try:
            return conn.pgconn.socket
        except psycopg.OperationalError:
            return -1

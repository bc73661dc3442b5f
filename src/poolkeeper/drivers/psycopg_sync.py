"""psycopg 3, blocking: the default driver."""

from __future__ import annotations

import contextlib
import select
import time
from collections.abc import Generator
from contextlib import AbstractContextManager
from typing import Any

import psycopg
from psycopg import generators

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
    "GuardedConnection",
    "PoolConnection",
    "PsycopgDriver",
    "silence_limit",
]


class PoolConnection(ClientStateTracking, psycopg.Connection[Any]):
    """``psycopg.Connection`` with two flags: may this session carry state to the next borrower,
    and did a borrower change a client-side attribute (see ``psycopg_attrs``)."""

    #: False, CHECK or True: see poolkeeper.session_state.
    _pk_dirty: int = False
    # The reported settings (ParameterStatus) a borrower must find: see record_baseline.
    _pk_reported: tuple[bytes | None, ...] = ()
    # How long the pool's own statements (ping, ROLLBACK, DISCARD ALL) wait for an
    # answer: the pool's connect_timeout.
    _pk_answer_timeout: float = 10.0


_POLL_READ = select.POLLIN | select.POLLPRI | select.POLLERR | select.POLLHUP
_POLL_WRITE = select.POLLOUT | select.POLLERR | select.POLLHUP


class GuardedConnection(PoolConnection):
    """A ``PoolConnection`` on a pool with ``statement_timeout``: it does not wait forever.

    Used only when the pool sets ``statement_timeout``, so that other pools pay nothing.
    """

    _pk_silence_limit: float = float("inf")

    def wait(self, gen: Any, *args: Any, **kwargs: Any) -> Any:
        """psycopg's wait, giving up when the server stays silent past :func:`silence_limit`."""
        return super().wait(silence_guard(gen, self), *args, **kwargs)


def _wait_within(gen: Generator[Any, Any, Any], fileno: int, timeout: float) -> Any:
    """Drive a psycopg generator on ``fileno``; raise if it has not finished in ``timeout``."""
    deadline = time.monotonic() + timeout
    poller = select.poll()
    try:
        state = next(gen)
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ping_timeout_error(timeout)
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


class ReturnsOnClose(psycopg.Connection[Any]):
    """``close_returns=True``: ``close()`` on a lent connection returns it to its pool
    (for integrations that close what they are done with, such as a NullPool)."""

    #: A weak reference to the pool, set when the pool opened this connection.
    _pk_pool: Any = None

    def close(self) -> None:
        """Return to the pool if lent by one; otherwise close."""
        pool = self._pk_pool() if self._pk_pool is not None else None
        if pool is not None and self in pool._lent:
            pool.putconn(self)
            return
        super().close()


class PsycopgDriver(PsycopgState):
    """Sync psycopg 3 behind the pool's driver interface."""

    #: What a ``connection_class=`` must subclass.
    connection_base = psycopg.Connection

    def connect(self, spec: ConnectSpec) -> PoolConnection:
        """Open a connection whose statements are tracked for session changes (every
        cursor class: see ``psycopg_common.track_statements``)."""
        params = connect_params(spec)
        guarded = spec.statement_timeout is not None
        cls: type[PoolConnection] = compose_class(
            GuardedConnection if guarded else PoolConnection,
            spec.connection_class,
            ReturnsOnClose if spec.close_returns else None,
        )
        conn = cls.connect(**params)
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

    def rollback(self, conn: PoolConnection) -> None:
        """Roll back the open transaction, waiting at most ``connect_timeout`` for the
        answer, as the ping does."""
        with answer_within(conn, conn._pk_answer_timeout, "ROLLBACK"):
            conn.rollback()

    def replay_lag(self, conn: PoolConnection) -> float | None:
        """Seconds this standby's replay is behind (0 on a primary or a caught-up
        standby), None when the server cannot tell; one round trip."""
        row = conn.execute(REPLAY_LAG_SQL).fetchone()
        return None if row is None or row[0] is None else float(row[0])

    def ping(self, conn: PoolConnection, timeout: float | None = None) -> None:
        """Send an empty query straight through libpq: one round trip, no transaction.

        Waits at most the pool's ``connect_timeout`` (or ``timeout``, if shorter) for
        the answer: a peer that ACKs but never answers must not hang a borrower or a
        keepalive worker.
        """
        limit = ping_limit(conn, timeout)
        pgconn = send_ping(conn)
        results = _wait_within(generators.execute(pgconn), pgconn.socket, limit)
        check_ping_answer(pgconn, results)

    def close(self, conn: PoolConnection) -> None:
        """Close without raising: closing a dead connection must not fail the pool."""
        with contextlib.suppress(Exception):
            conn.close()

    def reset_session(self, conn: PoolConnection) -> None:
        """DISCARD ALL, outside any transaction (waiting at most ``connect_timeout``)."""
        autocommit = conn.autocommit
        client_dirty = conn._pk_client_dirty
        with answer_within(conn, conn._pk_answer_timeout, RESET_SQL):
            conn.autocommit = True
            try:
                conn.execute(RESET_SQL)
            finally:
                conn.autocommit = autocommit
        forget_prepared(conn)
        conn._pk_dirty = False
        self.record_baseline(conn)
        # The autocommit switch above is the pool's, and undone: not a borrower's change.
        conn._pk_client_dirty = client_dirty

    def transaction(self, conn: PoolConnection) -> AbstractContextManager[Any]:
        """psycopg's own transaction block: BEGIN, then COMMIT or ROLLBACK."""
        return conn.transaction()

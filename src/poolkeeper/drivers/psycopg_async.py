"""psycopg 3, asyncio: the default asyncio driver."""

from __future__ import annotations

import asyncio
import contextlib
from contextlib import AbstractAsyncContextManager
from typing import Any

import psycopg

from poolkeeper.drivers.base import ConnectSpec
from poolkeeper.drivers.psycopg_common import PsycopgState, connect_params
from poolkeeper.session_state import KNOWN_VERDICTS, RESET_SQL, touches_session

__all__ = ["AsyncPoolConnection", "AsyncPsycopgDriver", "AsyncTrackingCursor"]


_cursor_execute = psycopg.AsyncCursor.execute


class AsyncTrackingCursor(psycopg.AsyncCursor[Any]):
    """An async psycopg cursor that marks its connection dirty when SQL may change the session."""

    # Not a coroutine itself: it returns psycopg's, so tracking adds no coroutine
    # frame, and a known query costs one dict read (see TrackingCursor).
    def execute(
        self,
        query: Any,
        params: Any = None,
        *,
        prepare: bool | None = None,
        binary: bool | None = None,
    ) -> Any:
        conn = self._conn
        if not conn._pk_dirty:  # type: ignore[attr-defined]
            try:
                dirty = KNOWN_VERDICTS[query]
            except (KeyError, TypeError):
                dirty = touches_session(query)
            if dirty:
                conn._pk_dirty = True  # type: ignore[attr-defined]
        if prepare is None and binary is None:
            # Positional only: CPython binds these faster than keyword arguments.
            return _cursor_execute(self, query, params)
        return _cursor_execute(self, query, params, prepare=prepare, binary=binary)

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


class AsyncPsycopgDriver(PsycopgState):
    """asyncio psycopg 3 behind the pool's driver interface."""

    async def connect(self, spec: ConnectSpec) -> AsyncPoolConnection:
        """Open a connection whose cursors track session changes."""
        params = connect_params(spec)
        conn = await AsyncPoolConnection.connect(**params)
        conn.cursor_factory = AsyncTrackingCursor
        # An instance attribute, not the class default: one dict hit per read.
        conn._pk_dirty = False
        conn._pk_ping_timeout = spec.connect_timeout
        return conn

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

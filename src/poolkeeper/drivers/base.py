"""The small interface every driver implements; the pool core talks only to this.

A driver turns a resolved conninfo into a connection and answers the few
questions the pool asks about one: is it idle, in a transaction or broken; is
its session dirty; did a borrower change its client-side attributes (and put
them back); which backend serves it. Nothing here knows about pooling.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable
from contextlib import AbstractAsyncContextManager, AbstractContextManager
from typing import Any, Protocol, TypeVar

__all__ = [
    "BROKEN",
    "IDLE",
    "IN_TRANSACTION",
    "AsyncDriver",
    "ConnectSpec",
    "SettingsBaseline",
    "SyncDriver",
    "shared",
]

C = TypeVar("C")
T = TypeVar("T")

#: ``status()`` results: plain ints, because this is read on every return.
IDLE = 0
IN_TRANSACTION = 1
BROKEN = 2


#: Baselines already held by a connection, by value and element types (so that an
#: ``IsolationLevel`` never stands in for an equal plain int): see :func:`shared`.
_SHARED: dict[tuple[Any, ...], Any] = {}
# Past this many distinct baselines (pools with different settings, or handlers bound
# to each connection) start over: a cache, not a registry.
_SHARED_MAX = 256


def shared(value: T) -> T:
    """``value``, or an equal tuple of the same element types that another connection
    already keeps: one object for the baseline every connection of a pool records.

    Baselines (reported settings, client-side attributes) are immutable tuples that
    are equal on nearly every connection; kept once each, a hundred idle
    connections hold one copy instead of a hundred. Unhashable values are returned
    as they are.
    """
    try:
        key = (value, *map(type, value))  # type: ignore[call-overload]
        if len(_SHARED) >= _SHARED_MAX:
            _SHARED.clear()
        kept: T = _SHARED.setdefault(key, value)
    except TypeError:
        return value
    return kept


class SettingsBaseline:
    """The settings check every driver makes alike, around its own read of the
    settings the server reports (ParameterStatus): :meth:`read_settings`.

    Connections carry ``_pk_dirty`` (see :mod:`poolkeeper.session_state`) and
    ``_pk_reported``, the baseline. :meth:`settings_changed` runs inline in
    ``putconn`` on every return flagged for a settings check.
    """

    # A method rather than a staticmethod class attribute: CPython specializes the
    # call of a function found on the class, not of a staticmethod, which costs each
    # checked return some 200 instructions more.
    def read_settings(self, conn: Any) -> object:
        """The settings of ``session_state.REPORTED_PARAMETERS`` as the driver holds
        them now, as a tuple or another value that compares equal only when every
        one is the same. No I/O."""
        raise NotImplementedError

    def session_dirty(self, conn: Any) -> bool:
        """Whether a statement since the last reset may have changed session state, or
        a setting the server reports differs from the baseline (see
        :meth:`record_baseline`)."""
        return conn._pk_dirty is True or self.settings_changed(conn)

    def settings_changed(self, conn: Any) -> bool:
        """Whether a setting the server reports differs from the baseline; when none
        does, a pending :data:`~poolkeeper.session_state.CHECK` is cleared. No I/O."""
        if self.read_settings(conn) != conn._pk_reported:
            return True
        conn._pk_dirty = False
        return False

    def record_baseline(self, conn: Any) -> None:
        """Remember the reported settings as they are now: what a borrower must find."""
        conn._pk_reported = shared(self.read_settings(conn))


@dataclasses.dataclass(frozen=True)
class ConnectSpec:
    """Everything a driver needs to open one connection, already resolved."""

    conninfo: str
    kwargs: dict[str, Any]
    connect_timeout: float
    tcp_user_timeout: float | None
    keepalive_idle: float | None
    statement_timeout: float | None
    idle_in_transaction_timeout: float | None
    pgbouncer: bool
    #: psycopg 3 only: the user's Connection subclass, which the driver's own
    #: tracking class is composed with, and whether ``close()`` returns to the pool.
    connection_class: type[Any] | None = None
    close_returns: bool = False
    #: Sessions start with default_transaction_read_only=on (a write fails with 25006).
    read_only: bool = False


class SyncDriver(Protocol[C]):
    """A blocking driver (psycopg 3, psycopg2)."""

    name: str
    #: Called on every return: what ``return_state(conn)`` gives for an idle, clean
    #: connection; anything else sends the return down the slow path, except
    #: ``check_state``: idle, clean, but for a pending settings check
    #: (``session_state.CHECK``), which ``settings_changed`` makes inline.
    clean_state: object
    check_state: object

    def return_state(self, conn: C) -> object:
        """A cheap summary of (transaction status, session dirty, client attributes
        changed), ideally C-level."""

    def mark_clean(self, conn: C) -> None:
        """Forget that the session may be dirty (after a reset, or when resets are off)."""

    def save_client_state(self, conn: C) -> None:
        """Record ``conn``'s client-side attributes (after ``configure=``) as its baseline."""

    def restore_client_state(self, conn: C, as_connected: bool = False) -> bool:
        """Put back every client-side attribute a borrower changed (no I/O; the connection
        is idle); False if something cannot be put back exactly, so it must be discarded.

        ``as_connected``: put back the state from before ``configure=`` instead, so that
        running it again after a session reset does not stack its handlers."""

    def connect(self, spec: ConnectSpec) -> C:
        """Open one connection; raise the driver's own error on failure."""

    def status(self, conn: C) -> int:
        """``IDLE``, ``IN_TRANSACTION`` (or failed transaction) or ``BROKEN``."""

    def rollback(self, conn: C) -> None:
        """Roll back the open transaction."""

    def ping(self, conn: C, timeout: float | None = None) -> None:
        """One cheap round trip; raise if the connection is unusable or no answer came
        within ``timeout`` seconds (at most ``connect_timeout`` in any case)."""

    def close(self, conn: C) -> None:
        """Close, never raising."""

    def session_dirty(self, conn: C) -> bool:
        """True if statements run since the last reset may have changed session state,
        or a setting the server reports differs from the baseline."""

    def settings_changed(self, conn: C) -> bool:
        """True if a setting the server reports differs from the baseline (see
        ``record_baseline``); else clear a pending settings check. No I/O."""

    def record_baseline(self, conn: C) -> None:
        """Remember the settings the server reports (ParameterStatus) as they are now; a
        return that finds them different counts as dirty. No I/O."""

    def reset_session(self, conn: C) -> None:
        """Clear session state (role, search_path, temp tables, locks, LISTEN...)."""

    def transaction(self, conn: C) -> AbstractContextManager[Any]:
        """BEGIN on enter; COMMIT on clean exit, ROLLBACK on error."""

    def backend_pid(self, conn: C) -> int:
        """The server process id serving ``conn``."""

    def is_disconnect(self, exc: BaseException) -> bool:
        """True if ``exc`` says the server went away, restarted or failed over."""

    def is_refusal(self, exc: BaseException) -> bool:
        """True if ``exc``, from ``connect``, is the server's answer refusing a new
        connection (too many clients, authentication, starting up): the server is
        reachable, and connections already open may work."""

    def is_read_only_error(self, exc: BaseException) -> bool:
        """True if ``exc`` is SQLSTATE 25006 (a write in a read-only transaction)."""

    def fileno(self, conn: C) -> int:
        """The socket's file descriptor (for fork safety), or -1 if closed."""


class AsyncDriver(Protocol[C]):
    """An asyncio driver (psycopg 3 async, asyncpg); the same questions, awaited."""

    name: str
    #: See ``SyncDriver.clean_state``.
    clean_state: object
    check_state: object

    def return_state(self, conn: C) -> object:
        """A cheap summary of (transaction status, session dirty)."""

    def mark_clean(self, conn: C) -> None:
        """Forget that the session may be dirty."""

    def save_client_state(self, conn: C) -> None:
        """See ``SyncDriver.save_client_state``."""

    def restore_client_state(self, conn: C, as_connected: bool = False) -> bool:
        """See ``SyncDriver.restore_client_state``: synchronous, no I/O."""

    def connect(self, spec: ConnectSpec) -> Awaitable[C]:
        """Open one connection."""

    def status(self, conn: C) -> int:
        """``IDLE``, ``IN_TRANSACTION`` or ``BROKEN``; answered from client state."""

    def rollback(self, conn: C) -> Awaitable[None]:
        """Roll back the open transaction."""

    def ping(self, conn: C, timeout: float | None = None) -> Awaitable[None]:
        """One cheap round trip; raise if the connection is unusable or no answer came
        within ``timeout`` seconds (at most ``connect_timeout`` in any case)."""

    def close(self, conn: C) -> Awaitable[None]:
        """Close, never raising."""

    def session_dirty(self, conn: C) -> bool:
        """See ``SyncDriver.session_dirty``."""

    def settings_changed(self, conn: C) -> bool:
        """See ``SyncDriver.settings_changed``."""

    def record_baseline(self, conn: C) -> None:
        """See ``SyncDriver.record_baseline``."""

    def reset_session(self, conn: C) -> Awaitable[None]:
        """Clear session state."""

    def transaction(self, conn: C) -> AbstractAsyncContextManager[Any]:
        """BEGIN on enter; COMMIT on clean exit, ROLLBACK on error."""

    def backend_pid(self, conn: C) -> int:
        """The server process id serving ``conn``."""

    def is_disconnect(self, exc: BaseException) -> bool:
        """True if ``exc`` says the server went away, restarted or failed over."""

    def is_refusal(self, exc: BaseException) -> bool:
        """True if ``exc``, from ``connect``, is the server's answer refusing a new
        connection (too many clients, authentication, starting up): the server is
        reachable, and connections already open may work."""

    def is_read_only_error(self, exc: BaseException) -> bool:
        """True if ``exc`` is SQLSTATE 25006 (a write in a read-only transaction)."""

    def fileno(self, conn: C) -> int:
        """The socket's file descriptor (for fork safety), or -1 if closed."""

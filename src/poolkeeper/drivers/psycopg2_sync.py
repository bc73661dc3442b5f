"""psycopg2, blocking: for code that still speaks psycopg2 (extra ``[psycopg2]``)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextlib import AbstractContextManager
from typing import Any

import psycopg2
import psycopg2.extensions
import psycopg2.sql

from poolkeeper.drivers.base import BROKEN, IDLE, IN_TRANSACTION, ConnectSpec, SettingsBaseline
from poolkeeper.drivers.libpq_options import libpq_server_refused, merge_conninfo
from poolkeeper.drivers.sqlstate import READ_ONLY_SQLSTATE, REPLAY_LAG_SQL, is_server_gone_sqlstate
from poolkeeper.drivers.watchdog import watchdog
from poolkeeper.session_state import CHECK, REPORTED_PARAMETERS, RESET_SQL, touches_session

__all__ = ["PoolConnection2", "Psycopg2Driver"]

_STATUS = (IDLE, BROKEN, IN_TRANSACTION, IN_TRANSACTION, BROKEN)


def _note(conn: Any, verdict: int) -> None:
    """Raise the connection's flag to ``verdict`` (False < CHECK < True)."""
    if verdict and conn._pk_dirty is not True:
        conn._pk_dirty = verdict


def _dirty(query: Any, cursor: Any) -> int:
    """:func:`touches_session` for what psycopg2 accepts as a query: text, or a
    ``psycopg2.sql`` object, judged as the text it renders to."""
    if isinstance(query, (str, bytes)):
        return touches_session(query)
    if isinstance(query, psycopg2.sql.Composable):
        try:
            return touches_session(query.as_string(cursor))
        except Exception:
            return True  # it will fail to run as well; unknown means reset
    return True


class _TracksSession:
    """Cursor mixin: flag the connection when SQL may change session state.

    psycopg2 runs statements in C, so there is no lower layer to hook: every
    public method that sends SQL is covered here. A named cursor sends
    ``DECLARE`` (a reset when ``withhold``; else judged by its query); ``mogrify``
    sends nothing."""

    connection: Any
    name: str | None
    withhold: bool

    def execute(self, query: Any, vars: Any = None) -> Any:
        conn = self.connection
        if conn._pk_dirty is not True:
            # A named cursor sends DECLARE: WITH HOLD outlives the transaction; without
            # it, the cursor ends with its transaction and only its query counts.
            _note(conn, True if self.withhold and self.name is not None else _dirty(query, self))
        return super().execute(query, vars)  # type: ignore[misc]

    def executemany(self, query: Any, vars_list: Any) -> Any:
        conn = self.connection
        if conn._pk_dirty is not True:
            # A named cursor sends DECLARE, which always counts.
            _note(conn, True if self.name is not None else _dirty(query, self))
        return super().executemany(query, vars_list)  # type: ignore[misc]

    def callproc(self, procname: Any, *args: Any, **kwargs: Any) -> Any:
        # psycopg2 sends SELECT * FROM procname(...), procname as given.
        text = f"SELECT * FROM {procname}()" if isinstance(procname, str) else None
        _note(self.connection, _dirty(text, self))
        return super().callproc(procname, *args, **kwargs)  # type: ignore[misc]

    def copy_expert(self, sql: Any, *args: Any, **kwargs: Any) -> Any:
        _note(self.connection, _dirty(sql, self))
        return super().copy_expert(sql, *args, **kwargs)  # type: ignore[misc]

    def copy_from(self, file: Any, table: Any, *args: Any, **kwargs: Any) -> Any:
        text = f"COPY {table} FROM STDIN" if isinstance(table, str) else None
        _note(self.connection, _dirty(text, self))
        return super().copy_from(file, table, *args, **kwargs)  # type: ignore[misc]

    def copy_to(self, file: Any, table: Any, *args: Any, **kwargs: Any) -> Any:
        text = f"COPY {table} TO STDOUT" if isinstance(table, str) else None
        _note(self.connection, _dirty(text, self))
        return super().copy_to(file, table, *args, **kwargs)  # type: ignore[misc]


#: Tracking subclass per cursor class a borrower asked for (bounded by the classes
#: a program defines).
_TRACKING: dict[Any, type[Any]] = {}


def _tracking(cursor_class: Any) -> type[Any] | None:
    """The tracking subclass of ``cursor_class``, or None if it is not a class."""
    tracked = _TRACKING.get(cursor_class)
    if tracked is None:
        if not isinstance(cursor_class, type):
            return None
        if issubclass(cursor_class, _TracksSession):
            tracked = cursor_class
        else:
            name = f"Tracking{cursor_class.__name__}"
            tracked = type(name, (_TracksSession, cursor_class), {})
        _TRACKING[cursor_class] = tracked
    return tracked


_BASE_CURSOR = psycopg2.extensions.cursor


_BASE = psycopg2.extensions.connection
# psycopg2's C descriptors: the pool's own switches go through these, unflagged.
_AUTOCOMMIT = vars(_BASE)["autocommit"]
_TRANSACTION_IDLE = psycopg2.extensions.TRANSACTION_STATUS_IDLE


def _tracked(name: str) -> Any:
    """A property over psycopg2's own attribute ``name`` that flags the connection when
    set. Reads call psycopg2's C descriptor; psycopg2's C code reads the struct field."""
    base = vars(_BASE)[name]

    def set_and_flag(conn: PoolConnection2, value: Any) -> None:
        conn._pk_client_dirty = True
        base.__set__(conn, value)

    return property(base.__get__, set_and_flag, doc=base.__doc__)


class PoolConnection2(psycopg2.extensions.connection):
    """psycopg2's connection with the pool's session-dirty flag, whose every cursor
    tracks the SQL it sends, whatever ``cursor_factory`` made it; and a client-dirty
    flag raised whenever a borrower changes a client-side attribute (put back on return)."""

    #: False, CHECK or True: see poolkeeper.session_state.
    _pk_dirty: int = False
    # The reported settings (ParameterStatus) a borrower must find: see record_baseline.
    _pk_reported: tuple[str | None, ...] = ()
    # How long the pool's own statements (ping, ROLLBACK, DISCARD ALL) wait for an
    # answer: the pool's connect_timeout.
    _pk_answer_timeout = 10.0
    _pk_client_dirty = False
    # A borrower began a two-phase transaction: see tpc_begin.
    _pk_tpc = False
    # (autocommit, isolation_level, readonly, deferrable, cursor_factory, notices,
    # notifies, encoding) after configure=: what every borrower gets.
    _pk_baseline: tuple[Any, ...] = ()
    # The same, before configure= ran (put back before running it again).
    _pk_connected: tuple[Any, ...] = ()
    # Typecasters registered on this connection (psycopg2.extensions.register_type(T,
    # conn) writes these dicts directly): after configure=, and as connected.
    _pk_types: tuple[dict[Any, Any], dict[Any, Any]] = ({}, {})
    _pk_connected_types: tuple[dict[Any, Any], dict[Any, Any]] | None = None

    autocommit = _tracked("autocommit")
    isolation_level = _tracked("isolation_level")
    readonly = _tracked("readonly")
    deferrable = _tracked("deferrable")
    cursor_factory = _tracked("cursor_factory")
    notices = _tracked("notices")
    notifies = _tracked("notifies")

    def set_session(self, *args: Any, **kwargs: Any) -> None:
        """psycopg2's ``set_session``; what it changes is put back on return."""
        self._pk_client_dirty = True
        super().set_session(*args, **kwargs)

    def set_isolation_level(self, level: Any) -> None:
        """psycopg2's ``set_isolation_level``; put back on return."""
        self._pk_client_dirty = True
        super().set_isolation_level(level)

    def reset(self) -> None:
        """psycopg2's ``reset``: its ``RESET ALL`` (sent beneath the cursors) also
        undoes what ``configure=`` set, so the session is reset on return, and
        ``configure=`` runs again."""
        self._pk_dirty = True
        super().reset()

    def tpc_begin(self, xid: Any) -> None:
        """psycopg2's ``tpc_begin``; the connection is discarded on return (psycopg2
        keeps the xid, refusing commit() and rollback(), until the transaction ends
        through its own tpc_* methods)."""
        self._pk_client_dirty = self._pk_tpc = True
        super().tpc_begin(xid)

    def set_client_encoding(self, encoding: str) -> None:
        """psycopg2's ``set_client_encoding``: a ``SET`` on the server (reset on return)
        and psycopg2's own codec (put back on return)."""
        self._pk_client_dirty = True
        self._pk_dirty = True
        super().set_client_encoding(encoding)

    def cursor(  # type: ignore[override]
        self,
        name: str | None = None,
        cursor_factory: Any = None,
        withhold: bool = False,
        scrollable: bool | None = None,
    ) -> Any:
        """psycopg2's ``cursor()``, with the factory (the argument, else
        ``self.cursor_factory``) swapped for its tracking subclass. A factory that
        is not a class cannot be tracked: the connection counts as dirty."""
        factory: Any = cursor_factory or getattr(self, "cursor_factory", None) or _BASE_CURSOR
        tracked: Any = _tracking(factory)
        if tracked is None:
            self._pk_dirty = True
            tracked = factory
        return super().cursor(
            name, cursor_factory=tracked, withhold=withhold, scrollable=scrollable
        )


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


def _snapshot(conn: PoolConnection2) -> tuple[Any, ...]:
    return (
        conn.autocommit,
        conn.isolation_level,
        conn.readonly,
        conn.deferrable,
        conn.cursor_factory,
        conn.notices,
        conn.notifies,
        conn.encoding,
    )


def _empty(unread: Any) -> bool:
    """Empty a notices or notifies container; False if it cannot be (psycopg2 takes any
    object with ``append``, and configure= may have installed one)."""
    if unread:
        try:
            unread.clear()
        except AttributeError:
            return False
    return True


def _return_state(conn: PoolConnection2) -> object:
    """(libpq transaction status, session dirty), or None when a client-side attribute
    changed or notices or notifications arrived for the borrower (never "clean")."""
    # _types_changed, inline: this runs on every return, and a call costs more than
    # the two compares (of empty dicts, on nearly every connection).
    string_types, binary_types = conn._pk_types
    if (
        conn._pk_client_dirty
        or conn.notices
        or conn.notifies
        or conn.string_types != string_types
        or conn.binary_types != binary_types
    ):
        return None
    return (conn.get_transaction_status(), conn._pk_dirty)


def _types_changed(conn: PoolConnection2) -> bool:
    """Did a borrower register a typecaster on the connection (two small dict compares)?"""
    string_types, binary_types = conn._pk_types
    return bool(conn.string_types != string_types or conn.binary_types != binary_types)


def _put_back_types(conn: PoolConnection2, types: tuple[dict[Any, Any], dict[Any, Any]]) -> None:
    for live, saved in zip((conn.string_types, conn.binary_types), types, strict=True):
        if live != saved:
            live.clear()
            live.update(saved)


class Psycopg2Driver(SettingsBaseline):
    """Sync psycopg2 behind the pool's driver interface."""

    name = "psycopg2"
    clean_state = (_TRANSACTION_IDLE, False)
    check_state = (_TRANSACTION_IDLE, CHECK)
    return_state = staticmethod(_return_state)

    def save_client_state(self, conn: PoolConnection2) -> None:
        """Record the client-side attributes (the first call, from ``connect``, also as
        the connection came); notices and notifications so far are no borrower's."""
        _empty(conn.notices)
        _empty(conn.notifies)
        conn._pk_baseline = _snapshot(conn)
        # No typecaster of its own (nearly every connection): the class's shared pair.
        string_types, binary_types = conn.string_types, conn.binary_types
        if string_types or binary_types:
            conn._pk_types = (dict(string_types), dict(binary_types))
        else:
            conn._pk_types = PoolConnection2._pk_types
        if not conn._pk_connected:
            conn._pk_connected = conn._pk_baseline
            conn._pk_connected_types = conn._pk_types
        conn._pk_client_dirty = False

    def restore_client_state(self, conn: PoolConnection2, as_connected: bool = False) -> bool:
        """Put back what a borrower changed (``conn`` is rolled back), and empty the
        notices and notifications the borrower left unread; False if psycopg2 refuses."""
        if not (
            conn._pk_client_dirty
            or conn.notices
            or conn.notifies
            or as_connected
            or _types_changed(conn)
        ):
            return True
        if conn._pk_tpc or conn.closed or conn.get_transaction_status() != _TRANSACTION_IDLE:
            return False
        autocommit, isolation, readonly, deferrable, cursors, notices, notifies, encoding = (
            conn._pk_connected if as_connected else conn._pk_baseline
        )
        if conn.encoding != encoding:
            # One round trip: a SET, which the session reset would undo on the server
            # but not in psycopg2's codec.
            with _answer_within(conn, conn._pk_answer_timeout, "SET client_encoding"):
                _BASE.set_client_encoding(conn, encoding)
        connected_types = conn._pk_connected_types
        _put_back_types(
            conn,
            connected_types if as_connected and connected_types is not None else conn._pk_types,
        )
        # Set, not compared: an equal but different notices list is still A's object.
        _AUTOCOMMIT.__set__(conn, autocommit)
        for name, value in (
            ("isolation_level", isolation),
            ("readonly", readonly),
            ("deferrable", deferrable),
            ("cursor_factory", cursors),
            ("notices", notices),
            ("notifies", notifies),
        ):
            vars(_BASE)[name].__set__(conn, value)
        if not (_empty(conn.notices) and _empty(conn.notifies)):
            return False
        conn._pk_client_dirty = False
        return True

    def mark_clean(self, conn: PoolConnection2) -> None:
        """Forget the session-dirty flag."""
        conn._pk_dirty = False

    def connect(self, spec: ConnectSpec) -> PoolConnection2:
        """Open a connection whose cursors (any ``cursor_factory``) track session changes."""
        params = merge_conninfo(spec)
        # An attribute in psycopg2, not a connect() argument; accepted as psycopg 3 does.
        autocommit = bool(params.pop("autocommit", False))
        conn: PoolConnection2 = psycopg2.connect(connection_factory=PoolConnection2, **params)
        conn._pk_answer_timeout = spec.connect_timeout
        if autocommit:
            conn.autocommit = True
        self.record_baseline(conn)
        self.save_client_state(conn)
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
                _AUTOCOMMIT.__set__(conn, True)
                try:
                    with conn.cursor() as cur:
                        cur.execute("ROLLBACK")
                finally:
                    if not conn.closed:
                        _AUTOCOMMIT.__set__(conn, autocommit)

    def replay_lag(self, conn: PoolConnection2) -> float | None:
        """Seconds this standby's replay is behind (0 on a primary or a caught-up
        standby), None when the server cannot tell; one round trip."""
        with conn.cursor() as cur:
            cur.execute(REPLAY_LAG_SQL)
            row = cur.fetchone()
        return None if row is None or row[0] is None else float(row[0])

    def ping(self, conn: PoolConnection2, timeout: float | None = None) -> None:
        """``SELECT 1`` in autocommit, so the ping opens no transaction; waits at most
        ``connect_timeout`` (or ``timeout``, if shorter) for the answer."""
        limit = conn._pk_answer_timeout
        if timeout is not None and timeout < limit:
            limit = max(timeout, 0.0)
        autocommit = conn.autocommit
        _AUTOCOMMIT.__set__(conn, True)
        try:
            with _answer_within(conn, limit, "ping"), conn.cursor() as cur:
                cur.execute("SELECT 1")
        finally:
            if not conn.closed:
                _AUTOCOMMIT.__set__(conn, autocommit)

    def close(self, conn: PoolConnection2) -> None:
        """Close without raising."""
        with contextlib.suppress(Exception):
            conn.close()

    def read_settings(self, conn: PoolConnection2) -> tuple[str | None, ...]:
        """The settings the server reported (ParameterStatus), as libpq holds them."""
        return tuple(map(conn.get_parameter_status, REPORTED_PARAMETERS))

    def reset_session(self, conn: PoolConnection2) -> None:
        """DISCARD ALL outside a transaction, waiting at most ``connect_timeout``."""
        autocommit = conn.autocommit
        _AUTOCOMMIT.__set__(conn, True)
        try:
            with _answer_within(conn, conn._pk_answer_timeout, RESET_SQL), conn.cursor() as cur:
                cur.execute(RESET_SQL)
        finally:
            if not conn.closed:
                _AUTOCOMMIT.__set__(conn, autocommit)
        conn._pk_dirty = False
        self.record_baseline(conn)

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

    def is_standby(self, conn: PoolConnection2) -> bool:
        """True if the server reports it is a hot standby (PostgreSQL 14+ says so
        unasked, in ``in_hot_standby``): no round trip."""
        return bool(conn.get_parameter_status("in_hot_standby") == "on")

    def fileno(self, conn: PoolConnection2) -> int:
        """The socket, or -1 once closed."""
        if conn.closed:
            return -1
        return int(conn.fileno())

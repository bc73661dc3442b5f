"""What the sync and asyncio psycopg 3 drivers share: connect parameters, every
question about a connection that libpq answers from memory, the ping, and the guards
that keep psycopg's waits from lasting forever on a server that stopped answering."""

from __future__ import annotations

import contextlib
import operator
import time
from collections.abc import Callable, Generator, Iterator
from typing import Any

import psycopg
import psycopg.client_cursor
from psycopg import pq
from psycopg._connection_base import BaseConnection
from psycopg._preparing import Prepare

try:
    from psycopg._cursor_base import BaseCursor
except ImportError:  # psycopg before 3.2 kept it beside Cursor
    from psycopg.cursor import BaseCursor  # type: ignore[attr-defined]

from poolkeeper.drivers.base import BROKEN, IDLE, IN_TRANSACTION, ConnectSpec, SettingsBaseline
from poolkeeper.drivers.libpq_options import libpq_server_refused, merge_conninfo
from poolkeeper.drivers.psycopg_attrs import restore_client_state, save_client_state
from poolkeeper.drivers.sqlstate import READ_ONLY_SQLSTATE, is_server_gone_sqlstate
from poolkeeper.errors import ConfigurationError
from poolkeeper.policy import silence_limit
from poolkeeper.session_state import CHECK, KNOWN_VERDICTS, REPORTED_PARAMETERS, touches_session

__all__ = [
    "PsycopgState",
    "answer_within",
    "check_ping_answer",
    "connect_params",
    "forget_prepared",
    "ping_limit",
    "ping_timeout_error",
    "send_ping",
    "silence_guard",
    "silence_limit",
    "track_statements",
]

# pq.TransactionStatus as plain ints, indexed by the status libpq reports.
_STATUS_BY_PQ = (
    IDLE,  # IDLE
    BROKEN,  # ACTIVE: a command still running on return (or cancelled) cannot be reused
    IN_TRANSACTION,  # INTRANS
    IN_TRANSACTION,  # INERROR
    BROKEN,  # UNKNOWN: closed or lost
)


_composed: dict[tuple[type[Any], type[Any] | None, type[Any] | None], type[Any]] = {}


def compose_class(base: type[Any], user: type[Any] | None, close_returns: type[Any] | None) -> Any:
    """The class a pool opens its connections with: the driver's tracking ``base``
    before the user's ``connection_class`` (so both apply), and before those, when
    ``close_returns`` is wanted, the mixin whose ``close()`` returns a lent
    connection to its pool. Made once per combination."""
    key = (base, user, close_returns)
    cls = _composed.get(key)
    if cls is None:
        bases = tuple(c for c in (close_returns, base, user) if c is not None)
        name = user.__name__ if user is not None else base.__name__
        cls = base if len(bases) == 1 else type(name, bases, {"__module__": base.__module__})
        _composed[key] = cls
    return cls


def connect_params(spec: ConnectSpec) -> dict[str, Any]:
    """libpq keywords for ``connect()``, with PgBouncer's needs applied."""
    params = merge_conninfo(spec)
    if spec.pgbouncer:
        # Transaction-mode PgBouncer moves us between server sessions: no server-side
        # prepared statements, or the next transaction may not find them.
        params.setdefault("prepare_threshold", None)
    return params


def _tracked_execute_send(base: Callable[..., None]) -> Callable[..., None]:
    def _execute_send(self: Any, query: Any, *args: Any, **kwargs: Any) -> None:
        # Pool connections carry _pk_dirty (False, CHECK or True); any other psycopg
        # connection reads the class default True (see track_statements).
        conn = self._conn
        if conn._pk_dirty is not True:
            text = query.query  # the bytes about to go to the server
            try:
                verdict = KNOWN_VERDICTS[text]
            except (KeyError, TypeError):
                verdict = touches_session(text)
            if verdict:
                conn._pk_dirty = verdict
        base(self, query, *args, **kwargs)

    _execute_send._pk_tracks = True  # type: ignore[attr-defined]
    return _execute_send


#: What psycopg's own _get_prepared reads (3.2 and 3.3): ``self._conn._prepared.get``.
_GET_PREPARED_NAMES = ("_conn", "_prepared", "get")


def _judge_prepared(conn: Any, pgq: Any) -> None:
    # Only the fallback wrapper calls this, a call per statement already: the cache
    # lookup the inline hooks make themselves is touches_session's own first step.
    if conn._pk_dirty is not True:
        verdict = touches_session(pgq.query)
        if verdict:
            conn._pk_dirty = verdict


def _tracked_get_prepared(base: Callable[..., Any]) -> Callable[..., Any]:
    # Every execute() and executemany() asks _get_prepared whether its statement is
    # prepared; one that is (or is about to be) is sent by name, never through
    # _execute_send, so it is judged here. Judged on each run, not once when prepared:
    # a CHECK return that finds nothing changed keeps the statement, and the next
    # borrower's arguments may make it change the session.
    code = getattr(base, "__code__", None)
    if code is None or code.co_names != _GET_PREPARED_NAMES:
        # Not the one line this replaces: wrapped instead (one call more per statement).
        def _wrapped_get_prepared(self: Any, pgq: Any, prepare: bool | None = None) -> Any:
            answer = base(self, pgq, prepare)
            if answer[0] is not _NOT_PREPARED:
                _judge_prepared(self._conn, pgq)
            return answer

        _wrapped_get_prepared._pk_tracks = True  # type: ignore[attr-defined]
        return _wrapped_get_prepared

    def _get_prepared(self: Any, pgq: Any, prepare: bool | None = None) -> Any:
        # psycopg's own line, then the check inline: no call beyond what psycopg makes.
        conn = self._conn
        answer = conn._prepared.get(pgq, prepare)
        if answer[0] is not _NOT_PREPARED and conn._pk_dirty is not True:
            text = pgq.query
            try:
                verdict = KNOWN_VERDICTS[text]
            except (KeyError, TypeError):
                verdict = touches_session(text)
            if verdict:
                conn._pk_dirty = verdict
        return answer

    _get_prepared._pk_tracks = True  # type: ignore[attr-defined]
    return _get_prepared


_NOT_PREPARED = Prepare.NO

#: The cursor classes whose methods send a statement's text to the server: every
#: psycopg cursor (Cursor, ClientCursor, RawCursor, ServerCursor and their async
#: twins, and any subclass) inherits these two layers. Only BaseCursor's
#: _get_prepared is replaced: ClientCursorMixin's never prepares, and must stay so.
_SENDERS = (BaseCursor, psycopg.client_cursor.ClientCursorMixin)
_REPLACED_ONLY_ON_BASE = "_get_prepared"


def track_statements() -> None:
    """Judge every statement a psycopg cursor sends on a pool connection.

    psycopg has no connection-level method that sees a query's text: each cursor
    class sends it itself, through ``_execute_send`` when it sends the text
    (execute, executemany, stream, copy, a named cursor's DECLARE, pipelines), or by
    name once psycopg has prepared it (``_send_prepare``, then
    ``_send_query_prepared`` on every later run: after ``prepare_threshold`` runs,
    at once with ``prepare=True`` or in executemany). Every execute() and
    executemany() first asks ``_get_prepared`` which way its statement goes, so
    that method, replaced rather than wrapped (no extra call), judges the prepared
    way, and ``_execute_send`` (wrapped) the other. Both are hooked once per process,
    on the classes that define them, so every cursor class reaches the check whether
    the borrower made it through ``conn.cursor()``, ``conn.execute()`` or directly
    (``psycopg.ClientCursor(conn)``, which never prepares); connections that are not
    the pool's are left to psycopg after one attribute read: every psycopg connection
    gets the class default ``_pk_dirty = True`` (tracking off), which the pool's
    connection classes override. A plain attribute read, not ``getattr`` with a
    default: the call cost about 450 instructions per statement. Idempotent.
    """
    hooks = (("_execute_send", _tracked_execute_send), ("_get_prepared", _tracked_get_prepared))
    if not all(callable(getattr(BaseCursor, name, None)) for name, _ in hooks):
        # Statements would go untracked, and session state would leak unseen.
        raise ConfigurationError(
            f"driver: psycopg {psycopg.__version__} no longer sends statements where "
            "poolkeeper tracks them; install the psycopg version poolkeeper supports "
            "(pip install -U poolkeeper 'psycopg>=3.2')"
        )
    BaseConnection._pk_dirty = True  # type: ignore[attr-defined]
    for cls in _SENDERS:
        for name, wrap in hooks:
            base = cls.__dict__.get(name)
            if cls is not BaseCursor and name == _REPLACED_ONLY_ON_BASE:
                continue
            if base is not None and not getattr(base, "_pk_tracks", False):
                setattr(cls, name, wrap(base))


track_statements()

# As bytes, the key libpq's PQparameterStatus takes.
_REPORTED = tuple(name.encode() for name in REPORTED_PARAMETERS)


def forget_prepared(conn: Any) -> None:
    """Forget the statements psycopg prepared on ``conn``, after a DISCARD ALL that
    deallocated them on the server.

    psycopg notices a DISCARD ALL only while the statement is new to its cache (the
    first time it runs on a connection): from the second reset on, it would go on
    using statement names the server no longer has, and the next borrower's query
    would fail with "prepared statement does not exist"."""
    manager = conn._prepared
    manager._names.clear()
    manager._counts.clear()
    # Deallocations still queued name statements the server no longer has.
    manager._to_flush.clear()


class PsycopgState(SettingsBaseline):
    """The I/O-free half of a psycopg 3 driver (connections carry ``_pk_dirty`` and
    ``_pk_client_dirty``)."""

    name = "psycopg"
    # attrgetter runs in C: the whole per-return inspection costs one call.
    # _num_transactions: a transaction() block the borrower left entered (its end sent
    # as SQL) leaves the connection idle, but psycopg refuses every later commit().
    # _pipeline: a pipeline() block left entered leaves it idle in pipeline mode (not
    # flagged by a store: executemany() enters and leaves one on every call).
    return_state = staticmethod(
        operator.attrgetter(
            "pgconn.transaction_status",
            "_pk_dirty",
            "_pk_client_dirty",
            "_num_transactions",
            "_pipeline",
        )
    )
    clean_state = (int(pq.TransactionStatus.IDLE), False, False, 0, None)
    check_state = (int(pq.TransactionStatus.IDLE), CHECK, False, 0, None)
    save_client_state = staticmethod(save_client_state)
    restore_client_state = staticmethod(restore_client_state)

    def status(self, conn: Any) -> int:
        """Map libpq's transaction status to IDLE / IN_TRANSACTION / BROKEN."""
        return _STATUS_BY_PQ[conn.pgconn.transaction_status]

    def read_settings(self, conn: Any) -> tuple[bytes | None, ...]:
        """The settings the server reported (ParameterStatus), as libpq holds them."""
        return tuple(map(conn.pgconn.parameter_status, _REPORTED))

    def mark_clean(self, conn: Any) -> None:
        """Forget the session-dirty flag."""
        conn._pk_dirty = False

    def backend_pid(self, conn: Any) -> int:
        """The backend's process id."""
        return int(conn.info.backend_pid)

    def is_disconnect(self, exc: BaseException) -> bool:
        """Connection lost, or a SQLSTATE that means the server restarted or went away."""
        if not isinstance(exc, psycopg.Error):
            return False
        if isinstance(exc, psycopg.OperationalError) and exc.sqlstate is None:
            return True
        return is_server_gone_sqlstate(exc.sqlstate)

    def is_refusal(self, exc: BaseException) -> bool:
        """The server answered the connection attempt with an error."""
        if not isinstance(exc, psycopg.Error):
            return False
        return exc.sqlstate is not None or libpq_server_refused(str(exc))

    def is_read_only_error(self, exc: BaseException) -> bool:
        """SQLSTATE 25006: a write in a read-only transaction (or on a standby)."""
        return isinstance(exc, psycopg.Error) and exc.sqlstate == READ_ONLY_SQLSTATE

    def is_standby(self, conn: Any) -> bool:
        """True if the server reports it is a hot standby (PostgreSQL 14+ says so
        unasked, in ``in_hot_standby``): no round trip."""
        return bool(conn.info.parameter_status("in_hot_standby") == "on")

    def fileno(self, conn: Any) -> int:
        """The libpq socket, or -1 once closed."""
        try:
            return int(conn.pgconn.socket)
        except psycopg.OperationalError:
            return -1


def silence_guard(gen: Generator[Any, Any, Any], conn: Any) -> Any:
    """Wrap a psycopg wait generator; raise once the server is silent past the limit.

    ``conn`` is a sync or async psycopg connection carrying ``_pk_silence_limit``
    and ``_pk_dirty``; psycopg's waits (sync and async alike) send the generator
    "nothing ready" every 0.1 s, which is when the silence is measured."""
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
            # A session that changed its own settings may have raised statement_timeout
            # (a function's set_config() is not seen: see docs/reliability.md).
            and conn._pk_dirty is not True
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


def _deadline_guard(
    gen: Generator[Any, Any, Any], deadline: float, seconds: float, what: str
) -> Any:
    """Wrap a psycopg wait generator; raise once ``deadline`` (monotonic) has passed
    with the answer still missing (checked when psycopg's wait says "nothing ready")."""
    try:
        state = next(gen)
    except StopIteration as stop:
        return stop.value
    while True:
        ready = yield state
        if not ready and time.monotonic() > deadline:
            raise psycopg.OperationalError(
                f"no answer from the server within {seconds:g}s (connect_timeout) to the "
                f"pool's {what}; the server or the network path to it is not responding, "
                "so the connection is discarded"
            )
        try:
            state = gen.send(ready)
        except StopIteration as stop:
            return stop.value


@contextlib.contextmanager
def answer_within(conn: Any, seconds: float, what: str) -> Iterator[None]:
    """Inside the block, every wait psycopg does on ``conn`` (sync or async) gives up
    ``seconds`` after the block began: for the statements the pool itself sends on
    return (ROLLBACK, DISCARD ALL), which must not hang on a server that stopped
    answering when no ``statement_timeout`` guards them.

    psycopg runs each statement through ``conn.wait``; an instance attribute shadows
    that method for the block only, so connections pay nothing for it elsewhere.
    """
    deadline = time.monotonic() + seconds
    base_wait = conn.wait
    # An enclosing block's, if any. Not vars(conn).get(): asking CPython (3.11+) for an
    # instance's __dict__ makes it give up the inline attribute layout, and every later
    # attribute read on the connection (thousands of instructions per query) is slower.
    shadowed = base_wait if getattr(base_wait, "_pk_answer_guard", False) else None

    def wait(gen: Generator[Any, Any, Any], *args: Any, **kwargs: Any) -> Any:
        # For an AsyncConnection this returns the coroutine psycopg then awaits.
        return base_wait(_deadline_guard(gen, deadline, seconds, what), *args, **kwargs)

    wait._pk_answer_guard = True  # type: ignore[attr-defined]
    conn.wait = wait
    try:
        yield
    finally:
        if shadowed is None:
            del conn.wait
        else:
            conn.wait = shadowed


def send_ping(conn: Any) -> pq.abc.PGconn:
    """Start the pool's ping on a sync or async psycopg connection: an empty query sent
    straight through libpq (one round trip, no transaction), not through psycopg's own
    execute and wait. Returns the libpq connection whose answer the caller awaits."""
    if conn.closed:
        raise psycopg.OperationalError("the connection is closed")
    pgconn: pq.abc.PGconn = conn.pgconn
    pgconn.send_query(b"")
    return pgconn


def ping_timeout_error(seconds: float) -> psycopg.OperationalError:
    """The ping heard nothing within its time (``connect_timeout``, or what was left
    of a borrower's timeout)."""
    return psycopg.OperationalError(f"no answer from the server to a ping within {seconds:.3g}s")


def ping_limit(conn: Any, timeout: float | None) -> float:
    """How long a ping waits: ``connect_timeout``, or less if the caller has less left."""
    limit: float = conn._pk_answer_timeout
    return limit if timeout is None or timeout >= limit else max(timeout, 0.0)


def check_ping_answer(pgconn: pq.abc.PGconn, results: list[pq.abc.PGresult]) -> None:
    """Raise unless the ping's results end with the empty query's answer."""
    if not results or results[-1].status != pq.ExecStatus.EMPTY_QUERY:
        message = pgconn.get_error_message().strip()
        raise psycopg.OperationalError(message or "the server did not answer the ping")

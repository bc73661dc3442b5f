"""What the sync and asyncio psycopg 3 drivers share: connect parameters, every
question about a connection that libpq answers from memory, the ping, and the guards
that keep psycopg's waits from lasting forever on a server that stopped answering."""

from __future__ import annotations

import contextlib
import operator
import time
from collections.abc import Generator, Iterator
from typing import Any

import psycopg
from psycopg import pq

from poolkeeper.drivers.base import BROKEN, IDLE, IN_TRANSACTION, ConnectSpec
from poolkeeper.drivers.libpq_options import libpq_server_refused, merge_conninfo
from poolkeeper.drivers.sqlstate import READ_ONLY_SQLSTATE, is_server_gone_sqlstate
from poolkeeper.policy import silence_limit

__all__ = [
    "PsycopgState",
    "answer_within",
    "check_ping_answer",
    "connect_params",
    "ping_limit",
    "ping_timeout_error",
    "send_ping",
    "silence_guard",
    "silence_limit",
]

# pq.TransactionStatus as plain ints, indexed by the status libpq reports.
_STATUS_BY_PQ = (
    IDLE,  # IDLE
    BROKEN,  # ACTIVE: a command still running on return (or cancelled) cannot be reused
    IN_TRANSACTION,  # INTRANS
    IN_TRANSACTION,  # INERROR
    BROKEN,  # UNKNOWN: closed or lost
)


def connect_params(spec: ConnectSpec) -> dict[str, Any]:
    """libpq keywords for ``connect()``, with PgBouncer's needs applied."""
    params = merge_conninfo(spec)
    if spec.pgbouncer:
        # Transaction-mode PgBouncer moves us between server sessions: no server-side
        # prepared statements, or the next transaction may not find them.
        params.setdefault("prepare_threshold", None)
    return params


class PsycopgState:
    """The I/O-free half of a psycopg 3 driver (connections carry ``_pk_dirty``)."""

    name = "psycopg"
    # attrgetter runs in C: the whole per-return inspection costs one call.
    return_state = staticmethod(operator.attrgetter("pgconn.transaction_status", "_pk_dirty"))
    clean_state = (int(pq.TransactionStatus.IDLE), False)

    def status(self, conn: Any) -> int:
        """Map libpq's transaction status to IDLE / IN_TRANSACTION / BROKEN."""
        return _STATUS_BY_PQ[conn.pgconn.transaction_status]

    def session_dirty(self, conn: Any) -> bool:
        """Whether a statement since the last reset may have changed session state."""
        return bool(conn._pk_dirty)

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
    shadowed = vars(conn).get("wait")  # an enclosing block's, if any

    def wait(gen: Generator[Any, Any, Any], *args: Any, **kwargs: Any) -> Any:
        # For an AsyncConnection this returns the coroutine psycopg then awaits.
        return base_wait(_deadline_guard(gen, deadline, seconds, what), *args, **kwargs)

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

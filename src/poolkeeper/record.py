"""One small object per pooled connection: its life in timestamps."""

from __future__ import annotations

from typing import Any

__all__ = ["ConnectionRecord"]


class ConnectionRecord:
    """What the pool knows about one connection.

    ``last_used`` is when a borrower last returned it (``max_idle`` counts from
    there); ``last_checked`` is when it was opened or last pinged (keepalives count
    from the later of the two, a return being as good as a ping); ``check_due`` is
    when ``check_after`` runs out; ``expires_at`` is
    its jittered end of life; ``generation`` is the pool's generation when it was
    opened, so that ``drain()`` can retire everything older.
    """

    __slots__ = (
        "backend_pid",
        "borrow_stack",
        "borrowed_at",
        "check_due",
        "conn",
        "connect_s",
        "expires_at",
        "generation",
        "last_checked",
        "last_used",
        "leak_reported",
        "seen_astray_at",
        "usage",
        "waited",
    )

    def __init__(
        self,
        conn: Any,
        *,
        now: float,
        expires_at: float,
        generation: int,
        backend_pid: int,
        check_after: float = 0.0,
    ) -> None:
        self.conn = conn
        self.last_used = now
        self.last_checked = now
        # When it must next be checked before lending: check_after past its last
        # return or ping, or -inf once something suggests it may be dead.
        self.check_due = now + check_after
        self.expires_at = expires_at
        self.generation = generation
        self.backend_pid = backend_pid
        self.borrowed_at = 0.0
        self.borrow_stack: str | None = None
        self.leak_reported = False
        # When housekeeping first found it neither idle nor lent (None: it was not).
        self.seen_astray_at: float | None = None
        # Seconds: lent in all (counted on return), waited for by its borrowers, and
        # taken to open it. Each is written only by whoever holds the record, so the
        # pool's totals need no lock on the borrow path (PoolCore._usage_and_waits).
        self.usage = 0.0
        self.waited = 0.0
        self.connect_s = 0.0

    def __repr__(self) -> str:
        return f"<ConnectionRecord backend_pid={self.backend_pid} generation={self.generation}>"

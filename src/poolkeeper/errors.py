"""Every error poolkeeper raises; each message says what happened and what to change.

Messages carry a short code (``pk-…``) that docs/errors.md explains at length,
the way SQLAlchemy's errors point at their explanation pages.
"""

from __future__ import annotations

__all__ = [
    "ConfigurationError",
    "ConnectionFailed",
    "NoReplicaAvailable",
    "PoolClosed",
    "PoolError",
    "PoolTimeout",
    "TooManyWaiters",
    "WrongEventLoop",
]

_DOCS = "see docs/errors.md#{code}"


class PoolError(Exception):
    """Base class of every error the library raises."""

    code = "pk-pool"

    def __init__(self, message: str) -> None:
        super().__init__(f"{message} ({_DOCS.format(code=self.code)})")


class PoolTimeout(PoolError):
    """No connection became free within the timeout."""

    code = "pk-timeout"


class PoolClosed(PoolError):
    """The pool was closed."""

    code = "pk-closed"


class TooManyWaiters(PoolError):
    """``max_waiting`` callers are already queued for a connection."""

    code = "pk-waiters"


class ConfigurationError(PoolError, ValueError):
    """Bad or conflicting settings; the message names the setting."""

    code = "pk-config"


class ConnectionFailed(PoolError):
    """The server could not be reached or refused us.

    ``detail`` holds the driver's message, password redacted.
    """

    code = "pk-connect"

    def __init__(self, message: str, detail: str = "") -> None:
        super().__init__(message)
        self.detail = detail


class WrongEventLoop(PoolError):
    """An ``AsyncPool`` was used from an event loop other than the one it was opened in."""

    code = "pk-loop"


class NoReplicaAvailable(PoolError):
    """A ``readonly=True`` borrow found no usable replica (each down or lagging past
    ``max_replica_lag``) and ``replica_fallback="fail"`` forbids reading the primary."""

    code = "pk-replica"


class ConfigureFailed(Exception):
    """``configure=`` raised on a new connection, which was closed.

    Internal: it never reaches a caller. The pool counts it as a failed connection
    attempt, and callers see it as the detail of :class:`ConnectionFailed` (which
    says what to do), so it is not a ``PoolError`` with a message of its own.
    """

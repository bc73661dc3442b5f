"""A deadline for blocking calls that take none: psycopg2's waits live in its C code,
so the only way to end one early is to shut the connection's socket down under it.

One daemon thread per process keeps every armed deadline; a call that finishes in
time disarms its own, and one that does not finds its socket shut down and fails
at once with the driver's "connection lost" error (the connection is then
discarded by the pool, as for any lost connection).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import socket
import threading
import time
from collections.abc import Iterator

__all__ = ["Expired", "Watchdog", "watchdog"]

_MAX_SLEEP = min(threading.TIMEOUT_MAX, 3600.0)
_NEVER = float("inf")


class Expired:
    """Set by the watchdog when it shut the socket down: the call ran out of time."""

    __slots__ = ("fired",)

    def __init__(self) -> None:
        self.fired = False


class Watchdog:
    """Shut a socket down once its deadline passes (thread-safe, one thread)."""

    def __init__(self) -> None:
        self._setup()
        os.register_at_fork(after_in_child=self._setup)

    def _setup(self) -> None:
        # Also in a forked child: the parent's thread and lock state are not ours.
        self._cond = threading.Condition(threading.Lock())
        self._armed: dict[int, tuple[float, int, Expired]] = {}
        self._tokens = itertools.count()
        self._thread: threading.Thread | None = None
        self._wake_at = _NEVER

    @contextlib.contextmanager
    def limit(self, fileno: int, seconds: float) -> Iterator[Expired]:
        """Inside the block, the socket ``fileno`` is shut down after ``seconds``."""
        expired = Expired()
        deadline = time.monotonic() + seconds
        token = next(self._tokens)
        with self._cond:
            self._armed[token] = (deadline, fileno, expired)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="poolkeeper-watchdog", daemon=True
                )
                self._thread.start()
            if deadline < self._wake_at:
                self._cond.notify()
        try:
            yield expired
        finally:
            # Under the lock: once out of here the socket is never touched again.
            with self._cond:
                self._armed.pop(token, None)

    def _run(self) -> None:
        with self._cond:
            while True:
                try:
                    self._fire_overdue()
                except Exception:  # pragma: no cover - this thread must outlive any error
                    self._wake_at = time.monotonic() + 0.1
                self._cond.wait(None if self._wake_at == _NEVER else self._sleep())

    def _sleep(self) -> float:
        return max(0.0, min(self._wake_at - time.monotonic(), _MAX_SLEEP))

    def _fire_overdue(self) -> None:
        now = time.monotonic()
        earliest = float("inf")
        for token, (deadline, fileno, expired) in list(self._armed.items()):
            if deadline <= now:
                del self._armed[token]
                expired.fired = True
                _shut_down(fileno)
            elif deadline < earliest:
                earliest = deadline
        self._wake_at = earliest


def _shut_down(fileno: int) -> None:
    """Shut the socket behind ``fileno`` down; the blocked call sees the connection end."""
    with contextlib.suppress(OSError):
        sock = socket.socket(fileno=os.dup(fileno))
        try:
            sock.shutdown(socket.SHUT_RDWR)
        finally:
            sock.close()


watchdog = Watchdog()

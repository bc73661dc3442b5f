"""Opt-in graceful shutdown: close every ``Database`` singleton on SIGTERM and at exit.

Containers are stopped with SIGTERM, and Python's default is to die on it at
once, so the server sees every pooled connection vanish mid-protocol and logs
"unexpected EOF" for each. :func:`install_shutdown_hook` closes the shared pools
first (waiting up to ``timeout`` for borrowed connections), then lets the signal
do what it would have done: call the previous handler, or end the process with
the conventional SIGTERM status.

Nothing is installed on import: a library must not take over a process's signals
unless asked.
"""

from __future__ import annotations

import atexit
import logging
import os
import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any, TypeAlias

__all__ = ["install_shutdown_hook", "uninstall_shutdown_hook"]

_log = logging.getLogger("poolkeeper.shutdown")

_Handler: TypeAlias = "Callable[[int, FrameType | None], Any] | int | signal.Handlers | None"

_lock = threading.Lock()
_installed: dict[int, _Handler] = {}
_atexit_timeout: float | None = None


def _close_all(timeout: float, why: str) -> None:
    """Close every singleton, bounded by ``timeout`` plus a little, whatever holds locks."""
    # Run on a helper thread: a signal handler runs on the main thread between two
    # bytecodes, possibly while that thread holds a pool's lock; joining with a
    # deadline turns that case into a bounded wait instead of a deadlock.
    from poolkeeper.database import Database  # noqa: PLC0415 - avoid an import cycle

    count = len(Database._instances)
    if not count:
        return
    _log.info("poolkeeper: closing %d shared pool(s) (%s)", count, why)
    worker = threading.Thread(
        target=Database.reset_all,
        kwargs={"timeout": timeout},
        name="poolkeeper-shutdown",
        daemon=True,
    )
    worker.start()
    worker.join(timeout + 1.0)
    if worker.is_alive():
        _log.warning("poolkeeper: shared pools not closed within %gs; exiting anyway", timeout)


def _at_exit() -> None:
    if _atexit_timeout is not None:
        _close_all(_atexit_timeout, "interpreter exit")


def _make_handler(signum: int, previous: _Handler, timeout: float) -> Callable[..., None]:
    def handler(received: int, frame: FrameType | None) -> None:
        _close_all(timeout, f"signal {signal.Signals(received).name}")
        if callable(previous):
            previous(received, frame)
        elif previous == signal.SIG_IGN:
            return
        else:
            # SIG_DFL (or unknown): restore it and re-deliver, so the exit status and
            # any supervisor see a process ended by this signal, as they would have.
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)

    return handler


def install_shutdown_hook(
    timeout: float = 5.0,
    *,
    signals: tuple[int, ...] = (signal.SIGTERM,),
    at_exit: bool = True,
) -> None:
    """Close every ``Database`` singleton on ``signals`` and at interpreter exit.

    ``timeout`` bounds how long borrowed connections are waited for (see
    ``Pool.close``). A handler already installed for a signal is called after the
    pools are closed; without one, the process then ends as the signal's default
    would end it. Call from the main thread (Python only lets it set signal
    handlers). Calling again changes nothing until :func:`uninstall_shutdown_hook`.
    """
    global _atexit_timeout
    with _lock:
        for signum in signals:
            if signum in _installed:
                continue
            previous = signal.getsignal(signum)
            signal.signal(signum, _make_handler(signum, previous, timeout))
            _installed[signum] = previous
        if at_exit and _atexit_timeout is None:
            _atexit_timeout = timeout
            atexit.register(_at_exit)


def uninstall_shutdown_hook() -> None:
    """Put back the signal handlers that were there before, and drop the exit hook."""
    global _atexit_timeout
    with _lock:
        for signum, previous in _installed.items():
            signal.signal(signum, previous if previous is not None else signal.SIG_DFL)
        _installed.clear()
        if _atexit_timeout is not None:
            atexit.unregister(_at_exit)
            _atexit_timeout = None


def _remake_lock_after_fork() -> None:
    global _lock
    # The parent's lock may have been held by a thread the child does not have.
    _lock = threading.Lock()


os.register_at_fork(after_in_child=_remake_lock_after_fork)

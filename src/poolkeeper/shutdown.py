"""Opt-in graceful shutdown: close every ``Database`` and ``AsyncDatabase`` singleton
on SIGTERM and at exit.

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

import asyncio
import atexit
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from types import FrameType
from typing import Any, TypeAlias

__all__ = ["install_shutdown_hook", "uninstall_shutdown_hook"]

_log = logging.getLogger("poolkeeper.shutdown")

_Handler: TypeAlias = "Callable[[int, FrameType | None], Any] | int | signal.Handlers | None"

_lock = threading.Lock()
_installed: dict[int, _Handler] = {}
_atexit_timeout: float | None = None


def _close_all(timeout: float, why: str, *, here: asyncio.AbstractEventLoop | None) -> None:
    """Close every singleton, bounded by ``timeout`` plus a little, whatever holds locks.

    ``here``: an event loop this thread runs (the signal interrupted it). Its pools
    cannot be closed while the handler holds the thread; they are left to
    :func:`_close_async_then`, which runs in that loop once the handler returns.
    """
    # Run on helper threads: a signal handler runs on the main thread between two
    # bytecodes, possibly while that thread holds a pool's lock; joining with a
    # deadline turns that case into a bounded wait instead of a deadlock.
    from poolkeeper.async_database import AsyncDatabase  # noqa: PLC0415 - import cycle
    from poolkeeper.database import Database  # noqa: PLC0415

    targets: list[Callable[[], object]] = []
    count = len(Database._instances)
    if count:
        targets.append(lambda: Database.reset_all(timeout=timeout))
    if here is None and AsyncDatabase._instances:
        count += len(AsyncDatabase._instances)
        # In a loop of its own: reset_all closes each other loop's pools in that loop.
        targets.append(lambda: asyncio.run(AsyncDatabase.reset_all(timeout=timeout)))
    if not targets:
        return
    _log.info("poolkeeper: closing %d shared pool(s) (%s)", count, why)
    workers = [
        threading.Thread(target=target, name="poolkeeper-shutdown", daemon=True)
        for target in targets
    ]
    for worker in workers:
        worker.start()
    deadline = time.monotonic() + timeout + 1.0
    for worker in workers:
        worker.join(max(0.0, deadline - time.monotonic()))
    if any(worker.is_alive() for worker in workers):
        _log.warning("poolkeeper: shared pools not closed within %gs; exiting anyway", timeout)


async def _close_async_then(then: Callable[[], None], timeout: float) -> None:
    """In the loop the signal interrupted: close every ``AsyncDatabase``'s pools, then
    do what the signal would have done."""
    from poolkeeper.async_database import AsyncDatabase  # noqa: PLC0415 - import cycle

    try:
        _log.info(
            "poolkeeper: closing %d shared asyncio pool(s) (signal)", len(AsyncDatabase._instances)
        )
        await asyncio.wait_for(AsyncDatabase.reset_all(timeout=timeout), timeout + 1.0)
    except Exception:
        _log.warning("poolkeeper: shared asyncio pools not closed within %gs", timeout)
    finally:
        then()


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def _at_exit() -> None:
    if _atexit_timeout is not None:
        _close_all(_atexit_timeout, "interpreter exit", here=_running_loop())


def _make_handler(signum: int, previous: _Handler, timeout: float) -> Callable[..., None]:
    def go_on(received: int, frame: FrameType | None) -> None:
        if callable(previous):
            previous(received, frame)
        elif previous == signal.SIG_IGN:
            return
        else:
            # SIG_DFL (or unknown): restore it and re-deliver, so the exit status and
            # any supervisor see a process ended by this signal, as they would have.
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)

    def handler(received: int, frame: FrameType | None) -> None:
        from poolkeeper.async_database import AsyncDatabase  # noqa: PLC0415 - import cycle

        here = _running_loop()
        _close_all(timeout, f"signal {signal.Signals(received).name}", here=here)
        if here is not None and AsyncDatabase._instances:
            # The signal interrupted this thread's event loop, which must run to close
            # its pools: do that from the loop, and go on as the signal would after.
            here.call_soon_threadsafe(
                lambda: here.create_task(_close_async_then(lambda: go_on(received, frame), timeout))
            )
            return
        go_on(received, frame)

    return handler


def install_shutdown_hook(
    timeout: float = 5.0,
    *,
    signals: tuple[int, ...] = (signal.SIGTERM,),
    at_exit: bool = True,
) -> None:
    """Close every ``Database`` and ``AsyncDatabase`` singleton on ``signals`` and at
    interpreter exit.

    ``timeout`` bounds how long borrowed connections are waited for (see
    ``Pool.close``). A handler already installed for a signal is called after the
    pools are closed; without one, the process then ends as the signal's default
    would end it. If the signal interrupts an event loop running in the main
    thread (``asyncio.run``), the ``AsyncDatabase`` pools are closed from that loop
    once the handler returns, and the signal takes its course after that. Call
    from the main thread (Python only lets it set signal handlers). Calling again
    changes nothing until :func:`uninstall_shutdown_hook`.
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

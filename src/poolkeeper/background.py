"""Threads that do the pool's slow work: opening, pinging and closing connections."""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from typing import TypeAlias

__all__ = ["BackgroundWorkers"]

_log = logging.getLogger("poolkeeper.pool")
_STOP = None
_TaskQueue: TypeAlias = "queue.SimpleQueue[Callable[[], object] | None]"


class BackgroundWorkers:
    """Daemon threads running submitted callables, plus one periodic task.

    Opening has threads of its own: an opener may retry with back-off for
    ``reconnect_timeout`` (a server that is full, or down), and keepalive pings and
    closes queued behind it would hold the pool's idle connections out of reach
    meanwhile. Daemon threads, so a forgotten pool never keeps the interpreter
    alive; the pool's ``close()`` stops them explicitly.
    """

    def __init__(
        self,
        name: str,
        count: int,
        periodic: Callable[[], float | None],
    ) -> None:
        """``periodic`` returns the seconds until its next run, or None to stop (its
        pool is gone). It, and every task, must not keep the pool alive between runs:
        the pool calls these through a weak reference, so that a pool dropped without
        ``close()`` is collected."""
        self._name = name
        self._queue: _TaskQueue = queue.SimpleQueue()
        self._open_queue: _TaskQueue = queue.SimpleQueue()
        self._stopping = threading.Event()
        self._periodic = periodic
        self._threads = [
            threading.Thread(
                target=self._run,
                args=(tasks,),
                name=f"poolkeeper-{name}-{kind}-{i}",
                daemon=True,
            )
            for tasks, kind in ((self._queue, "worker"), (self._open_queue, "opener"))
            for i in range(count)
        ]
        self._threads.append(
            threading.Thread(
                target=self._run_periodic, name=f"poolkeeper-{name}-housekeeping", daemon=True
            )
        )

    def start(self) -> None:
        """Start every thread."""
        for thread in self._threads:
            thread.start()

    def submit(self, task: Callable[[], object]) -> None:
        """Run ``task`` (a ping, a close: short work) on a worker thread soon."""
        if not self._stopping.is_set():
            self._queue.put(task)

    def submit_open(self, task: Callable[[], object]) -> None:
        """Run ``task``, which opens a connection and may retry for long, on an opener."""
        if not self._stopping.is_set():
            self._open_queue.put(task)

    def signal_stop(self) -> None:
        """Ask every thread to finish, without waiting (from a finaliser, say)."""
        self._stopping.set()
        for _ in self._threads:
            # One each is enough; the extras are never read.
            self._queue.put(_STOP)
            self._open_queue.put(_STOP)

    def stop(self, timeout: float) -> None:
        """Ask every thread to finish, and wait up to ``timeout`` for them."""
        self.signal_stop()
        current = threading.current_thread()
        for thread in self._threads:
            if thread is not current and thread.is_alive():
                thread.join(timeout)

    def _run(self, tasks: _TaskQueue) -> None:
        while True:
            task = tasks.get()
            if task is _STOP:
                return
            try:
                task()
            except Exception:
                # A bug in a task must not kill the worker and silently stop maintenance.
                _log.exception("poolkeeper %s: background task failed", self._name)
            # A task holds its pool; an idle worker must not (see __init__).
            del task

    def _run_periodic(self) -> None:
        delay: float | None = 0.0
        while delay is not None and not self._stopping.wait(delay):
            try:
                delay = self._periodic()
            except Exception:
                _log.exception("poolkeeper %s: housekeeping failed", self._name)
                delay = 1.0

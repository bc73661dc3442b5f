"""Result records and the small amount of statistics the harness needs.

Kept free of driver imports so that the report can be rebuilt from a JSON file alone.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple


@dataclass(frozen=True)
class CellResult:
    """One contender at one concurrency level in one round."""

    contender: str
    mode: str  # "sync" or "async"
    workers: int
    round: int
    elapsed_s: float
    ops: int
    errors: int
    error_kind: str | None
    ops_per_s: float
    worker_ops: tuple[int, ...]
    wait_p50_us: float
    wait_p99_us: float
    wait_max_us: float
    # Process-wide resource usage over the measured time, per op (see :class:`Usage`).
    # NaN where it was not recorded: results saved before it existed load unchanged.
    #: voluntary context switches per op (a thread blocked and gave up its CPU)
    vcs_per_op: float = math.nan
    #: involuntary context switches per op (the kernel preempted a running thread)
    ivcs_per_op: float = math.nan
    #: user + system CPU time of the whole process per op, µs
    cpu_us_per_op: float = math.nan

    @property
    def min_worker_share(self) -> float:
        """Fewest ops of any worker divided by the median worker's ops (1.0 = perfectly even)."""
        return worker_share(self.worker_ops)


class WorkerOutcome(NamedTuple):
    """What one worker (thread or task) did in one slice."""

    #: borrow wait (ns) of every op completed after the warm-up: one entry per op
    waits: list[int]
    #: "pool exhausted" failures after the warm-up
    errors: int
    #: perf_counter_ns when the worker stopped
    end_ns: int
    #: the last error's description, if any
    error_kind: str | None


@dataclass(frozen=True)
class Usage:
    """The process's resource usage (``getrusage(RUSAGE_SELF)``): totals, or the
    difference between two samples.

    Process-wide on purpose: the sync workers are threads of this process, so one
    sample covers all of them, but it also covers the pools' background threads and
    the harness. It compares contenders measured the same way; it is not the
    absolute cost of a pool.
    """

    #: voluntary context switches: a thread blocked (lock, socket, sleep)
    vcs: int = 0
    #: involuntary context switches: the kernel preempted a running thread
    ivcs: int = 0
    #: user + system CPU seconds of all threads
    cpu_s: float = 0.0

    def __add__(self, other: Usage) -> Usage:
        return Usage(self.vcs + other.vcs, self.ivcs + other.ivcs, self.cpu_s + other.cpu_s)

    def __sub__(self, other: Usage) -> Usage:
        return Usage(self.vcs - other.vcs, self.ivcs - other.ivcs, self.cpu_s - other.cpu_s)


@dataclass(frozen=True)
class SliceRun:
    """One slice, raw: one contender at one level for part of a cell's duration.

    Every wait is kept until the slices of a cell are merged (:func:`merge_slices`),
    because percentiles of the union cannot be computed from per-slice percentiles.
    """

    #: perf_counter_ns at the end of the slice's warm-up
    measure_start_ns: int
    #: indexed by worker; None for a worker that never finished
    outcomes: Sequence[WorkerOutcome | None]
    #: workers still blocked when the slice was given up on
    hung: int
    #: process usage from the end of the warm-up to the end of the slice; None when
    #: not sampled
    usage: Usage | None = None


def merge_slices(
    contender: str, mode: str, workers: int, round_no: int, slices: Sequence[SliceRun]
) -> CellResult:
    """One cell from the slices a contender ran at one level in one round.

    Ops and measured time are summed (so ops/s is total ops over total measured
    time), per-worker ops are summed by worker index, and wait percentiles are taken
    over the waits of all slices together. A single slice gives exactly the cell an
    unsliced run would. Resource usage is summed over slices and divided by all ops;
    if any slice lacks it, the cell has none (NaN) rather than a skewed share.
    """
    all_waits: list[int] = []
    worker_ops = [0] * workers
    errors = 0
    hung = 0
    kinds: set[str] = set()
    measured_ns = 0
    for part in slices:
        last_end = part.measure_start_ns
        for idx, outcome in enumerate(part.outcomes):
            if outcome is None:
                continue
            all_waits.extend(outcome.waits)
            worker_ops[idx] += len(outcome.waits)
            errors += outcome.errors
            last_end = max(last_end, outcome.end_ns)
            if outcome.error_kind:
                kinds.add(outcome.error_kind)
        # A slice is measured from the end of its warm-up to its last worker's stop.
        measured_ns += last_end - part.measure_start_ns
        hung += part.hung
    if hung:
        kinds.add(f"hung: {hung} worker{'' if hung == 1 else 's'} still blocked")
    elapsed = max(1e-9, measured_ns / 1e9)
    ops = len(all_waits)
    p50, p99, wmax = wait_summary_us(all_waits)
    vcs, ivcs, cpu_us = _usage_per_op(slices, ops)
    return CellResult(
        contender=contender,
        mode=mode,
        workers=workers,
        round=round_no,
        elapsed_s=elapsed,
        ops=ops,
        errors=errors,
        error_kind="; ".join(sorted(kinds)) or None,
        ops_per_s=ops / elapsed,
        worker_ops=tuple(worker_ops),
        wait_p50_us=p50,
        wait_p99_us=p99,
        wait_max_us=wmax,
        vcs_per_op=vcs,
        ivcs_per_op=ivcs,
        cpu_us_per_op=cpu_us,
    )


def _usage_per_op(slices: Sequence[SliceRun], ops: int) -> tuple[float, float, float]:
    """Voluntary and involuntary switches and CPU µs per op over all ``slices``.

    All NaN without ops, or if any slice was not sampled: a partial sum divided by
    all ops would understate the cost.
    """
    if not ops or any(part.usage is None for part in slices):
        return math.nan, math.nan, math.nan
    total = sum((part.usage for part in slices if part.usage is not None), Usage())
    return total.vcs / ops, total.ivcs / ops, total.cpu_s * 1e6 / ops


@dataclass(frozen=True)
class MicroResult:
    """Uncontended checkout + return, one round."""

    contender: str
    round: int
    iterations: int
    ns_per_pair: float


@dataclass(frozen=True)
class MemoryResult:
    """Python heap (tracemalloc) held by ``connections`` idle connections, one repetition."""

    contender: str
    repetition: int
    connections: int
    traced_bytes: int


@dataclass(frozen=True)
class Spread:
    """Median and range of one quantity over rounds."""

    median: float
    low: float
    high: float
    n: int

    @classmethod
    def of(cls, values: Sequence[float]) -> Spread | None:
        """Summarise ``values``; None when there are none (a skipped contender)."""
        clean = [v for v in values if not math.isnan(v)]
        if not clean:
            return None
        return cls(statistics.median(clean), min(clean), max(clean), len(clean))


@dataclass
class Summary:
    """A contender at one concurrency level, summarised over all rounds."""

    contender: str
    mode: str
    workers: int
    reference: str | None
    rounds: int
    ops_per_s: Spread | None
    errors: int
    error_kind: str | None
    vs_reference: Spread | None = None
    vs_psycopg_pool: Spread | None = None
    wait_p50_us: Spread | None = None
    wait_p99_us: Spread | None = None
    wait_max_us: Spread | None = None
    p99_over_p50: Spread | None = None
    max_over_p50: Spread | None = None
    min_worker_share: Spread | None = None
    worker_ops_min: Spread | None = None
    worker_ops_median: Spread | None = None
    worker_ops_max: Spread | None = None
    vcs_per_op: Spread | None = None
    ivcs_per_op: Spread | None = None
    cpu_us_per_op: Spread | None = None
    notes: list[str] = field(default_factory=list)


def percentile(sorted_values: Sequence[int], q: float) -> float:
    """Nearest-rank percentile of an already sorted sequence (NaN when empty)."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(q / 100.0 * len(sorted_values)))
    return float(sorted_values[rank - 1])


def wait_summary_us(waits_ns: list[int]) -> tuple[float, float, float]:
    """p50, p99 and max of borrow waits, converted from ns to µs."""
    waits_ns.sort()
    if not waits_ns:
        return math.nan, math.nan, math.nan
    return (
        percentile(waits_ns, 50) / 1000.0,
        percentile(waits_ns, 99) / 1000.0,
        waits_ns[-1] / 1000.0,
    )


def worker_share(worker_ops: Sequence[int]) -> float:
    """Fewest ops of any worker over the median worker's ops; NaN without data."""
    if not worker_ops:
        return math.nan
    median = statistics.median(worker_ops)
    if median == 0:
        # Half the workers or more got nothing done: starvation, not "no data".
        return 0.0 if max(worker_ops) > 0 else math.nan
    return min(worker_ops) / median


def safe_ratio(numerator: float, denominator: float) -> float:
    """``numerator / denominator``, NaN instead of an error when either is missing or zero."""
    if math.isnan(numerator) or math.isnan(denominator) or denominator == 0:
        return math.nan
    return numerator / denominator

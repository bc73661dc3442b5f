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


def merge_slices(
    contender: str, mode: str, workers: int, round_no: int, slices: Sequence[SliceRun]
) -> CellResult:
    """One cell from the slices a contender ran at one level in one round.

    Ops and measured time are summed (so ops/s is total ops over total measured
    time), per-worker ops are summed by worker index, and wait percentiles are taken
    over the waits of all slices together. A single slice gives exactly the cell an
    unsliced run would.
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
        kinds.add(f"hung: {hung} workers still blocked")
    elapsed = max(1e-9, measured_ns / 1e9)
    ops = len(all_waits)
    p50, p99, wmax = wait_summary_us(all_waits)
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
    )


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

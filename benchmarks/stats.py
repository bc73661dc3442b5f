"""Result records and the small amount of statistics the harness needs.

Kept free of driver imports so that the report can be rebuilt from a JSON file alone.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field


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

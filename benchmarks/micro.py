"""Uncontended checkout + return: one thread, no query, the pool's own fast path."""

from __future__ import annotations

import gc
import time
from collections.abc import Sequence
from typing import Any

from benchmarks.contenders import MICRO_CONTENDERS, SyncContender, note
from benchmarks.runner import BenchConfig, Skips, available, rotate
from benchmarks.stats import MicroResult

#: the harness's own floor: the same loop around two trivial Python calls
NOOP = "noop_floor"


#: each round's pairs are timed in this many equal runs, and the fastest counts
REPEATS = 5


def time_pairs(get: Any, put: Any, iterations: int) -> float:
    """Nanoseconds per ``put(get())``: the fastest of :data:`REPEATS` timed runs that
    share ``iterations`` between them (after a short warm-up).

    The fastest run, as ``timeit`` reports: on a shared host anything else running
    only ever adds time to a loop this short, so the minimum is the estimate least
    disturbed by it; the median over rounds then shows how steady that is.
    """
    for _ in range(min(iterations, 2000)):
        put(get())
    gc.collect()
    per_run = max(1, iterations // REPEATS)
    best = float("inf")
    for _ in range(REPEATS):
        start = time.perf_counter_ns()
        for _ in range(per_run):
            put(get())
        best = min(best, (time.perf_counter_ns() - start) / per_run)
    return best


def _noop_pair() -> tuple[Any, Any]:
    token = object()

    def get() -> object:
        return token

    def put(_conn: object) -> None:
        return None

    return get, put


def run_micro(dsn: str, cfg: BenchConfig, skips: Skips) -> list[MicroResult]:
    """Every pool's uncontended pair, interleaved over ``cfg.rounds`` rounds."""
    classes: Sequence[type[SyncContender]] = available(MICRO_CONTENDERS, cfg, skips)
    results: list[MicroResult] = []
    for round_no in range(cfg.rounds):
        line: list[str] = []
        for cls in rotate([None, *classes], round_no):
            if cls is None:
                get, put = _noop_pair()
                ns = time_pairs(get, put, cfg.micro_iterations)
                results.append(MicroResult(NOOP, round_no, cfg.micro_iterations, ns))
                line.append(f"{NOOP} {ns / 1000:.2f}µs")
                continue
            if cls.name in skips:
                continue
            contender = cls(dsn, cfg.pool_size)
            try:
                contender.open()
            except Exception as exc:
                skips.add(cls.name, f"open failed: {exc!r}")
                continue
            try:
                get, put = contender.bind(0)
                ns = time_pairs(get, put, cfg.micro_iterations)
            except Exception as exc:
                skips.add(cls.name, f"micro failed: {exc!r}")
                continue
            finally:
                contender.close()
            results.append(MicroResult(cls.name, round_no, cfg.micro_iterations, ns))
            line.append(f"{cls.name} {ns / 1000:.2f}µs")
        note(f"  micro [{round_no + 1}] " + ", ".join(line))
    return results

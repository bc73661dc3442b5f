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


def time_pairs(get: Any, put: Any, iterations: int) -> float:
    """Nanoseconds per ``put(get())`` over ``iterations`` (after a short warm-up)."""
    for _ in range(min(iterations, 2000)):
        put(get())
    gc.collect()
    start = time.perf_counter_ns()
    for _ in range(iterations):
        put(get())
    return (time.perf_counter_ns() - start) / iterations


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

"""Benchmark harness for poolkeeper (issue 5): throughput, fairness, checkout cost, memory.

Run ``python -m benchmarks.run --help``. :func:`benchmarks.run.run_all` runs the
whole benchmark against a given DSN and returns the results (``.report()`` prints).
"""

from __future__ import annotations

from typing import Any

__all__ = ["BenchConfig", "main", "run_all"]


def __getattr__(name: str) -> Any:
    # Lazy: importing benchmarks.run here would make ``python -m benchmarks.run``
    # load that module twice (runpy warns about exactly that).
    if name in ("main", "run_all"):
        from benchmarks import run

        return getattr(run, name)
    if name == "BenchConfig":
        from benchmarks.runner import BenchConfig

        return BenchConfig
    raise AttributeError(f"module 'benchmarks' has no attribute {name!r}")

"""Command line entry point: ``python -m benchmarks.run [--quick] [--dsn URL] [--json out.json]``.

Without ``--dsn`` or ``DATABASE_URL`` a throwaway server is started with
``poolkeeper.embedded.LocalServer`` and removed afterwards.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from benchmarks.async_contenders import ASYNC_CONTENDERS
from benchmarks.contenders import SYNC_CONTENDERS, note
from benchmarks.machine import machine_info
from benchmarks.memory import run_memory
from benchmarks.micro import run_micro
from benchmarks.report import DEDICATED, PEER, Target, evaluate_targets, render, summarize
from benchmarks.runner import BenchConfig, Skips, run_rounds
from benchmarks.stats import CellResult, MemoryResult, MicroResult, Summary

QUICK = {
    "rounds": 2,
    "duration": 0.3,
    "warmup": 0.05,
    # Fewer, longer slices than a full run: each slice costs a warm-up and thread
    # start-up, and 0.1 s slices still interleave a pool with its baseline.
    "slices": 3,
    "micro_iterations": 20_000,
    "memory_repetitions": 1,
}


@dataclass
class BenchResults:
    """Everything one run measured, plus what it was measured on."""

    config: BenchConfig
    machine: dict[str, str]
    cells: list[CellResult] = field(default_factory=list)
    micro: list[MicroResult] = field(default_factory=list)
    memory: list[MemoryResult] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    wall_s: float = 0.0

    def summaries(self) -> list[Summary]:
        """Per (contender, workers) summaries over rounds."""
        return summarize(self.cells, self.config.pool_size)

    def targets(self) -> list[Target]:
        """Issue 5's targets judged on this run."""
        return evaluate_targets(
            self.summaries(),
            self.micro,
            self.memory,
            threads=self.config.threads,
            tasks=self.config.tasks,
            memory_n=self.config.memory_connections,
        )

    def report(self) -> str:
        """The printed report."""
        cfg = self.config
        m = self.machine
        header = [
            "poolkeeper benchmark (issue 5)",
            f"host: {m.get('cpus')} CPUs ({m.get('cpu_model')}), {m.get('memory')}, "
            f"{m.get('python')}, load avg (1/5/15 min) {m.get('loadavg_at_start')} at start, "
            f"{m.get('loadavg_at_end')} at end",
            f"server: PostgreSQL {m.get('server_version')} at {m.get('server')}, "
            f"max_connections={m.get('max_connections')}",
            f"poolkeeper source sha256 {m.get('poolkeeper_source_sha256')}",
            "versions: "
            + ", ".join(
                f"{p} {m.get(p)}"
                for p in (
                    "poolkeeper",
                    "psycopg",
                    "psycopg-pool",
                    "psycopg2-binary",
                    "SQLAlchemy",
                    "asyncpg",
                )
            ),
            f"workload: checkout, cursor, SELECT 1, fetch, close cursor, return; autocommit; "
            f"{cfg.rounds} interleaved rounds x {cfg.duration:g} s per cell "
            f"(+{cfg.warmup:g} s warm-up){_slicing(cfg)}; pool size {cfg.pool_size}",
        ]
        notes = [f"skipped {k}: {v}" for k, v in self.skipped.items()] + self.notes
        notes.append(f"wall time {self.wall_s:.0f} s")
        return render(
            self.summaries(),
            self.micro,
            self.memory,
            self.targets(),
            header=header,
            pool_size=cfg.pool_size,
            memory_n=cfg.memory_connections,
            notes=notes,
        )

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict: raw per-round results, summaries and target verdicts."""
        config = dataclasses.asdict(self.config)
        if self.config.only is not None:
            config["only"] = sorted(self.config.only)
        cleaned: dict[str, Any] = _finite(
            {
                "config": config,
                "machine": self.machine,
                "cells": [dataclasses.asdict(c) for c in self.cells],
                "micro": [dataclasses.asdict(m) for m in self.micro],
                "memory": [dataclasses.asdict(m) for m in self.memory],
                "summaries": [dataclasses.asdict(s) for s in self.summaries()],
                "targets": [dataclasses.asdict(t) for t in self.targets()],
                "skipped": self.skipped,
                "notes": self.notes,
                "wall_s": self.wall_s,
            }
        )
        return cleaned


def _slicing(cfg: BenchConfig) -> str:
    """How cells were sliced, for the report header; empty for unsliced cells, so
    that the reports of runs from before slicing print as they always did."""
    if cfg.slices == 1:
        return ""
    return (
        f" in {cfg.slices} interleaved slices of {cfg.duration / cfg.slices:g} s "
        f"(+{cfg.slice_warmup:g} s warm-up after the first)"
    )


#: float fields that JSON stores as null when they were NaN (nothing measured)
_FLOAT_FIELDS = frozenset(
    {
        "wait_p50_us",
        "wait_p99_us",
        "wait_max_us",
        "ops_per_s",
        "ns_per_pair",
        "vcs_per_op",
        "ivcs_per_op",
        "cpu_us_per_op",
    }
)


def _nan(row: dict[str, Any]) -> dict[str, Any]:
    return {k: math.nan if v is None and k in _FLOAT_FIELDS else v for k, v in row.items()}


def load_results(path: str) -> BenchResults:
    """Rebuild results from a ``--json`` file, to print its report again."""
    with open(path, encoding="utf-8") as fh:
        data = json.load(fh)
    config = dict(data["config"])
    for name in ("threads", "tasks"):
        config[name] = tuple(config[name])
    if config.get("only") is not None:
        config["only"] = frozenset(config["only"])
    # Files from before slicing have no "slices": their cells ran in one piece. The
    # other missing fields take BenchConfig's defaults.
    config.setdefault("slices", 1)
    cells = []
    for raw in data["cells"]:
        row = _nan(raw)
        row["worker_ops"] = tuple(row["worker_ops"])
        cells.append(CellResult(**row))
    return BenchResults(
        config=BenchConfig(**config),
        machine=data["machine"],
        cells=cells,
        micro=[MicroResult(**_nan(m)) for m in data["micro"]],
        memory=[MemoryResult(**m) for m in data["memory"]],
        skipped=data["skipped"],
        notes=data["notes"],
        wall_s=data["wall_s"],
    )


def run_all(dsn: str, config: BenchConfig | None = None) -> BenchResults:
    """Run every enabled part of the benchmark against the server at ``dsn``.

    Progress goes to stderr; call ``.report()`` on the result for the tables. This
    is the function a ``poolkeeper bench`` command is meant to call.
    """
    cfg = config or BenchConfig()
    started = time.monotonic()
    results = BenchResults(config=cfg, machine=machine_info(dsn))
    try:
        max_conn = int(results.machine["max_connections"])
    except ValueError:
        max_conn = 0
    if cfg.run_memory and max_conn < cfg.memory_connections:
        note(
            f"WARNING: server max_connections={max_conn} is below {cfg.memory_connections}; "
            "the memory check will measure fewer connections and scale"
        )
    elif cfg.run_memory and max_conn < cfg.memory_connections + 10:
        note(
            f"WARNING: server max_connections={max_conn} leaves little room over "
            f"{cfg.memory_connections}: other clients may make the memory check measure fewer"
        )
    sections: list[Skips] = []
    if cfg.run_sync or cfg.run_async:
        skips = Skips("throughput")
        sections.append(skips)
        results.cells, host = run_rounds(dsn, cfg, skips)
        results.notes.append(
            "before each round, CPU share used by other processes / 1-min load average: "
            + ", ".join(f"{busy:.0%}/{load:.1f}" for busy, load in host)
        )
    if cfg.run_micro:
        skips = Skips("micro")
        sections.append(skips)
        note("microbenchmark: uncontended getconn + putconn")
        results.micro = run_micro(dsn, cfg, skips)
    if cfg.run_memory:
        skips = Skips("memory")
        sections.append(skips)
        note(f"memory: {cfg.memory_connections} idle connections")
        results.memory, warning_text = run_memory(dsn, cfg, skips)
        if warning_text:
            results.notes.append(f"memory: {warning_text}")
    for section in sections:
        for name, reason in section.reasons.items():
            results.skipped[f"{section.section}/{name}"] = reason
    results.wall_s = time.monotonic() - started
    results.machine["loadavg_at_end"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return results


def _int_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers: {text!r}") from exc
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError("need at least one positive integer")
    return values


#: Every name ``--only`` accepts, in the order the report lists them.
CONTENDER_NAMES: tuple[str, ...] = (
    *(c.name for c in SYNC_CONTENDERS),
    *(c.name for c in ASYNC_CONTENDERS),
)


def _contender_names(text: str) -> tuple[str, ...]:
    # Checked while parsing, before any server is started or connected to: a
    # misspelt name would otherwise just leave that contender out of a long run.
    names = tuple(name.strip() for name in text.split(",") if name.strip())
    if not names:
        raise argparse.ArgumentTypeError("expected comma-separated contender names")
    unknown = sorted(set(names) - set(CONTENDER_NAMES))
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown contender(s): {', '.join(unknown)}; known: {', '.join(CONTENDER_NAMES)}"
        )
    return names


def only_with_references(names: Iterable[str]) -> frozenset[str]:
    """What ``--only names`` runs: those contenders, the dedicated baselines, and the
    pool each chosen poolkeeper or fifo_floor contender is compared with (``PEER``).

    Every throughput row's "vs dedicated" ratio needs its driver's dedicated
    baseline, hence all of them. A contender without a peer (SQLAlchemy's pools,
    psycopg2's) brings none: no row of its own shows a "vs psycopg_pool" ratio.
    """
    chosen = {name.strip() for name in names if name.strip()}
    return frozenset(chosen | DEDICATED | {PEER[name] for name in chosen if name in PEER})


def build_parser() -> argparse.ArgumentParser:
    """The command line options (shared with a future ``poolkeeper bench``)."""
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.run",
        description="Benchmark poolkeeper against psycopg_pool, psycopg2, SQLAlchemy and "
        "asyncpg pools and dedicated connections (issue 5).",
        epilog="contenders: " + ", ".join(CONTENDER_NAMES),
    )
    p.add_argument("--dsn", help="server to use (default: $DATABASE_URL, else a throwaway one)")
    p.add_argument(
        "--embedded",
        action="store_true",
        help="start a throwaway server even if DATABASE_URL is set",
    )
    p.add_argument("--quick", action="store_true", help="short smoke run (about a minute)")
    p.add_argument("--rounds", type=int, help="interleaved rounds (default 10)")
    p.add_argument("--duration", type=float, help="seconds per cell (default 1)")
    p.add_argument(
        "--warmup", type=float, help="unmeasured seconds before each cell (default 0.15)"
    )
    p.add_argument(
        "--slices",
        type=int,
        help="run each cell as this many slices interleaved with the other contenders' "
        "at the same level, against host speed drift (default 5; 1: whole cells)",
    )
    p.add_argument(
        "--slice-warmup",
        type=float,
        metavar="SECONDS",
        help="unmeasured seconds before each slice but a cell's first (default 0.03)",
    )
    p.add_argument("--pool-size", type=int, help="connections per pool (default 10)")
    p.add_argument("--threads", type=_int_list, help="thread counts (default 1,10,16,64)")
    p.add_argument("--tasks", type=_int_list, help="asyncio task counts (default 10,64)")
    p.add_argument("--micro-iterations", type=int, help="pairs per micro round (default 200000)")
    p.add_argument("--memory-connections", type=int, help="idle connections (default 100)")
    p.add_argument("--memory-repetitions", type=int, help="memory repetitions (default 3)")
    p.add_argument(
        "--only",
        type=_contender_names,
        help="comma-separated contender names; the dedicated baselines are kept, and "
        "so is the pool a chosen poolkeeper or fifo_floor contender is compared with "
        "(psycopg_pool, psycopg_pool_async or asyncpg_pool)",
    )
    for part in ("sync", "async", "micro", "memory"):
        p.add_argument(f"--no-{part}", action="store_true", help=f"skip the {part} part")
    p.add_argument(
        "--quiet-wait",
        type=float,
        metavar="SECONDS",
        help="before each round, wait up to this long for other processes to use less "
        "than --quiet-threshold of the CPUs (for shared hosts; default 0: do not wait)",
    )
    p.add_argument("--quiet-threshold", type=float, metavar="FRACTION", help="default 0.15")
    p.add_argument("--json", metavar="PATH", help="also write all results as JSON")
    p.add_argument(
        "--report",
        metavar="PATH",
        help="only print the report of an earlier --json file (runs nothing)",
    )
    return p


def config_from_args(args: argparse.Namespace) -> BenchConfig:
    """BenchConfig from parsed options: defaults, then ``--quick``, then explicit options."""
    values: dict[str, Any] = dict(QUICK) if args.quick else {}
    for name in (
        "rounds",
        "duration",
        "warmup",
        "slices",
        "slice_warmup",
        "pool_size",
        "threads",
        "tasks",
        "micro_iterations",
        "memory_connections",
        "memory_repetitions",
        "quiet_wait",
        "quiet_threshold",
    ):
        value = getattr(args, name)
        if value is not None:
            values[name] = value
    if args.only:
        values["only"] = only_with_references(args.only)
    values.update(
        run_sync=not args.no_sync,
        run_async=not args.no_async,
        run_micro=not args.no_micro,
        run_memory=not args.no_memory,
    )
    cfg = BenchConfig(**values)
    if cfg.rounds < 1 or cfg.duration <= 0 or cfg.pool_size < 1 or cfg.slices < 1:
        raise SystemExit("--rounds, --duration, --pool-size and --slices must be positive")
    if cfg.warmup < 0 or cfg.slice_warmup < 0:
        raise SystemExit("--warmup and --slice-warmup cannot be negative")
    return cfg


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv``, run the benchmark, print the report; 0 on success."""
    args = build_parser().parse_args(argv)
    if args.report:
        sys.stdout.write(load_results(args.report).report())
        return 0
    cfg = config_from_args(args)
    dsn = args.dsn or (None if args.embedded else os.environ.get("DATABASE_URL"))
    server: Any = None
    if not dsn:
        from poolkeeper.embedded import LocalServer

        note("starting a throwaway PostgreSQL (poolkeeper.embedded.LocalServer)...")
        server = LocalServer().start()
        dsn = server.dsn
    try:
        results = run_all(dsn, cfg)
    finally:
        if server is not None:
            server.stop(remove=True)
    if server is not None:
        results.notes.append("server: throwaway LocalServer (fsync off), removed after the run")
    sys.stdout.write(results.report())
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(results.to_json(), fh, indent=2, allow_nan=False)
            fh.write("\n")
        note(f"wrote {args.json}")
    return 0


def _finite(value: Any) -> Any:
    """NaN (a missing measurement) becomes null: JSON has no NaN."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


if __name__ == "__main__":
    raise SystemExit(main())

"""Summaries over rounds, the printed tables, and issue 5's targets as MET / MISSED."""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from benchmarks.async_contenders import ASYNC_CONTENDERS, AsyncContender
from benchmarks.contenders import SYNC_CONTENDERS, SyncContender
from benchmarks.memory import BARE
from benchmarks.micro import NOOP
from benchmarks.stats import (
    CellResult,
    MemoryResult,
    MicroResult,
    Spread,
    Summary,
    safe_ratio,
)

_CLASSES: tuple[type[SyncContender] | type[AsyncContender], ...] = (
    *SYNC_CONTENDERS,
    *ASYNC_CONTENDERS,
)
ORDER: dict[str, int] = {cls.name: i for i, cls in enumerate(_CLASSES)}
REFERENCE: dict[str, str] = {cls.name: cls.reference for cls in _CLASSES}
DEDICATED: frozenset[str] = frozenset(cls.name for cls in _CLASSES if cls.dedicated)
#: poolkeeper contender -> the established pool it must beat in the same run
PEER: dict[str, str] = {
    "poolkeeper": "psycopg_pool",
    "poolkeeper_async": "psycopg_pool_async",
    "poolkeeper_asyncpg": "asyncpg_pool",
    # Not a target: how far a featureless FIFO hand-off gets, for the analysis.
    "fifo_floor": "psycopg_pool",
    "fifo_floor_async": "psycopg_pool_async",
    "fifo_floor_asyncpg": "asyncpg_pool",
}

Key = tuple[str, str, int]
#: the fastest pool in the issue's microbenchmark; others are also shown relative to it
MICRO_BASE = "psycopg2_pool"


def _index(cells: Iterable[CellResult]) -> dict[Key, dict[int, CellResult]]:
    index: dict[Key, dict[int, CellResult]] = defaultdict(dict)
    for cell in cells:
        index[(cell.contender, cell.mode, cell.workers)][cell.round] = cell
    return index


def _paired(rounds: dict[int, CellResult], other: dict[int, CellResult] | None) -> Spread | None:
    """Median of per-round ratios: pairing within a round cancels slow drift of the host."""
    if not other:
        return None
    return Spread.of(
        [safe_ratio(c.ops_per_s, other[r].ops_per_s) for r, c in rounds.items() if r in other]
    )


def summarize(cells: Sequence[CellResult], pool_size: int) -> list[Summary]:
    """One Summary per (contender, mode, workers), in report order."""
    index = _index(cells)
    summaries: list[Summary] = []
    for key in sorted(index, key=lambda k: (k[1] != "sync", ORDER.get(k[0], 99), k[2])):
        name, mode, workers = key
        rounds = index[key]
        values = list(rounds.values())
        reference = REFERENCE.get(name)
        ref_rounds = index.get((reference, mode, min(workers, pool_size))) if reference else None
        peer = PEER.get(name)
        kinds = sorted({c.error_kind for c in values if c.error_kind})
        summary = Summary(
            contender=name,
            mode=mode,
            workers=workers,
            reference=reference,
            rounds=len(values),
            ops_per_s=Spread.of([c.ops_per_s for c in values]),
            errors=sum(c.errors for c in values),
            error_kind="; ".join(kinds) or None,
            vs_reference=_paired(rounds, ref_rounds) if name not in DEDICATED else None,
            vs_psycopg_pool=_paired(rounds, index.get((peer, mode, workers))) if peer else None,
            wait_p50_us=Spread.of([c.wait_p50_us for c in values]),
            wait_p99_us=Spread.of([c.wait_p99_us for c in values]),
            wait_max_us=Spread.of([c.wait_max_us for c in values]),
            p99_over_p50=Spread.of([safe_ratio(c.wait_p99_us, c.wait_p50_us) for c in values]),
            max_over_p50=Spread.of([safe_ratio(c.wait_max_us, c.wait_p50_us) for c in values]),
            min_worker_share=Spread.of([c.min_worker_share for c in values]),
            worker_ops_min=Spread.of([min(c.worker_ops, default=0) for c in values]),
            worker_ops_median=Spread.of(
                [statistics.median(c.worker_ops) if c.worker_ops else 0 for c in values]
            ),
            worker_ops_max=Spread.of([max(c.worker_ops, default=0) for c in values]),
            vcs_per_op=Spread.of([c.vcs_per_op for c in values]),
            ivcs_per_op=Spread.of([c.ivcs_per_op for c in values]),
            cpu_us_per_op=Spread.of([c.cpu_us_per_op for c in values]),
        )
        summaries.append(summary)
    return summaries


# -- formatting ------------------------------------------------------------------------


def _num(value: float) -> str:
    if math.isnan(value):
        return "-"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def fmt(spread: Spread | None, kind: str = "num") -> str:
    """``median [low-high]`` as a number, percentage (``pct``) or factor (``x``)."""
    if spread is None:
        return "-"
    if kind == "pct":
        return f"{spread.median:.0%} [{spread.low:.0%}-{spread.high:.0%}]"
    if kind == "x":
        return f"{spread.median:.2f}x [{spread.low:.2f}-{spread.high:.2f}]"
    if kind == "int":
        return f"{spread.median:,.0f} [{spread.low:,.0f}-{spread.high:,.0f}]"
    return f"{_num(spread.median)} [{_num(spread.low)}-{_num(spread.high)}]"


def _int(spread: Spread | None) -> str:
    return "-" if spread is None else f"{spread.median:,.0f}"


def _med(spread: Spread | None) -> str:
    return "-" if spread is None else _num(spread.median)


def throughput_table(summaries: Sequence[Summary], mode: str, pool_size: int) -> list[str]:
    """Rows of one mode's throughput table."""
    unit = "thr" if mode == "sync" else "tasks"
    lines = [
        f"{'contender':<24}{unit:>5}  {'ops/s median [min-max]':<26}{'vs dedicated':<17}"
        f"{'vs psycopg_pool*':<20}{'wait µs p50 / p99 / max':<29}"
        f"{'cs/op vol/invol':<17}{'CPU µs/op':<11}{'ops/worker min/med/max':<24}errors",
    ]
    for s in summaries:
        if s.mode != mode:
            continue
        waits = f"{_med(s.wait_p50_us)} / {_med(s.wait_p99_us)} / {_med(s.wait_max_us)}"
        switches = (
            "-"
            if s.vcs_per_op is None and s.ivcs_per_op is None
            else f"{_med(s.vcs_per_op)} / {_med(s.ivcs_per_op)}"
        )
        share = f"{_int(s.worker_ops_min)} / {_int(s.worker_ops_median)} / {_int(s.worker_ops_max)}"
        if s.contender in DEDICATED:
            vs_ref = "= 100%" if s.workers <= pool_size else "-"
        else:
            vs_ref = fmt(s.vs_reference, "pct")
        errors = ""
        if s.errors or s.error_kind:
            errors = f"raises {s.error_kind} ({s.errors:,}x)"
        lines.append(
            f"{s.contender:<24}{s.workers:>5}  {fmt(s.ops_per_s, 'int'):<26}{vs_ref:<17}"
            f"{fmt(s.vs_psycopg_pool, 'x'):<20}{waits:<29}{switches:<17}"
            f"{_med(s.cpu_us_per_op):<11}{share:<24}{errors}"
        )
    return lines


#: sync pools whose rows above pool size "Where the time goes" sets beside their baseline
BREAKDOWN = ("poolkeeper", PEER["poolkeeper"], "fifo_floor")


def time_breakdown(summaries: Sequence[Summary], pool_size: int) -> list[str]:
    """Rows of "Where the time goes": each :data:`BREAKDOWN` pool above pool size, with
    its voluntary switches and CPU per op beside its dedicated baseline's at pool size.

    Empty when no such row has usage figures (runs saved before they were recorded).
    """
    by = {(s.contender, s.mode, s.workers): s for s in summaries}
    rows = [
        s
        for s in summaries
        if s.mode == "sync" and s.contender in BREAKDOWN and s.workers > pool_size
    ]
    if all(s.vcs_per_op is None and s.cpu_us_per_op is None for s in rows):
        return []
    lines = [
        f"== Where the time goes: threads above pool size vs dedicated at {pool_size} "
        "(per op, median over rounds) ==",
        f"{'contender':<24}{'thr':>5}  {'vol cs/op':>10}{'CPU µs/op':>11}    "
        f"{'baseline':<24}{'thr':>5}  {'vol cs/op':>10}{'CPU µs/op':>11}",
    ]
    for s in rows:
        base = by.get((s.reference, "sync", pool_size)) if s.reference else None
        lines.append(
            f"{s.contender:<24}{s.workers:>5}  {_med(s.vcs_per_op):>10}"
            f"{_med(s.cpu_us_per_op):>11}    {s.reference or '-':<24}{pool_size:>5}  "
            f"{_med(base.vcs_per_op if base else None):>10}"
            f"{_med(base.cpu_us_per_op if base else None):>11}"
        )
    lines += [
        "  getrusage(RUSAGE_SELF) from each slice's warm-up end to its end: the whole",
        "  process, so the pools' background threads and the harness are included.",
    ]
    return lines


def micro_spreads(micro: Sequence[MicroResult]) -> dict[str, Spread]:
    """µs per uncontended pair, per contender."""
    by: dict[str, list[float]] = defaultdict(list)
    for m in micro:
        by[m.contender].append(m.ns_per_pair / 1000.0)
    return {name: s for name, values in by.items() if (s := Spread.of(values)) is not None}


def micro_ratios(micro: Sequence[MicroResult], base: str) -> dict[str, Spread]:
    """Each contender's time per pair over ``base``'s in the same round.

    Absolute µs depend on the host and its load; the ratio to a pool measured
    seconds apart is the more portable number.
    """
    by_round: dict[int, dict[str, float]] = defaultdict(dict)
    for m in micro:
        by_round[m.round][m.contender] = m.ns_per_pair
    ratios: dict[str, list[float]] = defaultdict(list)
    for row in by_round.values():
        if base in row:
            for name, ns in row.items():
                ratios[name].append(safe_ratio(ns, row[base]))
    return {name: s for name, values in ratios.items() if (s := Spread.of(values)) is not None}


def memory_extra(memory: Sequence[MemoryResult], target_n: int) -> dict[str, Spread]:
    """KiB each pool adds beyond the bare connections, paired per repetition, scaled to
    ``target_n`` connections when fewer could be measured."""
    by_rep: dict[int, dict[str, MemoryResult]] = defaultdict(dict)
    for m in memory:
        by_rep[m.repetition][m.contender] = m
    extra: dict[str, list[float]] = defaultdict(list)
    for rep in by_rep.values():
        bare = rep.get(BARE)
        if bare is None:
            continue
        for name, m in rep.items():
            value = m.traced_bytes - (0 if name == BARE else bare.traced_bytes)
            extra[name].append(value * target_n / m.connections / 1024.0)
    return {name: s for name, values in extra.items() if (s := Spread.of(values)) is not None}


@dataclass(frozen=True)
class Target:
    """One line of the issue's target list with its verdict."""

    target: str
    measured: str
    verdict: str  # MET, MISSED or NOT MEASURED


_COMPARE: dict[str, Callable[[float, float], bool]] = {
    "<=": lambda v, bound: v <= bound,
    "<": lambda v, bound: v < bound,
    ">=": lambda v, bound: v >= bound,
}


def _verdict(spread: Spread | None, op: str, bound: float) -> str:
    if spread is None or math.isnan(spread.median):
        return "NOT MEASURED"
    return "MET" if _COMPARE[op](spread.median, bound) else "MISSED"


def _floor_note(floor: Summary | None, kind: str) -> str:
    """``; fifo_floor...: X`` -- what the featureless FIFO hand-off reached on the
    same measure in the same run: how much of a target any FIFO pool can reach
    on this host, so that a miss comes with its reason."""
    if floor is None:
        return ""
    spread = floor.vs_psycopg_pool if kind == "x" else floor.vs_reference
    if spread is None:
        return ""
    value = f"{spread.median:.2f}x" if kind == "x" else f"{spread.median:.0%}"
    return f"; {floor.contender}: {value}"


def evaluate_targets(
    summaries: Sequence[Summary],
    micro: Sequence[MicroResult],
    memory: Sequence[MemoryResult],
    *,
    threads: Sequence[int],
    tasks: Sequence[int],
    memory_n: int,
) -> list[Target]:
    """Issue 5's targets, each judged on medians over rounds."""
    by = {(s.contender, s.mode, s.workers): s for s in summaries}
    targets: list[Target] = []

    pair = micro_spreads(micro).get("poolkeeper")
    targets.append(
        Target(
            "uncontended getconn+putconn <= 1.0 µs",
            "-" if pair is None else f"{fmt(pair)} µs",
            _verdict(pair, "<=", 1.0),
        )
    )

    for n in (1, 10):
        if n not in threads:
            continue
        s = by.get(("poolkeeper", "sync", n))
        spread = s.vs_reference if s else None
        targets.append(
            Target(
                f"{n} thread{'s' * (n > 1)}, 10 conns: >= 95% of dedicated psycopg",
                fmt(spread, "pct"),
                _verdict(spread, ">=", 0.95),
            )
        )

    for n in (16, 64):
        if n not in threads:
            continue
        s = by.get(("poolkeeper", "sync", n))
        spread = s.vs_psycopg_pool if s else None
        targets.append(
            Target(
                f"{n} threads: >= 1.25x psycopg_pool throughput",
                fmt(spread, "x") + _floor_note(by.get(("fifo_floor", "sync", n)), "x"),
                _verdict(spread, ">=", 1.25),
            )
        )
        p99 = s.p99_over_p50 if s else None
        targets.append(
            Target(
                f"{n} threads: p99 wait <= 3x median wait",
                "-"
                if p99 is None or s is None
                else f"{fmt(p99, 'x')} (p50 {_med(s.wait_p50_us)} µs)",
                _verdict(p99, "<=", 3.0),
            )
        )
        mx = s.max_over_p50 if s else None
        share = s.min_worker_share if s else None
        measured = "-" if mx is None else f"{fmt(mx, 'x')}"
        if share is not None:
            measured += f"; min/med thread ops {share.median:.2f}"
        targets.append(
            Target(
                f"{n} threads: no starvation, max wait < 10x median",
                measured,
                _verdict(mx, "<", 10.0),
            )
        )

    for name, driver, floor, fifo in (
        ("poolkeeper_async", "psycopg", 0.90, "fifo_floor_async"),
        ("poolkeeper_asyncpg", "asyncpg", 0.85, "fifo_floor_asyncpg"),
    ):
        for n in tasks:
            s = by.get((name, "async", n))
            spread = s.vs_reference if s else None
            targets.append(
                Target(
                    f"asyncio {driver}, {n} tasks: >= {floor:.0%} of dedicated",
                    fmt(spread, "pct") + _floor_note(by.get((fifo, "async", n)), "pct"),
                    _verdict(spread, ">=", floor),
                )
            )

    extra = memory_extra(memory, memory_n).get("poolkeeper")
    targets.append(
        Target(
            f"{memory_n} idle conns: < 1 MiB Python heap beyond the driver's",
            "-" if extra is None else f"{fmt(extra)} KiB",
            _verdict(extra, "<", 1024.0),
        )
    )
    return targets


def render(
    summaries: Sequence[Summary],
    micro: Sequence[MicroResult],
    memory: Sequence[MemoryResult],
    targets: Sequence[Target],
    *,
    header: Sequence[str],
    pool_size: int,
    memory_n: int,
    notes: Sequence[str] = (),
) -> str:
    """The whole printed report."""
    out: list[str] = [*header, ""]
    for mode, title in (
        ("sync", f"Threads over a {pool_size}-connection pool"),
        ("async", f"asyncio tasks over {pool_size} connections"),
    ):
        if any(s.mode == mode for s in summaries):
            out += [f"== {title} ==", *throughput_table(summaries, mode, pool_size), ""]
        if mode == "sync" and (breakdown := time_breakdown(summaries, pool_size)):
            out += [*breakdown, ""]
    if any(s.mode in ("sync", "async") for s in summaries):
        out += [
            "  vs dedicated: per-round ratio to the same driver's dedicated baseline at",
            f"  min(workers, {pool_size}); * poolkeeper and fifo_floor rows only: ratio to "
            "psycopg_pool (sync/async) or asyncpg's pool (driver=asyncpg), same round.",
            "  fifo_floor*: not pools to use; featureless first-come-first-served",
            "  hand-offs (benchmarks/*contenders.py), the floor for any pool's waiting path.",
            "  ops/worker: the fewest, median and most ops of one thread/task in a cell",
            "  (median over rounds); a starved worker shows as a min far below the median.",
            "  cs/op vol/invol, CPU µs/op: voluntary / involuntary context switches and",
            "  CPU time of the whole process per op (median over rounds).",
            "",
        ]
    out += _micro_section(micro)
    out += _memory_section(memory, memory_n)
    if targets:
        out.append("== Issue 5 targets (poolkeeper, default settings) ==")
        for t in targets:
            out.append(f"{t.verdict:<13}{t.target:<60}{t.measured}")
        out.append("")
    out += list(notes)
    return "\n".join(out).rstrip() + "\n"


def _micro_section(micro: Sequence[MicroResult]) -> list[str]:
    spreads = micro_spreads(micro)
    if not spreads:
        return []
    ratios = micro_ratios(micro, MICRO_BASE)
    out = [
        "== Uncontended getconn + putconn, one thread, no query (fastest of 5 runs per round) ==",
        f"{'contender':<24}{'µs per pair':<28}{'time / ' + MICRO_BASE + ' (same round)'}",
    ]
    for name in sorted(spreads, key=lambda n: (n == NOOP, ORDER.get(n, 99))):
        label = "  (harness floor: loop + 2 calls)" if name == NOOP else ""
        out.append(f"{name:<24}{fmt(spreads[name]):<28}{fmt(ratios.get(name), 'x')}{label}")
    return [*out, ""]


def _memory_section(memory: Sequence[MemoryResult], memory_n: int) -> list[str]:
    extra = memory_extra(memory, memory_n)
    if not extra:
        return []
    out = [f"== Python heap for {memory_n} idle connections (tracemalloc, KiB) =="]
    for name in sorted(extra, key=lambda n: (n != BARE, n)):
        label = "total for the bare connections" if name == BARE else "beyond bare"
        out.append(f"{name:<24}{fmt(extra[name]):<28}{label}")
    return [*out, ""]

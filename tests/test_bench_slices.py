"""The benchmark harness's slices: how a level is scheduled and how slices merge into a cell.

Pure code: no server and no pools, only the bookkeeping the report's ratios rest on.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

from benchmarks.report import summarize, time_breakdown
from benchmarks.run import BenchResults, build_parser, config_from_args, load_results
from benchmarks.runner import BenchConfig, Level, Skips
from benchmarks.stats import SliceRun, Usage, WorkerOutcome, merge_slices

S = 1_000_000_000  # ns per second


@dataclass(frozen=True)
class Fake:
    """Stands in for a contender: the schedule only looks at the name."""

    name: str
    dedicated: bool = False


def test_merging_two_slices_sums_ops_and_takes_percentiles_over_the_union() -> None:
    first = SliceRun(
        measure_start_ns=0,
        outcomes=(
            WorkerOutcome([1000, 1000, 1000], 0, 1 * S, None),
            WorkerOutcome([1000], 2, S // 2, "PoolError"),
        ),
        hung=0,
    )
    second = SliceRun(
        measure_start_ns=5 * S,
        outcomes=(
            WorkerOutcome([9000], 1, 5 * S + S // 2, "PoolError"),
            WorkerOutcome([9000, 9000], 0, 5 * S + S // 4, None),
        ),
        hung=0,
    )

    cell = merge_slices("pool", "sync", 2, 3, [first, second])

    assert (cell.contender, cell.mode, cell.workers, cell.round) == ("pool", "sync", 2, 3)
    assert cell.ops == 7
    assert cell.worker_ops == (4, 3)
    # Measured time is each slice's own (1 s and 0.5 s), not the 5.5 s between them.
    assert cell.elapsed_s == pytest.approx(1.5)
    assert cell.ops_per_s == pytest.approx(7 / 1.5)
    # Over the union (four 1 µs waits, three 9 µs) the median is 1 µs; averaging the
    # slices' medians would say 5 µs.
    assert cell.wait_p50_us == 1.0
    assert cell.wait_p99_us == 9.0
    assert cell.wait_max_us == 9.0
    assert cell.errors == 3
    assert cell.error_kind == "PoolError"


def test_a_single_slice_is_the_whole_cell_and_a_hung_worker_is_reported() -> None:
    only = SliceRun(
        measure_start_ns=S,
        outcomes=(WorkerOutcome([3000, 1000, 2000], 0, 2 * S, "crash: boom"), None),
        hung=1,
    )

    cell = merge_slices("pool", "async", 2, 0, [only])

    assert cell.ops == 3
    assert cell.worker_ops == (3, 0)
    assert cell.elapsed_s == pytest.approx(1.0)
    assert (cell.wait_p50_us, cell.wait_max_us) == (2.0, 3.0)
    assert cell.error_kind == "crash: boom; hung: 1 worker still blocked"


def test_a_cell_without_ops_has_no_wait_percentiles() -> None:
    cell = merge_slices("pool", "sync", 1, 0, [SliceRun(0, (WorkerOutcome([], 0, 0, None),), 0)])
    assert cell.ops == 0
    assert math.isnan(cell.wait_p50_us)


def test_usage_is_summed_over_slices_and_divided_by_all_ops() -> None:
    first = SliceRun(
        0, (WorkerOutcome([1000] * 3, 0, S, None),), 0, usage=Usage(vcs=10, ivcs=1, cpu_s=0.0003)
    )
    second = SliceRun(
        0, (WorkerOutcome([1000] * 1, 0, S, None),), 0, usage=Usage(vcs=2, ivcs=3, cpu_s=0.0001)
    )

    cell = merge_slices("pool", "sync", 1, 0, [first, second])

    # Totals over the cell (12 switches, 400 µs over 4 ops), not a mean of the
    # slices' own per-op figures (which would give 2.67 switches per op).
    assert cell.vcs_per_op == pytest.approx(3.0)
    assert cell.ivcs_per_op == pytest.approx(1.0)
    assert cell.cpu_us_per_op == pytest.approx(100.0)


def test_usage_is_missing_without_ops_or_when_a_slice_was_not_sampled() -> None:
    sampled = SliceRun(0, (WorkerOutcome([1000], 0, S, None),), 0, usage=Usage(5, 0, 0.001))
    unsampled = SliceRun(0, (WorkerOutcome([1000], 0, S, None),), 0)
    idle = SliceRun(0, (WorkerOutcome([], 0, S, None),), 0, usage=Usage(5, 0, 0.001))

    for parts in ([sampled, unsampled], [idle]):
        cell = merge_slices("pool", "sync", 1, 0, parts)
        assert math.isnan(cell.vcs_per_op)
        assert math.isnan(cell.ivcs_per_op)
        assert math.isnan(cell.cpu_us_per_op)


def _sampled(vcs: float, cpu_us: float) -> SliceRun:
    """A slice of 100 ops with ``vcs`` voluntary switches and ``cpu_us`` µs CPU per op."""
    ops = 100
    return SliceRun(
        0,
        (WorkerOutcome([1000] * ops, 0, S, None),),
        0,
        usage=Usage(round(vcs * ops), 0, cpu_us * ops / 1e6),
    )


def test_where_the_time_goes_sets_pools_above_pool_size_beside_dedicated_at_pool_size() -> None:
    figures = {
        ("poolkeeper", 16): (4.0, 120.0),
        ("poolkeeper", 10): (1.0, 80.0),  # at pool size: not in the block
        ("psycopg_pool", 16): (5.0, 130.0),
        ("dedicated_psycopg", 10): (1.5, 78.0),
        ("sqlalchemy", 16): (9.0, 200.0),  # not one of the compared pools
    }
    cells = [
        merge_slices(name, "sync", workers, r, [_sampled(vcs, cpu)])
        for (name, workers), (vcs, cpu) in figures.items()
        for r in range(3)
    ]

    lines = time_breakdown(summarize(cells, 10), 10)

    rows = [line.split() for line in lines[2:-2]]
    assert rows == [
        ["poolkeeper", "16", "4.00", "120", "dedicated_psycopg", "10", "1.50", "78.0"],
        ["psycopg_pool", "16", "5.00", "130", "dedicated_psycopg", "10", "1.50", "78.0"],
    ]


def test_where_the_time_goes_is_left_out_for_results_without_usage() -> None:
    cells = [
        merge_slices(name, "sync", workers, 0, [_slice(10)])
        for name, workers in (("poolkeeper", 16), ("dedicated_psycopg", 10))
    ]
    assert time_breakdown(summarize(cells, 10), 10) == []


RESULTS = Path(__file__).resolve().parent.parent / "benchmarks" / "results"


def test_usage_survives_a_json_round_trip_and_missing_usage_stays_missing(
    tmp_path: Path,
) -> None:
    cells = [
        merge_slices("poolkeeper", "sync", 16, 0, [_sampled(4.0, 120.0)]),
        merge_slices("dedicated_psycopg", "sync", 10, 0, [_slice(10)]),
    ]
    path = tmp_path / "out.json"
    path.write_text(json.dumps(BenchResults(BenchConfig(), {}, cells).to_json(), allow_nan=False))

    loaded = {c.contender: c for c in load_results(str(path)).cells}

    assert loaded["poolkeeper"].vcs_per_op == pytest.approx(4.0)
    assert loaded["poolkeeper"].cpu_us_per_op == pytest.approx(120.0)
    assert math.isnan(loaded["dedicated_psycopg"].cpu_us_per_op)


#: The run whose tables docs/benchmarks.md publishes (the only one kept).
PUBLISHED = RESULTS / "issue5-pg15-0035c8afab84.json"

#: What results saved before context switches and CPU were recorded, and before cells
#: were sliced, lack.
_USAGE_FIELDS = ("vcs_per_op", "ivcs_per_op", "cpu_us_per_op")


def test_the_published_run_is_the_only_one_kept_and_the_docs_print_its_report() -> None:
    assert sorted(RESULTS.glob("*.json")) == [PUBLISHED]
    docs = (RESULTS.parent.parent / "docs" / "benchmarks.md").read_text()
    assert PUBLISHED.name in docs
    # docs/benchmarks.md says `--report` on the file prints exactly its results block.
    (published,) = re.findall(r"```text\n(.*?)```", docs, re.S)
    assert published == load_results(str(PUBLISHED)).report()


def test_results_saved_before_usage_and_slices_still_load_and_report(tmp_path: Path) -> None:
    data = json.loads(PUBLISHED.read_text())
    del data["config"]["slices"]
    for cell in data["cells"]:
        for field in _USAGE_FIELDS:
            del cell[field]
    old = tmp_path / "old.json"
    old.write_text(json.dumps(data))

    results = load_results(str(old))

    assert results.config.slices == 1
    assert all(math.isnan(c.vcs_per_op) for c in results.cells)
    report = results.report()
    assert "Where the time goes" not in report
    assert "cs/op vol/invol" in report


def _slice(ops: int, *, hung: int = 0) -> SliceRun:
    return SliceRun(0, (WorkerOutcome([1000] * ops, 0, S // 10, None),), hung)


def test_passes_rotate_and_only_a_contenders_first_slice_gets_the_full_warmup() -> None:
    cfg = BenchConfig(duration=0.9, warmup=0.15, slices=3, slice_warmup=0.03)
    level = Level(
        [Fake("a"), Fake("b"), Fake("c", dedicated=True)],
        1,
        mode="sync",
        unit="threads",
        cfg=cfg,
        round_no=0,
        skips=Skips("test"),
    )

    plan = []
    for contender, warmup, duration in level.schedule():
        plan.append((contender.name, warmup))
        assert duration == pytest.approx(0.3)
        level.add(contender, _slice(10))
    cells = level.merged()

    assert plan == [
        ("a", 0.15), ("b", 0.15), ("c", 0.15),
        ("b", 0.03), ("c", 0.03), ("a", 0.03),
        ("c", 0.03), ("a", 0.03), ("b", 0.03),
    ]  # fmt: skip
    # One cell per contender, in the order of their first slices.
    assert [(c.contender, c.ops) for c in cells] == [("a", 30), ("b", 30), ("c", 30)]


def test_one_slice_runs_each_contender_once_in_order_for_the_whole_duration() -> None:
    cfg = BenchConfig(duration=1.0, warmup=0.15, slices=1)
    level = Level(
        [Fake("a"), Fake("b")],
        10,
        mode="sync",
        unit="threads",
        cfg=cfg,
        round_no=0,
        skips=Skips("test"),
    )
    assert [(c.name, w, d) for c, w, d in level.schedule()] == [("a", 0.15, 1.0), ("b", 0.15, 1.0)]


def test_a_contender_that_hangs_gets_no_more_slices_but_keeps_its_cell() -> None:
    skips = Skips("test")
    cfg = BenchConfig(slices=3)
    level = Level(
        [Fake("a"), Fake("b")],
        10,
        mode="async",
        unit="tasks",
        cfg=cfg,
        round_no=1,
        skips=skips,
    )

    ran = []
    for contender, _, _ in level.schedule():
        ran.append(contender.name)
        level.add(contender, _slice(5, hung=1 if contender.name == "b" else 0))
    cells = {c.contender: c for c in level.merged()}

    assert ran == ["a", "b", "a", "a"]
    assert "b" in skips
    assert cells["b"].error_kind == "hung: 1 worker still blocked"
    assert cells["a"].ops == 15


def test_the_published_run_reports_where_the_time_goes() -> None:
    report = load_results(str(PUBLISHED)).report()

    assert "Where the time goes" in report


def test_only_keeps_the_dedicated_baselines_and_the_peers_of_the_chosen_pools() -> None:
    def only(names: str) -> set[str]:
        return set(config_from_args(build_parser().parse_args(["--only", names])).only or ())

    dedicated = {
        "dedicated_psycopg",
        "dedicated_psycopg2",
        "dedicated_async_psycopg",
        "dedicated_asyncpg",
    }
    # No row of SQLAlchemy's is held against psycopg_pool, so none is run for them.
    assert only("sqlalchemy,sqlalchemy_poolkeeper") == {
        "sqlalchemy",
        "sqlalchemy_poolkeeper",
        *dedicated,
    }
    assert only("poolkeeper, poolkeeper_asyncpg") == {
        "poolkeeper",
        "psycopg_pool",
        "poolkeeper_asyncpg",
        "asyncpg_pool",
        *dedicated,
    }
    assert only("fifo_floor_async") == {"fifo_floor_async", "psycopg_pool_async", *dedicated}
    # The help says the same thing as the code.
    help_text = " ".join(build_parser().format_help().split())
    assert "the dedicated baselines are kept" in help_text
    assert "poolkeeper or fifo_floor contender is compared with" in help_text

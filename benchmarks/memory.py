"""Python heap held by a pool of idle connections, beyond the connections themselves.

tracemalloc sees only the Python allocator, so libpq's C memory is out of the
picture on both sides. We trace (a) N bare psycopg connections in a list and (b) a
pool holding N idle connections; (b) - (a) is what the pool adds. The issue's target
is for N = 100.
"""

from __future__ import annotations

import functools
import gc
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

from benchmarks.contenders import note, poolkeeper_settings
from benchmarks.runner import BenchConfig, Skips
from benchmarks.stats import MemoryResult
from poolkeeper import Pool

BARE = "bare_psycopg"
# Background threads of a pool may still be finishing their start-up bookkeeping.
_SETTLE_S = 0.3


def _client_backends(dsn: str) -> tuple[int, int]:
    """``max_connections`` and the number of client backends other than this query's."""
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT current_setting('max_connections')::int,"
            " (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend')"
        ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1]) - 1


def _wait_backends_at_most(dsn: str, count: int, timeout: float = 10.0) -> None:
    """Closed connections leave the server asynchronously; wait so the next set fits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _client_backends(dsn)[1] <= count:
            return
        time.sleep(0.05)


def _bare(dsn: str, n: int) -> Callable[[], None]:
    import psycopg

    conns = [psycopg.connect(dsn, autocommit=True) for _ in range(n)]

    def close() -> None:
        for conn in conns:
            conn.close()

    return close


def _poolkeeper(dsn: str, n: int) -> Callable[[], None]:
    pool = Pool(dsn, **poolkeeper_settings(n))
    pool.wait()
    return pool.close


def _psycopg_pool(dsn: str, n: int) -> Callable[[], None]:
    from psycopg_pool import ConnectionPool

    pool: ConnectionPool[Any] = ConnectionPool(
        dsn, min_size=n, max_size=n, kwargs={"autocommit": True}, open=True
    )
    pool.wait()
    return pool.close


BUILDERS: dict[str, Callable[[str, int], Callable[[], None]]] = {
    BARE: _bare,
    "poolkeeper": _poolkeeper,
    "psycopg_pool": _psycopg_pool,
}


def traced_bytes(build: Callable[[], Callable[[], None]]) -> int:
    """Python heap still held after ``build()`` returns (its allocations that stay alive)."""
    gc.collect()
    tracemalloc.start()
    try:
        close = build()
        time.sleep(_SETTLE_S)
        gc.collect()
        used = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    close()
    return used


def connections_to_use(dsn: str, wanted: int) -> tuple[int, str | None]:
    """How many connections fit on the server now, with a warning if fewer than wanted."""
    max_conn, others = _client_backends(dsn)
    # The superuser may use the reserved slots too, so all of max_connections counts.
    room = max_conn - others
    if room >= wanted:
        return wanted, None
    n = max(1, room)
    return n, (
        f"server max_connections={max_conn} with {others} other client connections leaves "
        f"room for {room}; measured {n} connections and scaled to {wanted} "
        f"(raise max_connections to measure {wanted} directly)"
    )


def run_memory(dsn: str, cfg: BenchConfig, skips: Skips) -> tuple[list[MemoryResult], str | None]:
    """Trace every builder ``cfg.memory_repetitions`` times, interleaved."""
    names = [name for name in BUILDERS if name == BARE or cfg.wants(name)]
    n, warning = connections_to_use(dsn, cfg.memory_connections)
    if warning:
        note(f"  WARNING: {warning}")
    _, baseline = _client_backends(dsn)
    # First use fills module-level caches (adapters, lazily imported modules); keep
    # that one-time cost out of both sides.
    for name in list(names):
        try:
            BUILDERS[name](dsn, 1)()
        except Exception as exc:
            skips.add(name, f"warm-up failed: {exc!r}")
            names.remove(name)
    results: list[MemoryResult] = []
    for rep in range(cfg.memory_repetitions):
        line = []
        for name in names[rep % len(names) :] + names[: rep % len(names)]:
            _wait_backends_at_most(dsn, baseline)
            builder = BUILDERS[name]
            try:
                used = traced_bytes(functools.partial(builder, dsn, n))
            except Exception as exc:
                skips.add(name, f"failed: {exc!r}")
                continue
            results.append(MemoryResult(name, rep, n, used))
            line.append(f"{name} {used / 1024:,.0f} KiB")
        note(f"  memory [{rep + 1}] {n} connections: " + ", ".join(line))
    _wait_backends_at_most(dsn, baseline)
    return results, warning

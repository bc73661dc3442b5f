"""Where a pooled query's extra client CPU goes, at one thread.

``python -m benchmarks.overhead [DSN]`` compares, per ``SELECT 1`` with a cursor:
a plain psycopg connection, the pool's connection class on its own (every
statement judged for session changes), and the same through
``Pool.getconn``/``putconn``. It reports client CPU time (``time.process_time``),
which on a shared two-core host is far steadier than wall time, and then times each
step of ``putconn`` right after a query, when the CPU caches are cold. Last, what
``reset="auto"`` costs per statement (a verdict already known; a new statement
judged by the cheap test or by the lexer) and per return that leaves the fast path
(the reported settings compared with the baseline), and ``putconn``
alone per return: clean, and after a borrower changed a client-side attribute the
return puts back. Last, ``putconn`` per return on each driver: clean, and flagged
for a settings check (a statement that may have run user code) that finds nothing
changed, which is what most returns after real queries are.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import psycopg
from psycopg.rows import dict_row

from poolkeeper import AsyncPool, Pool
from poolkeeper.drivers.psycopg_sync import PoolConnection
from poolkeeper.session_state import CHECK, KNOWN_VERDICTS, touches_session

__all__ = ["main"]

_QUERIES = 3000
_ROUNDS = 8


def _query(conn: Any) -> None:
    with conn.cursor() as cur:
        cur.execute("SELECT 1")
        cur.fetchone()


def _per_query(loop: Any) -> tuple[float, float]:
    cpu, wall = time.process_time(), time.perf_counter()
    loop()
    return (
        (time.process_time() - cpu) / _QUERIES * 1e6,
        (time.perf_counter() - wall) / _QUERIES * 1e6,
    )


def _cold_putconn_steps(pool: Pool) -> dict[str, float]:
    """Nanoseconds per step of putconn's fast path, each measured right after a query."""
    clock = time.perf_counter_ns
    conn = pool.getconn()
    rec = pool._lent[conn]
    totals = dict.fromkeys(("lent map pop", "state read", "clock read", "expiry checks"), 0)
    for _ in range(_QUERIES):
        _query(conn)
        t0 = clock()
        pool._lent.pop(conn)
        t1 = clock()
        _ = pool._return_state(conn) != pool._clean_state
        t2 = clock()
        now = time.monotonic()
        t3 = clock()
        _ = rec.generation != pool._generation or now >= rec.expires_at
        t4 = clock()
        pool._lent[conn] = rec
        for key, spent in zip(totals, (t1 - t0, t2 - t1, t3 - t2, t4 - t3), strict=True):
            totals[key] += spent
    pool.putconn(conn)
    return {key: spent / _QUERIES for key, spent in totals.items()}


def _queries_on(conn: Any) -> Callable[[], None]:
    """A loop of the benchmark's queries on one connection."""

    def loop() -> None:
        for _ in range(_QUERIES):
            _query(conn)

    return loop


def _queries_through(pool: Pool) -> Callable[[], None]:
    """A loop of the benchmark's queries, each on a connection borrowed and returned."""

    def loop() -> None:
        get, put = pool.getconn, pool.putconn
        for _ in range(_QUERIES):
            conn = get()
            _query(conn)
            put(conn)

    return loop


#: New statements for the per-statement cost: (label, text).
STATEMENTS = (
    ("known verdict (any statement seen before)", "SELECT 1"),
    ("new, cheap test: SELECT 1", "SELECT 1"),
    ("new, cheap test: a parameterised SELECT", "SELECT id, name FROM users WHERE id = $1"),
    ("new, cheap test: leading comment", "/* app=web */ SELECT a FROM t WHERE b = 'x'"),
    ("new, lexer: INSERT with a column list", "INSERT INTO t (a, b) VALUES ($1, $2);"),
    ("new, lexer: two statements", "SELECT temperature FROM weather; SELECT 2"),
    ("new, lexer: a SET behind a comment", "/* tag */ SET search_path TO app"),
)


def _statement_costs() -> dict[str, float]:
    """Microseconds to judge one statement: best of 5 runs of 2,000."""
    costs: dict[str, float] = {}
    for label, text in STATEMENTS:
        known = label.startswith("known")
        best = float("inf")
        for _ in range(5):
            KNOWN_VERDICTS.clear()
            touches_session(text)
            start = time.perf_counter_ns()
            for _ in range(2000):
                if not known:
                    KNOWN_VERDICTS.clear()
                touches_session(text)
            best = min(best, (time.perf_counter_ns() - start) / 2000)
        costs[label] = best / 1000
    return costs


def _settings_check_cost(pool: Pool) -> float:
    """Microseconds for the reported-settings comparison a return off the fast path
    makes (psycopg: one libpq lookup per reported setting)."""
    conn = pool.getconn()
    driver = pool._driver
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter_ns()
        for _ in range(2000):
            conn._pk_dirty = CHECK
            driver.session_dirty(conn)
        best = min(best, (time.perf_counter_ns() - start) / 2000)
    pool.putconn(conn)
    return best / 1000


def _return_costs(pool: Pool) -> dict[str, float]:
    """Nanoseconds per ``putconn`` (warm): clean, and after the borrower changed a
    client-side attribute, which the return puts back (no I/O)."""
    clock = time.perf_counter_ns
    changes: dict[str, Any] = {
        "clean": None,
        "autocommit changed": lambda conn: setattr(conn, "autocommit", False),
        "row_factory changed": lambda conn: setattr(conn, "row_factory", dict_row),
    }
    costs: dict[str, float] = {}
    for label, change in changes.items():
        spent = 0
        for _ in range(_QUERIES):
            conn = pool.getconn()
            if change is not None:
                change(conn)
            start = clock()
            pool.putconn(conn)
            spent += clock() - start
        costs[label] = spent / _QUERIES
    return costs


def _best_per_return(spent: list[int]) -> float:
    """Nanoseconds per return: the best of five equal runs (see benchmarks/micro.py)."""
    run = len(spent) // 5
    return min(sum(spent[i * run : (i + 1) * run]) / run for i in range(5))


def _sync_driver_returns(dsn: str, driver: str) -> dict[str, float]:
    """Nanoseconds per ``Pool.putconn`` on ``driver``: clean, and flagged CHECK."""
    clock = time.perf_counter_ns
    costs: dict[str, float] = {}
    with Pool(dsn, driver=driver, min_size=1, max_size=1, name=f"pk-overhead-{driver}") as pool:
        for flag in (False, CHECK):
            spent = []
            for _ in range(_QUERIES):
                conn = pool.getconn()
                conn._pk_dirty = flag  # as a statement's verdict leaves it
                start = clock()
                pool.putconn(conn)
                spent.append(clock() - start)
            costs["clean" if flag is False else "settings check"] = _best_per_return(spent)
        assert pool.stats().resets == 0
    return costs


async def _async_driver_returns(dsn: str, driver: str) -> dict[str, float]:
    """Nanoseconds per ``AsyncPool.putconn`` on ``driver``: clean, and flagged CHECK."""
    clock = time.perf_counter_ns
    costs: dict[str, float] = {}
    name = f"pk-overhead-async-{driver}"
    async with AsyncPool(dsn, driver=driver, min_size=1, max_size=1, name=name) as pool:
        for flag in (False, CHECK):
            spent = []
            for _ in range(_QUERIES):
                conn = await pool.getconn()
                conn._pk_dirty = flag
                start = clock()
                await pool.putconn(conn)
                spent.append(clock() - start)
            costs["clean" if flag is False else "settings check"] = _best_per_return(spent)
        assert pool.stats().resets == 0
    return costs


def _driver_returns(dsn: str) -> dict[str, dict[str, float]]:
    """Per pool and driver: nanoseconds per return, clean and flagged CHECK."""
    return {
        "Pool, psycopg": _sync_driver_returns(dsn, "psycopg"),
        "Pool, psycopg2": _sync_driver_returns(dsn, "psycopg2"),
        "AsyncPool, psycopg": asyncio.run(_async_driver_returns(dsn, "psycopg")),
        "AsyncPool, asyncpg": asyncio.run(_async_driver_returns(dsn, "asyncpg")),
    }


def main(argv: list[str] | None = None) -> int:
    """Print client CPU per query for the three variants, then the cold putconn steps."""
    args = sys.argv[1:] if argv is None else argv
    dsn = args[0] if args else os.environ.get("DATABASE_URL", "")
    if not dsn:
        print("usage: python -m benchmarks.overhead DSN (or set DATABASE_URL)", file=sys.stderr)
        return 2
    plain = psycopg.connect(dsn, autocommit=True)
    tracked = PoolConnection.connect(dsn, autocommit=True)
    tracked._pk_dirty = False  # as the driver leaves it: every statement is judged
    pool = Pool(dsn, min_size=1, max_size=1, connect_kwargs={"autocommit": True})
    pool.wait(10)
    variants = {
        "plain psycopg connection": _queries_on(plain),
        "pool's connection class": _queries_on(tracked),
        "through Pool get/put": _queries_through(pool),
    }
    samples: dict[str, list[tuple[float, float]]] = {name: [] for name in variants}
    for _ in range(_ROUNDS):
        for name, loop in variants.items():
            samples[name].append(_per_query(loop))
    print(f"per SELECT 1, median of {_ROUNDS} interleaved rounds of {_QUERIES}:")
    for name, values in samples.items():
        cpu = statistics.median(v[0] for v in values)
        wall = statistics.median(v[1] for v in values)
        print(f"  {name:26s} client CPU {cpu:6.1f} µs   wall {wall:6.1f} µs")
    print("putconn's fast-path steps, each right after a query (cold caches):")
    for step, ns in _cold_putconn_steps(pool).items():
        print(f"  {step:15s} {ns:6.0f} ns")
    print("reset='auto' per statement (best of 5 runs of 2,000):")
    for label, us in _statement_costs().items():
        print(f"  {label:42s} {us:6.2f} µs")
    print("reset='auto' per return off the fast path (in a transaction, or flagged):")
    print(f"  {'reported settings compared':42s} {_settings_check_cost(pool):6.2f} µs")
    print("per return (putconn alone, warm): clean, and a client attribute put back:")
    for label, ns in _return_costs(pool).items():
        print(f"  {label:42s} {ns / 1000:6.2f} µs")
    pool.close()
    print("per return on each driver (putconn alone, warm, best of 5 runs): clean, and")
    print("flagged for a settings check that finds nothing changed:")
    for label, costs in _driver_returns(dsn).items():
        clean, check = costs["clean"], costs["settings check"]
        print(f"  {label:20s} clean {clean / 1000:5.2f} µs   settings check {check / 1000:5.2f} µs")
    plain.close()
    tracked.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

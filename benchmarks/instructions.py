"""What a pooled query costs the client, in CPU instructions rather than seconds.

``python -m benchmarks.instructions [--dsn DSN] [--queries N]`` runs the issue's
one-thread loop (checkout, cursor, ``SELECT 1``, fetch, close, return) under
``valgrind --tool=callgrind`` for N and for 5N iterations, in separate processes,
and subtracts: what remains is the instructions of one iteration, with start-up,
imports and pool opening cancelled out. Instruction counts do not depend on what
else the host is doing, so on a shared machine whose speed drifts by ±30 % they
show a 1 % difference that throughput medians cannot.

Variants (each a checkout/return pair around the same query):

* ``dedicated``: a plain ``psycopg.connect()``; checkout is a closure call.
* ``pool_connection``: one connection of a poolkeeper ``Pool`` (every statement
  judged for session changes), used like ``dedicated``: the cost of ``reset="auto"``.
* ``poolkeeper``: ``Pool.getconn`` / ``Pool.putconn``, default settings.
* ``psycopg_pool``: ``psycopg_pool.ConnectionPool.getconn`` / ``putconn``.
* ``pair_only``: ``Pool.putconn(Pool.getconn())`` with no query, and
  ``floor``: the same loop around two trivial Python methods.

Contended variants (``--contended``), the same query from more borrowers than the
10 connections, so that every borrow waits and is handed its connection:

* ``threads_poolkeeper``, ``threads_fifo_floor``, ``threads_psycopg_pool``:
  ``--threads`` threads (16) sharing the iterations. valgrind runs one thread at a
  time and switches at blocking calls, much as the GIL does; kernel time (the
  futex and scheduler work of each wake-up) is not counted, so this is the
  Python side of contention only.
* ``async_dedicated``, ``async_poolkeeper`` (psycopg) and ``asyncpg_dedicated``,
  ``asyncpg_poolkeeper``: 10 tasks each owning a connection, against ``--tasks``
  tasks (64) over an ``AsyncPool`` of 10.

Counts include every thread of the process (the pools' background workers idle
meanwhile); the server's work is in another process and not counted.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Awaitable, Callable
from typing import Any

__all__ = ["VARIANTS", "count_per_iteration", "main"]

VARIANTS = ("dedicated", "pool_connection", "poolkeeper", "psycopg_pool", "pair_only", "floor")
CONTENDED_VARIANTS = (
    "threads_poolkeeper",
    "threads_fifo_floor",
    "threads_psycopg_pool",
    "async_dedicated",
    "async_poolkeeper",
    "asyncpg_dedicated",
    "asyncpg_poolkeeper",
    "async_fifo_floor",
    "asyncpg_fifo_floor",
)
#: connections in every contended variant, as in the throughput benchmark
POOL_SIZE = 10
#: The measured processes' environment, for counts that repeat. A fixed hash seed:
#: with random ones the same code measured 3,700 to 5,000 instructions per pair from
#: run to run (dict layouts, and so probe counts, move). Fixed glibc malloc
#: thresholds: every socket read allocates a 256 KiB buffer (asyncio's, and
#: asyncpg's), and with glibc's moving mmap threshold and heap trimming, whether
#: those reads also consolidated and trimmed the heap changed from run to run,
#: about 700 instructions per asyncpg query either way.
MEASURED_ENV = {
    "PYTHONHASHSEED": "0",
    "MALLOC_MMAP_THRESHOLD_": str(4 << 20),
    "MALLOC_TRIM_THRESHOLD_": str(1 << 30),
    "MALLOC_TOP_PAD_": str(16 << 20),
}
_COLLECTED = re.compile(r"Collected\s*:\s*(\d+)")


def _query(conn: Any) -> None:
    cur = conn.cursor()
    cur.execute("SELECT 1")
    cur.fetchone()
    cur.close()


def _open_pool(kind: str, dsn: str, size: int) -> Any:
    """An open psycopg_pool or poolkeeper pool of ``size`` autocommit connections."""
    if kind == "psycopg_pool":
        from psycopg_pool import ConnectionPool

        peer: ConnectionPool[Any] = ConnectionPool(
            dsn, min_size=size, max_size=size, kwargs={"autocommit": True}
        )
        peer.wait()
        return peer
    from poolkeeper import Pool

    pool = Pool(dsn, min_size=size, max_size=size, connect_kwargs={"autocommit": True})
    pool.wait()
    return pool


def _borrow(
    get: Callable[[], Any], query: Callable[[Any], None], put: Callable[[Any], None], times: int
) -> None:
    """The measured loop: checkout, query, return, ``times`` times."""
    for _ in range(times):
        conn = get()
        query(conn)
        put(conn)


def _loop(variant: str, dsn: str, iterations: int) -> None:
    """The measured process: set ``variant`` up, warm it, run it ``iterations`` times."""
    get: Callable[[], Any]
    put: Callable[[Any], None]
    query: Callable[[Any], None] = _query
    if variant in ("dedicated", "floor"):
        import psycopg

        conn = psycopg.connect(dsn, autocommit=True) if variant == "dedicated" else object()
        if variant == "floor":
            query = _no_query
        get, put = (lambda: conn), _ignore
    else:
        pool = _open_pool("psycopg_pool" if variant == "psycopg_pool" else "poolkeeper", dsn, 2)
        get, put = pool.getconn, pool.putconn
        if variant == "pool_connection":
            own = pool.getconn()
            get, put = (lambda: own), _ignore
        elif variant == "pair_only":
            query = _no_query
    # Warm: psycopg prepares a statement on its 5th run; CPython specializes bytecode.
    _borrow(get, query, put, 50)
    _borrow(get, query, put, iterations)
    sys.stdout.flush()
    # Skip interpreter teardown (closing pools, freeing modules): it is not the loop.
    os._exit(0)


def _threads_loop(variant: str, dsn: str, iterations: int, threads: int) -> None:
    """``threads`` threads share ``iterations`` borrows of ``POOL_SIZE`` connections."""
    get: Callable[[], Any]
    put: Callable[[Any], None]
    if variant == "threads_fifo_floor":
        import psycopg

        from benchmarks.contenders import FifoHandOff

        conns = [psycopg.connect(dsn, autocommit=True) for _ in range(POOL_SIZE)]
        floor = FifoHandOff(conns)
        get, put = floor.get, floor.put
    else:
        kind = "psycopg_pool" if variant == "threads_psycopg_pool" else "poolkeeper"
        pool = _open_pool(kind, dsn, POOL_SIZE)
        get, put = pool.getconn, pool.putconn

    _borrow(get, _query, put, 50)  # warm, in one thread: prepared statements, bytecode
    share = iterations // threads
    workers = [
        threading.Thread(target=_borrow, args=(get, _query, put, share)) for _ in range(threads)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    sys.stdout.flush()
    os._exit(0)


async def _async_query_psycopg(conn: Any) -> None:
    cur = conn.cursor()
    await cur.execute("SELECT 1")
    await cur.fetchone()
    await cur.close()


async def _async_query_asyncpg(conn: Any) -> None:
    await conn.fetchval("SELECT 1")


async def _async_loop(variant: str, dsn: str, iterations: int, tasks: int) -> None:
    """``async_*`` (psycopg) and ``asyncpg_*``: dedicated connections for POOL_SIZE
    tasks, or an AsyncPool of POOL_SIZE for ``tasks`` tasks, sharing ``iterations``."""
    driver = "asyncpg" if variant.startswith("asyncpg_") else "psycopg"
    query = _async_query_asyncpg if driver == "asyncpg" else _async_query_psycopg
    binders: list[tuple[Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]]]
    if variant.endswith(("_dedicated", "_fifo_floor")):
        conns: list[Any]
        if driver == "asyncpg":
            import asyncpg

            conns = [await asyncpg.connect(dsn) for _ in range(POOL_SIZE)]
        else:
            from psycopg import AsyncConnection

            conns = [await AsyncConnection.connect(dsn, autocommit=True) for _ in range(POOL_SIZE)]
        if variant.endswith("_dedicated"):
            binders = [_owned(conn) for conn in conns]
        else:
            from benchmarks.async_contenders import AsyncFifoHandOff

            floor = AsyncFifoHandOff(conns)
            binders = [(floor.get, floor.put)] * tasks
    else:
        from poolkeeper import AsyncPool

        options: dict[str, Any] = {"driver": "asyncpg"}
        if driver == "psycopg":
            options = {"connect_kwargs": {"autocommit": True}}
        pool = AsyncPool(dsn, min_size=POOL_SIZE, max_size=POOL_SIZE, open=False, **options)
        await pool.open()
        await pool.wait()
        binders = [(pool.getconn, pool.putconn)] * tasks

    async def borrow(
        get: Callable[[], Awaitable[Any]], put: Callable[[Any], Awaitable[None]], times: int
    ) -> None:
        for _ in range(times):
            conn = await get()
            await query(conn)
            await put(conn)

    await asyncio.gather(*(borrow(get, put, 5) for get, put in binders))  # warm
    share = iterations // len(binders)
    await asyncio.gather(*(borrow(get, put, share) for get, put in binders))
    sys.stdout.flush()
    os._exit(0)


def _owned(
    conn: Any,
) -> tuple[Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]]:
    """A task's own connection behind the same two coroutine functions a pool has."""

    async def get() -> Any:
        return conn

    async def put(_conn: Any) -> None:
        return None

    return get, put


def _ignore(_conn: Any) -> None:
    return None


def _no_query(_conn: Any) -> None:
    return None


def _collected(variant: str, dsn: str, iterations: int, borrowers: list[str]) -> int:
    command = [
        "valgrind",
        "--tool=callgrind",
        "--callgrind-out-file=/dev/null",
        sys.executable,
        "-m",
        "benchmarks.instructions",
        "--child",
        variant,
        "--dsn",
        dsn,
        "--queries",
        str(iterations),
        *borrowers,
    ]
    env = {**os.environ, **MEASURED_ENV}
    done = subprocess.run(
        command, capture_output=True, text=True, check=False, timeout=900, env=env
    )
    match = _COLLECTED.search(done.stderr)
    if done.returncode != 0 or match is None:
        raise RuntimeError(f"callgrind run of {variant!r} failed:\n{done.stderr[-2000:]}")
    return int(match.group(1))


def _borrowers(variant: str, threads: int, tasks: int) -> int:
    """How many threads or tasks share the iterations of ``variant``."""
    if variant.startswith("threads_"):
        return threads
    if variant.endswith("_dedicated"):
        return POOL_SIZE
    if variant.startswith(("async_", "asyncpg_")):
        return tasks
    return 1


def count_per_iteration(
    variant: str, dsn: str, iterations: int, *, threads: int = 16, tasks: int = 64
) -> float:
    """Instructions of one loop iteration of ``variant``: run N and 5N, subtract.

    N is rounded down to a multiple of the variant's threads or tasks, so that each
    gets the same share."""
    unit = _borrowers(variant, threads, tasks)
    n = max(unit, iterations // unit * unit)
    borrowers = ["--threads", str(threads), "--tasks", str(tasks)]
    short = _collected(variant, dsn, n, borrowers)
    long = _collected(variant, dsn, 5 * n, borrowers)
    return (long - short) / (4 * n)


def main(argv: list[str] | None = None) -> int:
    """Print instructions per iteration for each variant, and the differences that matter."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.instructions")
    parser.add_argument("--dsn", default=os.environ.get("DATABASE_URL"))
    parser.add_argument("--queries", type=int, default=500, help="N (the long run does 5N)")
    parser.add_argument("--only", help="comma-separated variants (default: the uncontended ones)")
    parser.add_argument(
        "--contended", action="store_true", help="the contended variants instead (threads, asyncio)"
    )
    parser.add_argument("--threads", type=int, default=16, help="threads in threads_* variants")
    parser.add_argument("--tasks", type=int, default=64, help="tasks in async pool variants")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    default = CONTENDED_VARIANTS if args.contended else VARIANTS
    variants = args.only.split(",") if args.only else list(default)
    # Before the valgrind and server checks: a misspelt name is an error wherever it runs.
    unknown = set(variants) - set(VARIANTS) - set(CONTENDED_VARIANTS)
    if unknown:
        parser.error(
            f"unknown variant(s): {', '.join(sorted(unknown))}; "
            f"known: {', '.join(VARIANTS + CONTENDED_VARIANTS)}"
        )
    if args.dsn is None:
        parser.error("give --dsn or set DATABASE_URL")
    if args.child:
        if args.child.startswith("threads_"):
            _threads_loop(args.child, args.dsn, args.queries, args.threads)
        elif args.child.startswith(("async_", "asyncpg_")):
            asyncio.run(_async_loop(args.child, args.dsn, args.queries, args.tasks))
        else:
            _loop(args.child, args.dsn, args.queries)
        return 0
    if shutil.which("valgrind") is None:
        print("valgrind is not installed (Debian package 'valgrind'); nothing measured")
        return 1
    counts: dict[str, float] = {}
    for variant in variants:
        counts[variant] = count_per_iteration(
            variant, args.dsn, args.queries, threads=args.threads, tasks=args.tasks
        )
        print(f"{variant:20s} {counts[variant]:10,.0f} instructions per iteration", flush=True)
    print()
    for line in _differences(counts):
        print(line)
    return 0


def _differences(counts: dict[str, float]) -> list[str]:
    """The comparisons that matter, for whichever variants were counted."""
    lines = _against(counts, "dedicated", ("pool_connection", "poolkeeper", "psycopg_pool"))
    if "pair_only" in counts and "floor" in counts:
        pair = counts["pair_only"] - counts["floor"]
        lines.append(f"{'getconn+putconn':20s} {pair:10,.0f} beyond the loop's own two calls")
    lines += _against(
        counts,
        "threads_fifo_floor",
        ("threads_poolkeeper", "threads_psycopg_pool"),
        "the FIFO floor",
    )
    for driver in ("async", "asyncpg"):
        own = counts.get(f"{driver}_dedicated")
        for variant in (f"{driver}_poolkeeper", f"{driver}_fifo_floor"):
            pooled = counts.get(variant)
            if own and pooled:
                lines.append(
                    f"{variant:20s} {pooled - own:+10,.0f} vs dedicated: {own / pooled:.1%} "
                    "of its throughput if the client's CPU were all that counted"
                )
    return lines


def _against(
    counts: dict[str, float], base_name: str, variants: tuple[str, ...], label: str = ""
) -> list[str]:
    """Each counted variant's extra instructions over ``base_name``, and the share."""
    base = counts.get(base_name)
    if not base:
        return []
    label = label or base_name
    return [
        f"{variant:20s} {counts[variant] - base:+10,.0f} vs {label} "
        f"({(counts[variant] - base) / base:+.1%})"
        for variant in variants
        if variant in counts
    ]


if __name__ == "__main__":
    raise SystemExit(main())

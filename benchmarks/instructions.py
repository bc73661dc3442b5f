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
* ``pool_connection``: one connection of a poolkeeper ``Pool`` (its session
  tracking cursor), used like ``dedicated``: the cost of ``reset="auto"``.
* ``poolkeeper``: ``Pool.getconn`` / ``Pool.putconn``, default settings.
* ``psycopg_pool``: ``psycopg_pool.ConnectionPool.getconn`` / ``putconn``.
* ``pair_only``: ``Pool.putconn(Pool.getconn())`` with no query, and
  ``floor``: the same loop around two trivial Python methods.

Counts include every thread of the process (the pools' background workers idle
meanwhile); the server's work is in another process and not counted.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from typing import Any

__all__ = ["VARIANTS", "count_per_iteration", "main"]

VARIANTS = ("dedicated", "pool_connection", "poolkeeper", "psycopg_pool", "pair_only", "floor")
_COLLECTED = re.compile(r"Collected\s*:\s*(\d+)")


def _query(conn: Any) -> None:
    cur = conn.cursor()
    cur.execute("SELECT 1")
    cur.fetchone()
    cur.close()


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
    elif variant == "psycopg_pool":
        from psycopg_pool import ConnectionPool

        peer: ConnectionPool[Any] = ConnectionPool(
            dsn, min_size=2, max_size=2, kwargs={"autocommit": True}
        )
        peer.wait()
        get, put = peer.getconn, peer.putconn
    else:
        from poolkeeper import Pool

        pool = Pool(dsn, min_size=2, max_size=2, connect_kwargs={"autocommit": True})
        pool.wait()
        get, put = pool.getconn, pool.putconn
        if variant == "pool_connection":
            own = pool.getconn()
            get, put = (lambda: own), _ignore
        elif variant == "pair_only":
            query = _no_query
    # Warm: psycopg prepares a statement on its 5th run; CPython specializes bytecode.
    for _ in range(50):
        conn_ = get()
        query(conn_)
        put(conn_)
    for _ in range(iterations):
        conn_ = get()
        query(conn_)
        put(conn_)
    sys.stdout.flush()
    # Skip interpreter teardown (closing pools, freeing modules): it is not the loop.
    os._exit(0)


def _ignore(_conn: Any) -> None:
    return None


def _no_query(_conn: Any) -> None:
    return None


def _collected(variant: str, dsn: str, iterations: int) -> int:
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
    ]
    # A fixed hash seed: with random ones the same code measured 3,700 to 5,000
    # instructions per pair from run to run (dict layouts, and so probe counts, move).
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    done = subprocess.run(
        command, capture_output=True, text=True, check=False, timeout=900, env=env
    )
    match = _COLLECTED.search(done.stderr)
    if done.returncode != 0 or match is None:
        raise RuntimeError(f"callgrind run of {variant!r} failed:\n{done.stderr[-2000:]}")
    return int(match.group(1))


def count_per_iteration(variant: str, dsn: str, iterations: int) -> float:
    """Instructions of one loop iteration of ``variant``: run N and 5N, subtract."""
    short = _collected(variant, dsn, iterations)
    long = _collected(variant, dsn, 5 * iterations)
    return (long - short) / (4 * iterations)


def main(argv: list[str] | None = None) -> int:
    """Print instructions per iteration for each variant, and the differences that matter."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.instructions")
    parser.add_argument("--dsn", default=os.environ.get("DATABASE_URL"))
    parser.add_argument("--queries", type=int, default=500, help="N (the long run does 5N)")
    parser.add_argument("--only", default=",".join(VARIANTS))
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.dsn is None:
        parser.error("give --dsn or set DATABASE_URL")
    if args.child:
        _loop(args.child, args.dsn, args.queries)
        return 0
    if shutil.which("valgrind") is None:
        print("valgrind is not installed (Debian package 'valgrind'); nothing measured")
        return 1
    counts: dict[str, float] = {}
    for variant in args.only.split(","):
        counts[variant] = count_per_iteration(variant, args.dsn, args.queries)
        print(f"{variant:16s} {counts[variant]:10,.0f} instructions per iteration", flush=True)
    base = counts.get("dedicated")
    if base:
        print()
        for variant in ("pool_connection", "poolkeeper", "psycopg_pool"):
            if variant in counts:
                extra = counts[variant] - base
                print(f"{variant:16s} {extra:+10,.0f} vs dedicated ({extra / base:+.1%})")
    if "pair_only" in counts and "floor" in counts:
        pair = counts["pair_only"] - counts["floor"]
        print(f"{'getconn+putconn':16s} {pair:10,.0f} beyond the loop's own two calls")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""How many connections a burst of short requests leaves open, against psycopg_pool.

``python -m benchmarks.burst --dsn DSN [--runs 8] [--requests 50] [--max-size 10]``
opens a pool of 2 (``max_size`` 10), lets ``--requests`` callers borrow at once for a
``SELECT 1`` each (threads for ``Pool`` and psycopg_pool's ``ConnectionPool``, tasks
for ``AsyncPool`` and ``AsyncConnectionPool``), waits until no connection is being
opened, and counts the pool's backends in ``pg_stat_activity`` by
``application_name``. The runs alternate between the two pools so that both see the
same machine.

The count depends on how long the burst lasts against how long a connect takes,
so it varies from run to run and with the machine's load; compare the two pools'
spread over several runs, not one run's numbers. The suite's deterministic version
is ``test_a_burst_of_short_requests_grows_as_psycopg_pool_does`` (tests/test_parity.py).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import threading
import time
from collections.abc import Callable
from typing import Any

import psycopg

__all__ = ["main"]

MIN_SIZE = 2


def _count(admin: psycopg.Connection[Any], name: str) -> int:
    row = admin.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s", [name]
    ).fetchone()
    assert row is not None
    return int(row[0])


def _settled(admin: psycopg.Connection[Any], name: str, opening: Callable[[], bool]) -> int:
    """The backend count once nothing is being opened and it held for five reads."""
    deadline = time.monotonic() + 5
    last, stable = -1, 0
    while time.monotonic() < deadline and stable < 5:
        count = _count(admin, name)
        stable = stable + 1 if count == last and not opening() else 0
        last = count
        time.sleep(0.05)
    return last


def _burst_threads(get: Callable[[], Any], put: Callable[[Any], None], requests: int) -> None:
    start = threading.Barrier(requests)

    def borrow() -> None:
        start.wait()
        conn = get()
        conn.execute("SELECT 1")
        put(conn)

    threads = [threading.Thread(target=borrow) for _ in range(requests)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


async def _burst_tasks(get: Any, put: Any, requests: int) -> None:
    start = asyncio.Event()

    async def borrow() -> None:
        await start.wait()
        conn = await get()
        await conn.execute("SELECT 1")
        await put(conn)

    tasks = [asyncio.create_task(borrow()) for _ in range(requests)]
    await asyncio.sleep(0)
    start.set()
    await asyncio.gather(*tasks)


def _sync_run(which: str, dsn: str, admin: psycopg.Connection[Any], run: int, args: Any) -> int:
    name = f"burst-{which}-{os.getpid()}-{run}"
    if which == "poolkeeper":
        from poolkeeper import Pool

        pool = Pool(dsn, name=name, min_size=MIN_SIZE, max_size=args.max_size)
        pool.wait(5)
        _burst_threads(pool.getconn, pool.putconn, args.requests)
        left = _settled(admin, name, lambda: pool.stats().opening > 0)
        pool.close()
        return left
    from psycopg_pool import ConnectionPool

    theirs: Any = ConnectionPool(
        dsn, kwargs={"application_name": name}, min_size=MIN_SIZE, max_size=args.max_size
    )
    theirs.wait(5)
    _burst_threads(theirs.getconn, theirs.putconn, args.requests)
    left = _settled(admin, name, lambda: bool(theirs._growing))
    theirs.close()
    return left


async def _async_run(
    which: str, dsn: str, admin: psycopg.Connection[Any], run: int, args: Any
) -> int:
    name = f"burst-async-{which}-{os.getpid()}-{run}"
    if which == "poolkeeper":
        from poolkeeper import AsyncPool

        pool = AsyncPool(dsn, name=name, min_size=MIN_SIZE, max_size=args.max_size)
        await pool.wait(5)
        await _burst_tasks(pool.getconn, pool.putconn, args.requests)
        left = await asyncio.to_thread(_settled, admin, name, lambda: pool.stats().opening > 0)
        await pool.close()
        return left
    from psycopg_pool import AsyncConnectionPool

    theirs: Any = AsyncConnectionPool(
        dsn,
        kwargs={"application_name": name},
        min_size=MIN_SIZE,
        max_size=args.max_size,
        open=False,
    )
    await theirs.open(wait=True, timeout=5)
    await _burst_tasks(theirs.getconn, theirs.putconn, args.requests)
    left = await asyncio.to_thread(_settled, admin, name, lambda: bool(theirs._growing))
    await theirs.close()
    return left


def main(argv: list[str] | None = None) -> None:
    """Run the bursts and print each pool's backend counts, threads then asyncio."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dsn", default=os.environ.get("DATABASE_URL"), required=False)
    parser.add_argument("--runs", type=int, default=8)
    parser.add_argument("--requests", type=int, default=50)
    parser.add_argument("--max-size", type=int, default=10)
    args = parser.parse_args(argv)
    if not args.dsn:
        parser.error("give --dsn (or set DATABASE_URL)")
    with psycopg.connect(args.dsn, autocommit=True) as admin:
        for mode in ("threads", "asyncio"):
            counts: dict[str, list[int]] = {"poolkeeper": [], "psycopg_pool": []}
            for run in range(args.runs):
                for which, seen in counts.items():
                    if mode == "threads":
                        seen.append(_sync_run(which, args.dsn, admin, run, args))
                    else:
                        seen.append(asyncio.run(_async_run(which, args.dsn, admin, run, args)))
            for which, seen in counts.items():
                print(
                    f"{mode:8} {which:13} median {statistics.median(seen):4.1f}  "
                    f"range {min(seen)}-{max(seen)}  runs {seen}"
                )


if __name__ == "__main__":
    main()

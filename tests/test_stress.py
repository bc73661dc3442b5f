"""Thread safety under load: many threads, few connections, nothing lent twice."""

from __future__ import annotations

import threading

import pytest

from poolkeeper import PoolTimeout
from tests.conftest import PoolFactory

pytestmark = pytest.mark.one_model(
    "threads",
    "OS threads contending for Pool's lock; load on one event loop is in test_async_pool.py",
)

THREADS = 64
CYCLES = 500


def test_64_threads_500_cycles_on_8_connections(make_pool: PoolFactory) -> None:
    pool = make_pool(min_size=8, max_size=8, timeout=30)
    pool.wait(10)
    in_use: set[int] = set()
    guard = threading.Lock()
    errors: list[BaseException] = []
    start = threading.Barrier(THREADS)

    def worker() -> None:
        start.wait()
        try:
            for _ in range(CYCLES):
                conn = pool.getconn()
                pid = conn.info.backend_pid
                with guard:
                    assert pid not in in_use, f"backend {pid} lent twice at once"
                    in_use.add(pid)
                row = conn.execute("SELECT pg_backend_pid()").fetchone()
                assert row == (pid,)
                with guard:
                    in_use.remove(pid)
                pool.putconn(conn)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert errors == []
    stats = pool.stats()
    assert stats.in_use == 0
    assert stats.idle == stats.size == 8
    assert stats.borrows == THREADS * CYCLES
    assert stats.connections_opened == 8


def test_waits_that_time_out_mixed_with_waits_that_are_served(make_pool: PoolFactory) -> None:
    # Served waiters are reused and timed-out ones must never be: a mix of very short
    # and long timeouts under load checks that no wait returns without a connection,
    # none is lent twice, and the books balance.
    threads, attempts = 32, 300
    pool = make_pool(min_size=4, max_size=4, timeout=30)
    pool.wait(10)
    in_use: set[int] = set()
    guard = threading.Lock()
    errors: list[BaseException] = []
    served = [0] * threads
    timed_out = [0] * threads
    start = threading.Barrier(threads)

    def worker(index: int) -> None:
        start.wait()
        try:
            for attempt in range(attempts):
                # Every third wait of every thread is likely to run out of time.
                timeout = 0.001 * (1 + index % 3) if attempt % 3 == index % 3 else 30.0
                try:
                    conn = pool.getconn(timeout=timeout)
                except PoolTimeout:
                    timed_out[index] += 1
                    continue
                pid = conn.info.backend_pid
                with guard:
                    assert pid not in in_use, f"backend {pid} lent twice at once"
                    in_use.add(pid)
                assert conn.execute("SELECT pg_backend_pid()").fetchone() == (pid,)
                with guard:
                    in_use.remove(pid)
                pool.putconn(conn)
                served[index] += 1
        except BaseException as exc:
            errors.append(exc)

    workers = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    for t in workers:
        t.start()
    for t in workers:
        t.join(120)
    assert errors == []
    assert sum(served) + sum(timed_out) == threads * attempts
    assert sum(timed_out) > 0, "no wait timed out: the test did not test its point"
    stats = pool.stats()
    assert stats.borrows == sum(served)
    assert stats.timeouts == sum(timed_out)
    assert stats.in_use == stats.waiting == 0
    assert stats.idle == stats.size == 4

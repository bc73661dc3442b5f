"""Thread safety under load: many threads, few connections, nothing lent twice."""

from __future__ import annotations

import threading

from tests.conftest import PoolFactory

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

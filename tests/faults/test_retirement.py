"""max_lifetime and max_idle, observed on the server."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from poolkeeper import Pool
from poolkeeper.embedded import LocalServer
from tests.faults.conftest import Report, backend_pids, wait_until

pytestmark = pytest.mark.fault

PoolMaker = Callable[..., Pool]


@pytest.mark.one_model(
    "threads",
    twin="tests/faults/test_async_retirement.py::test_async_max_lifetime_replaces_backends",
)
def test_max_lifetime_replaces_backends(
    shared_server: LocalServer, pools: PoolMaker, report: Report
) -> None:
    """Backend pids change after max_lifetime; a borrowed one is never retired under
    its borrower, only once it comes back."""
    name = "fault-lifetime"
    lifetime = 1.0
    pool = pools(shared_server.dsn, name=name, min_size=2, max_size=4, max_lifetime=lifetime)
    pool.wait(timeout=10)
    original = backend_pids(shared_server, name)
    assert len(original) == 2
    held = pool.getconn(timeout=5)
    held_pid = held.info.backend_pid
    start = time.monotonic()

    def idle_ones_replaced() -> bool:
        now = backend_pids(shared_server, name)
        return len(now - {held_pid}) >= 1 and not (now & original) - {held_pid}

    replaced_after = wait_until(idle_ones_replaced, 10, "idle connections to be replaced")
    report["idle_replaced_after_s"] = replaced_after
    assert replaced_after >= lifetime * 0.89
    # Past its lifetime, still borrowed: still open, still usable.
    time.sleep(max(0.0, lifetime + 0.3 - (time.monotonic() - start)))
    assert held_pid in backend_pids(shared_server, name)
    assert held.execute("SELECT pg_backend_pid()").fetchone() == (held_pid,)
    pool.putconn(held)
    returned_closed_after = wait_until(
        lambda: held_pid not in backend_pids(shared_server, name), 5, "the returned one to close"
    )
    report["returned_expired_closed_after_s"] = returned_closed_after
    wait_until(lambda: pool.stats().size >= 2, 5, "the pool to refill to min_size")


@pytest.mark.one_model(
    "threads",
    twin="tests/faults/test_async_retirement.py::test_async_max_idle_shrinks_to_min_size_not_below",
)
def test_max_idle_shrinks_to_min_size_not_below(
    shared_server: LocalServer, pools: PoolMaker, report: Report
) -> None:
    """Connections above min_size close after max_idle; min_size stay open."""
    name = "fault-max-idle"
    max_idle = 0.5
    pool = pools(shared_server.dsn, name=name, min_size=1, max_size=6, max_idle=max_idle)
    pool.wait(timeout=10)
    held = [pool.getconn(timeout=5) for _ in range(5)]
    for conn in held:
        pool.putconn(conn)
    assert len(backend_pids(shared_server, name)) == 5
    returned_at = time.monotonic()
    shrunk_after = wait_until(
        lambda: len(backend_pids(shared_server, name)) == 1, 10, "idle connections to close"
    )
    report["shrunk_5_to_1_after_s"] = shrunk_after
    report["max_idle_s"] = max_idle
    assert time.monotonic() - returned_at >= max_idle * 0.9
    time.sleep(max_idle * 3)
    assert len(backend_pids(shared_server, name)) == 1
    assert pool.stats().size == 1

"""max_lifetime and max_idle, observed on the server, on every pool kind."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest

from poolkeeper.embedded import LocalServer
from tests.behaviour.kinds import ALL_KINDS, AnyPool, Kind, backend_pid, fetchval
from tests.faults.conftest import Report, backend_pids

pytestmark = [pytest.mark.fault, pytest.mark.parametrize("kind", ALL_KINDS)]

KindPools = Callable[..., AnyPool]


async def _seconds_until(predicate: Callable[[], bool], timeout: float, what: str) -> float:
    """Poll a blocking ``predicate`` off the loop (an AsyncPool's housekeeping must
    keep running meanwhile); return the seconds it took, or fail the test."""
    start = time.monotonic()
    while not await asyncio.to_thread(predicate):
        if time.monotonic() - start > timeout:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.02)
    return time.monotonic() - start


async def test_max_lifetime_replaces_backends(
    shared_server: LocalServer, kind_pools: KindPools, report: Report, kind: Kind
) -> None:
    """Backend pids change after max_lifetime; a borrowed one is never retired under
    its borrower, only once it comes back."""
    name = f"fault-lifetime-{kind.id}"
    lifetime = 1.0
    pool = kind_pools(shared_server.dsn, name=name, min_size=2, max_size=4, max_lifetime=lifetime)
    await pool.wait(timeout=10)
    original = backend_pids(shared_server, name)
    assert len(original) == 2
    held = await pool.getconn(timeout=5)
    held_pid = backend_pid(held)
    start = time.monotonic()

    def idle_ones_replaced() -> bool:
        now = backend_pids(shared_server, name)
        return len(now - {held_pid}) >= 1 and not (now & original) - {held_pid}

    replaced_after = await _seconds_until(idle_ones_replaced, 10, "idle ones replaced")
    report["idle_replaced_after_s"] = replaced_after
    assert replaced_after >= lifetime * 0.89
    # Past its lifetime, still borrowed: still open, still usable.
    await asyncio.sleep(max(0.0, lifetime + 0.3 - (time.monotonic() - start)))
    assert held_pid in backend_pids(shared_server, name)
    assert await fetchval(held, "SELECT pg_backend_pid()") == held_pid
    await pool.putconn(held)
    report["returned_expired_closed_after_s"] = await _seconds_until(
        lambda: held_pid not in backend_pids(shared_server, name),
        5,
        "the returned one to close",
    )
    await _seconds_until(lambda: pool.stats().size >= 2, 5, "the pool to refill to min_size")


async def test_max_idle_shrinks_to_min_size_not_below(
    shared_server: LocalServer, kind_pools: KindPools, report: Report, kind: Kind
) -> None:
    """Connections above min_size close after max_idle; min_size stay open."""
    name = f"fault-max-idle-{kind.id}"
    max_idle = 0.5
    pool = kind_pools(shared_server.dsn, name=name, min_size=1, max_size=6, max_idle=max_idle)
    await pool.wait(timeout=10)
    held = [await pool.getconn(timeout=5) for _ in range(5)]
    for conn in held:
        await pool.putconn(conn)
    assert len(backend_pids(shared_server, name)) == 5
    returned_at = time.monotonic()
    shrunk_after = await _seconds_until(
        lambda: len(backend_pids(shared_server, name)) == 1, 10, "idle connections to close"
    )
    report["shrunk_5_to_1_after_s"] = shrunk_after
    report["max_idle_s"] = max_idle
    assert time.monotonic() - returned_at >= max_idle * 0.9
    await asyncio.sleep(max_idle * 3)
    assert len(backend_pids(shared_server, name)) == 1
    assert pool.stats().size == 1

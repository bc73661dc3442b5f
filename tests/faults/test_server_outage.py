"""The server goes away (restart, never started, stopped) and comes back."""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Callable

import pytest

from poolkeeper import ConnectionFailed, Pool, PoolTimeout
from tests.behaviour.kinds import ALL_KINDS, PER_MODEL_KINDS, AnyPool, Kind, fetchval
from tests.faults.conftest import Report, ServerFactory
from tests.faults.load import restart_under_load, restart_under_load_async

pytestmark = pytest.mark.fault

PoolMaker = Callable[..., Pool]
KindPools = Callable[..., AnyPool]


@pytest.mark.parametrize("kind", ALL_KINDS)
async def test_restart_under_load(
    own_server: ServerFactory, kind_pools: KindPools, report: Report, kind: Kind
) -> None:
    """Fast shutdown and start while 8 threads (Pool) or tasks (AsyncPool) query: nobody
    hangs, and every query started 1 s after the server accepts connections again
    succeeds."""
    server = own_server()
    timeout = 3.0
    pool = kind_pools(
        server.dsn, name=f"fault-restart-{kind.id}", min_size=4, max_size=8, timeout=timeout
    )
    await pool.wait(timeout=10)

    async def query() -> None:
        async with pool.connection() as conn:
            await fetchval(conn, "SELECT pg_sleep(0.005)::text")

    if kind.is_async:
        run = await restart_under_load_async(server, query, timeout=timeout)
    else:
        # A Pool's calls never suspend: each query runs to its end on the worker thread.
        step = kind.hook(lambda _: query())
        run = restart_under_load(server, lambda: step(None), timeout=timeout)
    first_ok_after_up = min(
        (a.started + a.elapsed for a in run.attempts if not a.error and a.started >= run.up_at),
        default=float("inf"),
    )
    kinds = collections.Counter(a.error for a in run.outage_errors)
    report["outage_s"] = run.up_at - run.down_at
    report["errors_during_outage"] = len(run.outage_errors)
    report["error_kinds"] = dict(kinds)
    report["slowest_call_s"] = run.slowest
    report["recovered_after_up_s"] = first_ok_after_up - run.up_at
    report["queries_after_recovery"] = len(run.late)
    run.assert_recovered(timeout)


@pytest.mark.parametrize("kind", PER_MODEL_KINDS)
async def test_server_down_at_start_then_heals(
    own_server: ServerFactory, kind_pools: KindPools, report: Report, kind: Kind
) -> None:
    """No server yet: the pool constructs, borrows time out with the cause, and the pool
    heals on its own once the server starts."""
    server = own_server(start=False)
    # fail_fast_after=None: this is the PoolTimeout path (the breaker has its own test).
    pool = kind_pools(server.dsn, name="fault-down-at-start", min_size=2, fail_fast_after=None)
    start = time.monotonic()
    with pytest.raises(PoolTimeout) as caught:
        await pool.getconn(timeout=1)
    elapsed = time.monotonic() - start
    report["getconn_raised_after_s"] = elapsed
    assert 0.9 <= elapsed < 1.5
    cause = caught.value.__cause__
    assert isinstance(cause, ConnectionFailed)
    assert "127.0.0.1" in str(cause) and cause.detail

    server.start()
    up_at = time.monotonic()
    await pool.wait(timeout=10)
    report["min_size_open_after_start_s"] = time.monotonic() - up_at
    async with pool.connection(timeout=5) as conn:
        assert await fetchval(conn, "SELECT 1") == 1


@pytest.mark.parametrize("kind", PER_MODEL_KINDS)
async def test_server_down_at_start_with_breaker(
    own_server: ServerFactory, kind_pools: KindPools, report: Report, kind: Kind
) -> None:
    """The same with default settings: the caller fails within its timeout, with the cause."""
    server = own_server(start=False)
    pool = kind_pools(server.dsn, name="fault-down-breaker", min_size=2)
    start = time.monotonic()
    with pytest.raises((PoolTimeout, ConnectionFailed)) as caught:
        await pool.getconn(timeout=1)
    report["getconn_raised_after_s"] = time.monotonic() - start
    report["raised"] = type(caught.value).__name__
    assert time.monotonic() - start < 1.5
    assert isinstance(caught.value.__cause__, ConnectionFailed)


@pytest.mark.parametrize("kind", ALL_KINDS)
async def test_circuit_breaker_fails_50_callers_fast(
    own_server: ServerFactory, kind_pools: KindPools, report: Report, kind: Kind
) -> None:
    """Server stopped: 50 callers (threads or tasks) with timeout=10 all get
    ConnectionFailed well before it; after a restart the same pool serves again."""
    server = own_server()
    pool = kind_pools(
        server.dsn, name=f"fault-breaker-{kind.id}", min_size=2, max_size=10, timeout=10
    )
    await pool.wait(timeout=10)
    await asyncio.to_thread(server.stop, "fast")
    # Connections used within check_after are lent unchecked (that is the setting's
    # promise); here they have sat idle longer, so every borrow verifies first.
    await asyncio.sleep(pool.config.check_after + 0.05)

    async def caller() -> tuple[float, BaseException | None]:
        started = time.monotonic()
        try:
            async with pool.connection() as conn:
                await fetchval(conn, "SELECT 1")
        except Exception as exc:
            return time.monotonic() - started, exc
        return time.monotonic() - started, None

    results = await asyncio.wait_for(asyncio.gather(*(kind.spawn(caller()) for _ in range(50))), 12)
    slowest = max(elapsed for elapsed, _ in results)
    report["callers"] = 50
    report["slowest_failure_s"] = slowest
    report["connection_failed"] = sum(isinstance(e, ConnectionFailed) for _, e in results)
    assert all(isinstance(error, ConnectionFailed) for _, error in results), [
        repr(e) for _, e in results if not isinstance(e, ConnectionFailed)
    ][:3]
    # Fast means well short of the callers' 10 s timeout, which a breaker that never
    # opened would make them wait out; measured ~0.5 s (the breaker's window).
    assert slowest < 5.0
    assert all(error.__cause__ is not None for _, error in results if error)
    assert pool.health()["status"] == "down"

    await asyncio.to_thread(server.start)
    up_at = time.monotonic()
    deadline = up_at + 10
    while True:
        try:
            async with pool.connection(timeout=1) as conn:
                assert await fetchval(conn, "SELECT 41 + 1") == 42
            break
        except (ConnectionFailed, PoolTimeout):
            assert time.monotonic() < deadline, "the pool did not serve after the restart"
            await asyncio.sleep(0.02)
    report["serving_after_start_s"] = time.monotonic() - up_at
    assert pool.health()["status"] in ("ok", "degraded")

"""The server goes away (restart, never started, stopped) and comes back."""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable

import pytest

from poolkeeper import ConnectionFailed, Pool, PoolTimeout
from tests.behaviour.kinds import PER_MODEL_KINDS, AnyPool, Kind, fetchval
from tests.faults.conftest import Report, ServerFactory, wait_until
from tests.faults.load import restart_under_load

pytestmark = pytest.mark.fault

PoolMaker = Callable[..., Pool]
KindPools = Callable[..., AnyPool]


@pytest.mark.one_model(
    "threads",
    twin="tests/faults/test_async_outage.py::test_async_restart_under_load",
)
def test_restart_under_load(own_server: ServerFactory, pools: PoolMaker, report: Report) -> None:
    """Fast shutdown and start while 8 threads query: nobody hangs, and every query
    started 1 s after the server accepts connections again succeeds."""
    server = own_server()
    timeout = 3.0
    pool = pools(server.dsn, name="fault-restart", min_size=4, max_size=8, timeout=timeout)
    pool.wait(timeout=10)

    def query() -> None:
        with pool.connection() as conn:
            conn.execute("SELECT pg_sleep(0.005)")

    run = restart_under_load(server, query, timeout=timeout)
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


@pytest.mark.one_model(
    "threads",
    twin="tests/faults/test_async_outage.py::test_async_circuit_breaker_fails_50_callers_fast",
)
def test_circuit_breaker_fails_50_callers_fast(
    own_server: ServerFactory, pools: PoolMaker, report: Report
) -> None:
    """Server stopped: 50 callers with timeout=10 all get ConnectionFailed well before it;
    after a restart the pool serves again."""
    server = own_server()
    pool = pools(server.dsn, name="fault-breaker", min_size=2, max_size=10, timeout=10)
    pool.wait(timeout=10)
    server.stop("fast")
    # Connections used within check_after are lent unchecked (that is the setting's
    # promise); here they have sat idle longer, so every borrow verifies first.
    time.sleep(pool.config.check_after + 0.05)
    results: list[tuple[float, BaseException | None]] = []
    lock = threading.Lock()
    go = threading.Event()

    def caller() -> None:
        go.wait()
        started = time.monotonic()
        error: BaseException | None = None
        try:
            with pool.connection() as conn:
                conn.execute("SELECT 1")
        except Exception as exc:
            error = exc
        with lock:
            results.append((time.monotonic() - started, error))

    threads = [threading.Thread(target=caller, daemon=True) for _ in range(50)]
    for thread in threads:
        thread.start()
    go.set()
    for thread in threads:
        thread.join(12)
    assert len(results) == 50
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

    server.start()
    up_at = time.monotonic()

    def serves() -> bool:
        try:
            with pool.connection(timeout=1) as conn:
                conn.execute("SELECT 1")
        except (ConnectionFailed, PoolTimeout):
            time.sleep(0.02)
            return False
        return True

    wait_until(serves, 10, "the pool to serve after restart")
    report["serving_after_start_s"] = time.monotonic() - up_at
    assert pool.health()["status"] in ("ok", "degraded")

"""The server restarts or stops under an AsyncPool: the asyncio twin of test_server_outage."""

from __future__ import annotations

import asyncio
import time

import pytest

from poolkeeper import AsyncPool, ConnectionFailed
from tests.async_helpers import driver, fetchval
from tests.faults.conftest import Report, ServerFactory
from tests.faults.load import restart_under_load_async

pytestmark = pytest.mark.fault

__all__ = ["driver"]  # the fixture: each test runs once per driver


@pytest.mark.one_model(
    "asyncio",
    twin="tests/faults/test_server_outage.py::test_restart_under_load",
)
async def test_async_restart_under_load(
    own_server: ServerFactory, driver: str, report: Report
) -> None:
    """Fast shutdown and start while 8 tasks query: nobody hangs, and every query started
    1 s after the server accepts connections again succeeds."""
    server = own_server()
    timeout = 3.0
    pool = AsyncPool(
        server.dsn, name="fault-async-restart", min_size=4, max_size=8, timeout=timeout,
        driver=driver,
    )  # fmt: skip
    try:
        await pool.wait(10)

        async def query() -> None:
            async with pool.connection() as conn:
                await fetchval(conn, "SELECT pg_sleep(0.005)::text")

        run = await restart_under_load_async(server, query, timeout=timeout)
    finally:
        await pool.close(timeout=1.0)

    report["outage_s"] = run.up_at - run.down_at
    report["errors_during_outage"] = len(run.outage_errors)
    report["slowest_call_s"] = run.slowest
    report["queries_after_recovery"] = len(run.late)
    run.assert_recovered(timeout)


@pytest.mark.one_model(
    "asyncio",
    twin="tests/faults/test_server_outage.py::test_circuit_breaker_fails_50_callers_fast",
)
async def test_async_circuit_breaker_fails_50_callers_fast(
    own_server: ServerFactory, driver: str, report: Report
) -> None:
    """Server stopped: 50 tasks with timeout=10 all get ConnectionFailed well before it;
    after a restart the same pool serves again."""
    server = own_server()
    pool = AsyncPool(server.dsn, name="fault-async-breaker", min_size=2, driver=driver)
    try:
        await pool.wait(10)
        await asyncio.to_thread(server.stop, "fast")
        start = time.monotonic()

        async def caller() -> tuple[str, float]:
            try:
                async with pool.connection(timeout=10) as conn:
                    await fetchval(conn, "SELECT 1")
            except Exception as exc:
                return type(exc).__name__, time.monotonic() - start
            return "ok", time.monotonic() - start

        outcomes = await asyncio.gather(*(caller() for _ in range(50)))
        kinds = {kind for kind, _ in outcomes}
        slowest = max(elapsed for _, elapsed in outcomes)
        report["callers"] = len(outcomes)
        report["connection_failed"] = sum(kind == ConnectionFailed.__name__ for kind, _ in outcomes)
        report["slowest_failure_s"] = slowest
        # Besides ConnectionFailed: a connection that died within check_after of its
        # last use is lent unchecked once (psycopg: OperationalError/AdminShutdown,
        # asyncpg: InterfaceError "connection is closed").
        allowed = {ConnectionFailed.__name__, "OperationalError", "AdminShutdown", "InterfaceError"}
        assert kinds <= allowed, kinds
        assert sum(kind == ConnectionFailed.__name__ for kind, _ in outcomes) >= 40
        # Well short of the tasks' 10 s timeout; measured ~0.5 s (the breaker's window).
        assert slowest < 5.0
        assert pool.health()["status"] == "down"

        await asyncio.to_thread(server.start)
        healed = time.monotonic()
        deadline = healed + 10
        while True:
            try:
                async with pool.connection(timeout=2) as conn:
                    assert await fetchval(conn, "SELECT 41 + 1") == 42
                break
            except ConnectionFailed:
                assert time.monotonic() < deadline, "the pool did not heal"
                await asyncio.sleep(0.05)
        report["serving_after_start_s"] = time.monotonic() - healed
    finally:
        await pool.close(timeout=1.0)

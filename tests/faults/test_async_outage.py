"""The server restarts or stops under an AsyncPool: the asyncio twin of test_server_outage."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import pytest

from poolkeeper import AsyncPool, ConnectionFailed
from tests.async_helpers import driver, fetchval
from tests.faults.conftest import Report, ServerFactory

pytestmark = pytest.mark.fault

__all__ = ["driver"]  # the fixture: each test runs once per driver


@dataclass
class Attempt:
    """One query a task tried."""

    started: float
    elapsed: float
    error: str | None


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
    attempts: list[Attempt] = []
    stop = asyncio.Event()
    try:
        await pool.wait(10)

        async def worker() -> None:
            while not stop.is_set():
                started = time.monotonic()
                error = None
                try:
                    async with pool.connection() as conn:
                        await fetchval(conn, "SELECT pg_sleep(0.005)::text")
                except Exception as exc:
                    error = type(exc).__name__
                attempts.append(Attempt(started, time.monotonic() - started, error))
                if error:
                    await asyncio.sleep(0.01)

        tasks = [asyncio.create_task(worker()) for _ in range(8)]
        await asyncio.sleep(0.5)
        down_at = time.monotonic()
        # Stopping and starting block; run them off the loop so the tasks keep going.
        await asyncio.to_thread(server.stop, "fast")
        await asyncio.sleep(0.5)
        await asyncio.to_thread(server.start)
        up_at = time.monotonic()
        await asyncio.sleep(2.5)
        stop.set()
        _, pending = await asyncio.wait(tasks, timeout=timeout + 2)
        assert not pending, "a task hung"
    finally:
        await pool.close(timeout=1.0)

    outage_errors = [a for a in attempts if a.error and a.started >= down_at - 0.1]
    late = [a for a in attempts if a.started >= up_at + 1.0]
    late_errors = [a for a in late if a.error]
    report["outage_s"] = up_at - down_at
    report["errors_during_outage"] = len(outage_errors)
    report["slowest_call_s"] = max(a.elapsed for a in attempts)
    report["queries_after_recovery"] = len(late)
    assert late, "no query ran after the restart"
    assert late_errors == [], late_errors[:5]
    assert max(a.elapsed for a in attempts) < timeout + 1.0


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

"""Backends killed and connections reset under an AsyncPool: the asyncio twin of the
first scenarios of test_backend_loss, once per driver."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest

from poolkeeper import AsyncPool
from poolkeeper.embedded import LocalServer
from tests.async_helpers import driver, fetchval
from tests.faults.conftest import Report, backend_pids, terminate_all
from tests.faults.proxy import FaultProxy

pytestmark = pytest.mark.fault

__all__ = ["driver"]  # the fixture: each test runs once per driver


async def _warm(pool: AsyncPool, count: int) -> None:
    """Borrow ``count`` connections at once so that ``count`` are open and idle."""
    await pool.wait(10)
    held = [await pool.getconn(timeout=5) for _ in range(count)]
    for conn in held:
        await fetchval(conn, "SELECT 1")
    for conn in held:
        await pool.putconn(conn)


async def _borrow_many(pool: AsyncPool, count: int) -> tuple[int, list[str]]:
    """Borrow and query ``count`` times; return (successes, errors seen by callers)."""
    ok, errors = 0, []
    for _ in range(count):
        try:
            async with pool.connection(timeout=5) as conn:
                await fetchval(conn, "SELECT 1")
            ok += 1
        except Exception as exc:
            errors.append(f"{type(exc).__name__}: {exc}")
    return ok, errors


async def test_async_terminate_every_backend_then_100_borrows_succeed(
    shared_server: LocalServer, driver: str, report: Report
) -> None:
    """pg_terminate_backend on all of a warm pool: no task sees a dead connection."""
    name = f"fault-async-terminate-{driver}"
    pool = AsyncPool(shared_server.dsn, name=name, min_size=4, max_size=8, driver=driver)
    try:
        await _warm(pool, 4)
        old = await asyncio.to_thread(backend_pids, shared_server, name)
        assert len(old) == 4
        # A warm pool whose connections sat idle a moment (longer than check_after).
        await asyncio.sleep(pool.config.check_after + 0.05)
        report["backends_terminated"] = await asyncio.to_thread(terminate_all, shared_server, name)

        start = time.monotonic()
        ok, errors = await _borrow_many(pool, 100)
        report["borrows_ok"] = ok
        report["errors_surfaced"] = len(errors)
        report["seconds_for_100_borrows"] = time.monotonic() - start
        assert errors == []
        assert ok == 100
        assert not (await asyncio.to_thread(backend_pids, shared_server, name)) & old
        assert pool.stats().checks_failed >= 1
    finally:
        await pool.close(timeout=1.0)


async def test_async_proxy_cut_all_connections(
    shared_server: LocalServer,
    proxy_to: Callable[[int], FaultProxy],
    driver: str,
    report: Report,
) -> None:
    """Every connection reset by the network: the pool replaces them unseen by tasks."""
    proxy = proxy_to(shared_server.port)
    dsn = f"postgresql://postgres@127.0.0.1:{proxy.port}/postgres"
    pool = AsyncPool(dsn, name=f"fault-async-cut-{driver}", min_size=4, max_size=8, driver=driver)
    try:
        await _warm(pool, 4)
        await asyncio.sleep(pool.config.check_after + 0.05)
        proxy.cut()
        start = time.monotonic()
        ok, errors = await _borrow_many(pool, 50)
        report["errors_surfaced"] = len(errors)
        report["seconds_for_50_borrows"] = time.monotonic() - start
        assert errors == []
        assert ok == 50
    finally:
        await pool.close(timeout=1.0)

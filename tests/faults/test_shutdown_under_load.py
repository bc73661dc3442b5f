"""Shutdown under load: ``close_all_connections()`` while requests are in flight,
each borrowing with ``get_connection()`` and giving back with ``release_connection()``
(the seed recipe's API, as a web worker receiving SIGTERM would). Every request
in flight finishes without an error and close returns when the last is back."""

from __future__ import annotations

import asyncio
import collections
import threading
import time
from typing import Any

import psycopg
import pytest

from tests.behaviour.kinds import PER_MODEL_KINDS, Kind, commit, execute
from tests.conftest import settled_backends
from tests.faults.conftest import Report

pytestmark = pytest.mark.fault

REQUEST_S = 0.05
WORKERS = 8


@pytest.mark.parametrize("kind", PER_MODEL_KINDS)
async def test_shutdown_under_load(
    dsn: str, admin: psycopg.Connection[Any], report: Report, kind: Kind
) -> None:
    """8 threads (Database) or tasks (AsyncDatabase) serve requests while
    close_all_connections() runs."""
    name = f"pk-shutdown-load-{kind.id}"
    db = kind.database(name, dsn=dsn, min_size=2, max_size=4, timeout=10)
    outcomes: collections.Counter[str] = collections.Counter()
    lock = threading.Lock()
    stopping = threading.Event()

    async def worker() -> None:
        while not stopping.is_set():
            try:
                conn = await db.get_connection()
            except Exception as exc:  # counted: the test asserts there are none
                what = f"borrow {type(exc).__name__}"
            else:
                try:
                    await execute(conn, f"SELECT pg_sleep({REQUEST_S})")
                    await commit(conn)
                    await db.release_connection(conn)
                    what = "served"
                except Exception as exc:
                    what = f"release {type(exc).__name__}"
            with lock:
                outcomes[what] += 1
            await asyncio.sleep(0)

    try:
        workers = [kind.spawn(worker()) for _ in range(WORKERS)]
        await asyncio.sleep(0.5)
        stopping.set()
        started = time.monotonic()
        await db.close_all_connections(timeout=10)
        closed_in = time.monotonic() - started
        await asyncio.wait_for(asyncio.gather(*workers), 10)
        # A request that began just after close() started opened a fresh pool: close it.
        await db.close_all_connections(timeout=10)
    finally:
        await kind.forget_databases()
    _report_and_check(report, outcomes, closed_in, settled_backends(admin, name, []))


def _report_and_check(
    report: Report, outcomes: collections.Counter[str], closed_in: float, left: list[int]
) -> None:
    """Record the outcomes; every request was served or (queued when close() began)
    refused, no backend is left, and close() did not wait out its timeout."""
    report["served"] = outcomes["served"]
    # Callers still queued for a connection when close() began: told PoolClosed.
    report["waiting_refused"] = outcomes["borrow PoolClosed"]
    report["errors_in_flight"] = sum(
        v for k, v in outcomes.items() if k not in ("served", "borrow PoolClosed")
    )
    report["close_returned_after_s"] = closed_in
    assert outcomes["served"] > 0
    assert set(outcomes) <= {"served", "borrow PoolClosed"}, outcomes
    assert left == []
    # Returned once the requests in flight were back, long before its 10 s timeout.
    assert closed_in < 5, closed_in

"""Rotating the password under an AsyncPool: a callable DSN plus drain(), on a
scram-sha-256 server; the asyncio twin of test_credentials, once per driver."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from poolkeeper import AsyncPool, ConnectionFailed, PoolTimeout
from tests.async_helpers import backend_pid, driver, fetchval
from tests.faults.conftest import Report, ServerFactory, backend_pids

pytestmark = pytest.mark.fault

__all__ = ["driver"]  # the fixture: each test runs once per driver

OLD = "old-Secret-a41d"
NEW = "new-Secret-c07e"


@pytest.mark.one_model(
    "asyncio",
    twin="tests/faults/test_credentials.py::test_drain_with_callable_dsn_after_password_change",
)
async def test_async_drain_with_callable_dsn_after_password_change(
    own_server: ServerFactory,
    driver: str,
    report: Report,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Change the password on the server, let the DSN callable return the new one,
    drain(): every later borrow is a new backend that authenticated with it, and no
    password shows in any error, log, repr or stats."""
    caplog.set_level(logging.DEBUG, logger="poolkeeper")
    server = own_server(password=OLD)
    current = {"password": OLD}

    def dsn() -> str:
        return f"postgresql://postgres:{current['password']}@127.0.0.1:{server.port}/postgres"

    name = f"fault-async-rotate-{driver}"
    pool = AsyncPool(dsn, name=name, min_size=2, max_size=4, driver=driver)
    stale = AsyncPool(
        f"postgresql://postgres:{OLD}@127.0.0.1:{server.port}/postgres",
        name=f"fault-async-rotate-stale-{driver}", min_size=1, driver=driver, open=False,
    )  # fmt: skip
    try:
        await pool.wait(10)
        held = await pool.getconn(timeout=5)
        held_pid = backend_pid(held)
        old_pids = await asyncio.to_thread(backend_pids, server, name)
        assert len(old_pids) == 2

        await asyncio.to_thread(server.psql, f"ALTER USER postgres PASSWORD '{NEW}'")
        server.password = NEW

        # A pool still handing out the old password: it fails, and says so without it.
        await stale.open()
        with pytest.raises((PoolTimeout, ConnectionFailed)) as caught:
            await stale.getconn(timeout=1)
        shown = [caught.value, repr(caught.value), caught.value.__cause__, repr(stale)]
        error_text = " ".join(str(item) for item in [*shown, stale.stats(), stale.health()])
        assert "password authentication failed" in error_text

        current["password"] = NEW
        drained_at = time.monotonic()
        await pool.drain()
        await pool.putconn(held)
        deadline = time.monotonic() + 5
        while held_pid in await asyncio.to_thread(backend_pids, server, name):
            assert time.monotonic() < deadline, "the borrowed one was not closed"
            await asyncio.sleep(0.02)
        seen = set()
        for _ in range(20):
            async with pool.connection(timeout=5) as conn:
                seen.add(await fetchval(conn, "SELECT pg_backend_pid()"))
        report["drain_to_all_new_backends_s"] = time.monotonic() - drained_at
        report["old_backends_reused"] = len(seen & old_pids)
        assert not seen & old_pids
        assert not await asyncio.to_thread(backend_pids, server, name) & old_pids
    finally:
        await pool.close(timeout=1.0)
        await stale.close(timeout=1.0)

    everything = error_text + "\n".join(r.getMessage() for r in caplog.records)
    everything += repr(pool) + repr(pool.config) + str(pool.stats())
    for secret in (OLD, NEW):
        assert secret not in everything
    report["password_in_errors_or_logs"] = False

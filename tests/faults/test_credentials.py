"""Rotating the password: a callable DSN plus drain(), on a scram-sha-256 server, on
every pool kind."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import psycopg
import pytest

from poolkeeper import ConnectionFailed, PoolTimeout
from tests.behaviour.kinds import ALL_KINDS, AnyPool, Kind, backend_pid, fetchval
from tests.faults.conftest import Report, ServerFactory, backend_pids

pytestmark = pytest.mark.fault

OLD = "old-Secret-7f3a"
NEW = "new-Secret-91bc"


@pytest.mark.parametrize("kind", ALL_KINDS)
async def test_drain_with_callable_dsn_after_password_change(
    own_server: ServerFactory,
    kind_pools: Callable[..., AnyPool],
    report: Report,
    caplog: pytest.LogCaptureFixture,
    kind: Kind,
) -> None:
    """Change the password on the server, let the DSN callable return the new one,
    drain(): every later borrow is a new backend that authenticated with it, and no
    password shows in any error, log, repr or stats."""
    caplog.set_level(logging.DEBUG, logger="poolkeeper")
    server = own_server(password=OLD)
    current = {"password": OLD}

    def dsn() -> str:
        return f"postgresql://postgres:{current['password']}@127.0.0.1:{server.port}/postgres"

    name = f"fault-rotate-{kind.id}"
    pool = kind_pools(dsn, name=name, min_size=2, max_size=4)
    await pool.wait(timeout=10)
    held = await pool.getconn(timeout=5)
    held_pid = backend_pid(held)
    old_pids = backend_pids(server, name)
    assert len(old_pids) == 2

    server.psql(f"ALTER USER postgres PASSWORD '{NEW}'")
    server.password = NEW
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(
            f"postgresql://postgres:{OLD}@127.0.0.1:{server.port}/postgres", connect_timeout=5
        ).close()

    # A pool still handing out the old password: it fails, and says so without the secret.
    stale = kind_pools(
        f"postgresql://postgres:{OLD}@127.0.0.1:{server.port}/postgres",
        name=f"fault-rotate-stale-{kind.id}",
        min_size=1,
    )
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
    while held_pid in backend_pids(server, name):  # closed on the pool's loop or thread
        assert time.monotonic() < deadline, "the borrowed one was not closed"
        await asyncio.sleep(0.02)
    seen = set()
    for _ in range(20):
        async with pool.connection(timeout=5) as conn:
            seen.add(await fetchval(conn, "SELECT pg_backend_pid()"))
    report["drain_to_all_new_backends_s"] = time.monotonic() - drained_at
    report["old_backends_reused"] = len(seen & old_pids)
    assert not seen & old_pids
    assert not backend_pids(server, name) & old_pids
    # The only password that works now is the new one, so every new backend used it.
    with psycopg.connect(dsn(), connect_timeout=5) as check:
        check.execute("SELECT 1")

    everything = error_text + "\n".join(r.getMessage() for r in caplog.records)
    everything += repr(pool) + repr(pool.config) + str(pool.stats())
    for secret in (OLD, NEW):
        assert secret not in everything
    report["password_in_errors_or_logs"] = False

"""The shutdown hook closes ``AsyncDatabase`` pools too: a real process running
``asyncio.run`` gets SIGTERM. The server's proof is ``pg_stat_database``: a session
whose client vanished without saying goodbye counts in ``sessions_abandoned``."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from tests.conftest import RUN_TAG, backends

#: A database in the whole cluster: one per run, so two runs sharing a server never
#: drop each other's.
DBNAME = f"pk_shutdown_hook_{RUN_TAG}"

_SCRIPT = textwrap.dedent(
    """
    import asyncio, logging, sys
    import poolkeeper
    from poolkeeper import AsyncDatabase, Database

    logging.basicConfig(level=logging.INFO)
    dsn, hooked = sys.argv[1], sys.argv[2] == "hooked"

    async def main():
        db = AsyncDatabase("hooked-async", dsn, min_size=2, max_size=3)
        await db.pool.wait(10)
        Database("hooked-sync", dsn, min_size=1).pool.wait(10)
        held = await db.get_connection()   # a request in flight
        await held.execute("SELECT 1")
        if hooked:
            poolkeeper.install_shutdown_hook(timeout=5)
        print("ready", flush=True)
        await asyncio.sleep(30)
        print("not killed", flush=True)

    asyncio.run(main())
    """
)


@pytest.fixture
def hook_db(dsn: str, admin: psycopg.Connection[Any]) -> Iterator[str]:
    admin.execute(f"DROP DATABASE IF EXISTS {DBNAME} WITH (FORCE)")
    admin.execute(f"CREATE DATABASE {DBNAME}")
    yield make_conninfo(dsn, dbname=DBNAME)
    admin.execute(f"DROP DATABASE IF EXISTS {DBNAME} WITH (FORCE)")


@pytest.fixture
def hook_admin(hook_db: str) -> Iterator[psycopg.Connection[Any]]:
    """A plain connection in the hook's database: ``backends()`` lists only those there."""
    with psycopg.connect(hook_db, autocommit=True) as conn:
        yield conn


def _abandoned(admin: psycopg.Connection[Any]) -> int:
    admin.execute("SELECT pg_stat_clear_snapshot()")
    row = admin.execute(
        "SELECT sessions_abandoned FROM pg_stat_database WHERE datname = %s", [DBNAME]
    ).fetchone()
    assert row is not None
    return int(row[0])


@pytest.mark.parametrize("hooked", ["hooked", "unhooked"])
def test_sigterm_closes_async_and_sync_pools_cleanly(
    hook_db: str, admin: psycopg.Connection[Any], hook_admin: psycopg.Connection[Any], hooked: str
) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen(
        [sys.executable, "-c", _SCRIPT, hook_db, hooked],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        assert len(backends(hook_admin, "hooked-async")) == 2
        assert len(backends(hook_admin, "hooked-sync")) == 1
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=20)
        closed_after = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "not killed" not in out
    assert proc.returncode == -signal.SIGTERM, err
    deadline = time.monotonic() + 5
    while backends(hook_admin, "hooked-async") + backends(hook_admin, "hooked-sync"):
        assert time.monotonic() < deadline
        time.sleep(0.02)
    if hooked == "unhooked":
        # The control: without the hook, the server sees three sessions abandoned.
        assert _abandoned(admin) == 3
        return
    assert _abandoned(admin) == 0, err
    assert "closing 1 shared asyncio pool(s)" in err, err
    # The connection in flight was closed under its borrower at the 5 s timeout.
    assert "closing 1 connection(s) still borrowed after 5s" in err, (closed_after, err)

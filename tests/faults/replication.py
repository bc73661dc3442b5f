"""A primary and a streaming standby made by the tests (``pg_basebackup -R``)."""

from __future__ import annotations

import time
from typing import Any

import psycopg
import pytest

from poolkeeper.embedded import LocalServer, _open_path_for

#: (facade, driver): every driver of each facade, for ``parametrize(("facade", "driver"), ...)``.
KINDS = [
    pytest.param("sync", "psycopg", id="Database-psycopg"),
    pytest.param("sync", "psycopg2", id="Database-psycopg2"),
    pytest.param("async", "psycopg", id="AsyncDatabase-psycopg"),
    pytest.param("async", "asyncpg", id="AsyncDatabase-asyncpg"),
]

# Enough WAL senders for one standby, and hot standby feedback off: nothing here
# needs it, and a paused standby must not hold the primary back.
PRIMARY_SETTINGS = {"wal_level": "replica", "max_wal_senders": "4"}


def start_primary() -> LocalServer:
    """A primary that accepts replication connections from loopback (trust)."""
    return LocalServer(settings=PRIMARY_SETTINGS).start()


def start_standby(primary: LocalServer) -> LocalServer:
    """Clone ``primary`` with ``pg_basebackup -R`` into a new server and start it as a
    streaming hot standby; wait until it has replayed what the primary had."""
    standby = LocalServer(bin_dir=primary.bin_dir, settings=PRIMARY_SETTINGS)
    base = standby.data_dir.parent
    base.mkdir(parents=True, exist_ok=True)
    user = standby._os_user
    if user is not None:
        _open_path_for(user, standby.bin_dir.parent)
        base.chmod(base.stat().st_mode | 0o055)
        for parent in base.parents:
            parent.chmod(parent.stat().st_mode | 0o011)
        standby._hand_over(base)
    standby._run(
        [
            str(standby.bin_dir / "pg_basebackup"),
            "-h",
            "127.0.0.1",
            "-p",
            str(primary.port),
            "-U",
            "postgres",
            "-D",
            str(standby.data_dir),
            "-R",
            "-X",
            "stream",
            "--checkpoint=fast",
            "--no-sync",
        ]
    )
    standby._initialised = True
    standby.start()
    wait_caught_up(primary, standby)
    return standby


def connect(server: LocalServer) -> psycopg.Connection[Any]:
    """A plain autocommit connection outside any pool."""
    return psycopg.connect(server.dsn, autocommit=True, connect_timeout=5)


def scalar(server: LocalServer, sql: str) -> Any:
    """One value from ``server``."""
    with connect(server) as conn:
        row = conn.execute(sql).fetchone()
    assert row is not None
    return row[0]


def wait_caught_up(primary: LocalServer, standby: LocalServer, timeout: float = 20.0) -> None:
    """Wait until ``standby`` has replayed the primary's current WAL position."""
    target = scalar(primary, "SELECT pg_current_wal_lsn()::text")
    deadline = time.monotonic() + timeout
    while True:
        done = scalar(
            standby,
            f"SELECT pg_last_wal_replay_lsn() >= '{target}'::pg_lsn",
        )
        if done:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"standby did not replay up to {target} in {timeout}s")
        time.sleep(0.05)

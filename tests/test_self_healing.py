"""The sync psycopg driver's guard against a silent server, and the shutdown hook.

What both pools do to heal themselves (configure=, check=, keepalives, read-only
errors) is in tests/behaviour/test_self_healing.py; the fault suite in tests/faults
does the rest."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from typing import Any

import psycopg
import pytest

from poolkeeper.drivers.psycopg_common import answer_within
from poolkeeper.drivers.psycopg_sync import GuardedConnection, silence_limit
from tests.conftest import PoolFactory, backends


def _wait_until(predicate: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail("condition not reached in time")
        time.sleep(0.01)


@pytest.mark.one_model(
    "threads",
    "the sync psycopg driver's GuardedConnection and the libpq options it is given; "
    "AsyncGuardedConnection is in test_async_pool.py, the settings on the server in "
    "tests/behaviour/test_lifecycle.py",
)
def test_timeouts_reach_every_new_connection(make_pool: PoolFactory) -> None:
    pool = make_pool(
        min_size=1,
        statement_timeout=1.5,
        idle_in_transaction_timeout=4,
        tcp_user_timeout=7,
        keepalive_interval=9,
        connect_timeout=3,
    )
    with pool.connection() as conn:
        assert conn.execute("SHOW statement_timeout").fetchone() == ("1500ms",)
        assert conn.execute("SHOW idle_in_transaction_session_timeout").fetchone() == ("4s",)
        libpq = {opt.keyword: opt.val for opt in conn.pgconn.info}
        assert isinstance(conn, GuardedConnection)
    assert libpq[b"tcp_user_timeout"] == b"7000"
    assert libpq[b"keepalives"] == b"1"
    assert libpq[b"keepalives_idle"] == b"9"
    assert libpq[b"connect_timeout"] == b"3"


@pytest.mark.one_model(
    "threads",
    "the sync psycopg driver's GuardedConnection and the libpq options it is given; "
    "AsyncGuardedConnection is in test_async_pool.py, the settings on the server in "
    "tests/behaviour/test_lifecycle.py",
)
def test_without_statement_timeout_connections_are_not_guarded(make_pool: PoolFactory) -> None:
    pool = make_pool(min_size=1)
    with pool.connection() as conn:
        assert not isinstance(conn, GuardedConnection)
        assert conn.execute("SHOW statement_timeout").fetchone() == ("0",)


def test_answer_within_bounds_the_waits_of_its_block_only(dsn: str) -> None:
    conn = psycopg.connect(dsn, autocommit=True)
    try:
        with answer_within(conn, 5.0, "outer"):
            with answer_within(conn, 5.0, "inner"):
                assert conn.execute("SELECT 1").fetchone() == (1,)
            assert "wait" in vars(conn)  # the outer block's guard is back
        assert "wait" not in vars(conn)  # and gone: queries use psycopg's own wait

        start = time.monotonic()
        with (
            pytest.raises(psycopg.OperationalError, match=r"within 0\.3s"),
            answer_within(conn, 0.3, "pg_sleep"),
        ):
            conn.execute("SELECT pg_sleep(3)")
        # Short of pg_sleep's 3 s, which an unguarded wait would sit through.
        assert time.monotonic() - start < 2.5
    finally:
        conn.close()  # mid-statement now: the pool would discard it, and so do we


def test_silence_limit_leaves_the_server_time_to_cancel() -> None:
    assert silence_limit(0.2) == pytest.approx(1.2)
    assert silence_limit(30) == 60


_HOOK_SCRIPT = textwrap.dedent(
    """
    import logging, os, signal, sys, time
    import poolkeeper
    from poolkeeper.shutdown import install_shutdown_hook
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    db = poolkeeper.Database(dsn=sys.argv[1], min_size=2, name="hooked")
    db.pool.wait(5)
    held = db.get_connection()
    install_shutdown_hook(timeout=0.5)
    print("ready", flush=True)
    if sys.argv[2] == "signal":
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(10)
        print("not killed", flush=True)
    """
)


@pytest.mark.parametrize("how", ["signal", "exit"])
def test_shutdown_hook_closes_singletons(
    dsn: str, admin: psycopg.Connection[Any], how: str
) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    result = subprocess.run(
        [sys.executable, "-c", _HOOK_SCRIPT, dsn, how],
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
        check=False,
    )
    assert "ready" in result.stdout, result.stderr
    assert "not killed" not in result.stdout
    if how == "signal":
        assert result.returncode == -signal.SIGTERM
    else:
        assert result.returncode == 0, result.stderr
    assert "closing 1 shared pool(s)" in result.stderr
    assert "closing 1 connection(s) still borrowed" in result.stderr
    _wait_until(lambda: not backends(admin, "hooked"))


def test_install_shutdown_hook_keeps_the_previous_handler() -> None:
    from poolkeeper.shutdown import install_shutdown_hook, uninstall_shutdown_hook

    seen: list[int] = []
    previous = signal.signal(signal.SIGUSR1, lambda signum, frame: seen.append(signum))
    try:
        install_shutdown_hook(timeout=0.1, signals=(signal.SIGUSR1,), at_exit=False)
        install_shutdown_hook(timeout=0.1, signals=(signal.SIGUSR1,), at_exit=False)
        os.kill(os.getpid(), signal.SIGUSR1)
        _wait_until(lambda: seen == [signal.SIGUSR1])
    finally:
        uninstall_shutdown_hook()
        signal.signal(signal.SIGUSR1, previous)

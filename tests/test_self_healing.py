"""Self-healing features of the sync Pool against the shared test server (no faults
injected beyond killing one backend; the fault suite in tests/faults does the rest)."""

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

from poolkeeper import ConnectionFailed, PoolTimeout
from poolkeeper.drivers.psycopg_common import answer_within
from poolkeeper.drivers.psycopg_sync import GuardedConnection, silence_limit
from tests.conftest import PoolFactory, backends


def _wait_until(predicate: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail("condition not reached in time")
        time.sleep(0.01)


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


def test_a_statement_under_statement_timeout_is_cancelled_by_the_server(
    make_pool: PoolFactory,
) -> None:
    """The client-side guard never pre-empts the server's own cancellation."""
    pool = make_pool(min_size=1, statement_timeout=0.3)
    with pool.connection() as conn:
        with pytest.raises(psycopg.errors.QueryCanceled):
            conn.execute("SELECT pg_sleep(2)")
        conn.rollback()
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_configure_runs_once_per_new_connection(make_pool: PoolFactory) -> None:
    calls: list[int] = []

    def configure(conn: Any) -> None:
        calls.append(conn.info.backend_pid)
        conn.execute("SET application_name = 'configured'")
        conn.commit()

    pool = make_pool(min_size=2, configure=configure)
    pool.wait(5)
    for _ in range(10):
        with pool.connection() as conn:
            assert conn.execute("SHOW application_name").fetchone() == ("configured",)
    assert len(calls) == len(set(calls)) == 2


def test_failing_configure_discards_the_connection_and_says_why(
    make_pool: PoolFactory, admin: psycopg.Connection[Any], pk_logs: pytest.LogCaptureFixture
) -> None:
    # Kept, as a hook that logs or registers its connections would: the pool must close
    # a discarded connection itself, not leave it to the garbage collector.
    kept: dict[int, Any] = {}

    def configure(conn: Any) -> None:
        kept[conn.info.backend_pid] = conn
        raise RuntimeError("bad hook")

    pool = make_pool(min_size=1, configure=configure, fail_fast_after=None)
    with pytest.raises(PoolTimeout) as caught:
        pool.getconn(timeout=0.5)
    cause = caught.value.__cause__
    assert isinstance(cause, ConnectionFailed)
    assert "configure= raised RuntimeError: bad hook" in str(cause)
    assert "discarded" in str(cause)
    assert any("configure= raised RuntimeError" in r.getMessage() for r in pk_logs.records)
    # Discarded means closed on the server, at once, while the pool is still open (and
    # still retrying): none of the sessions configure= failed on is left connected.
    failed_on = set(kept)
    assert failed_on
    deadline = time.monotonic() + 5.0
    while (left := failed_on & set(backends(admin, pool.name))) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not left, f"backends {sorted(left)} stayed connected after configure= failed"


def test_custom_check_runs_before_every_lend(make_pool: PoolFactory) -> None:
    """A callable check= runs on each lend, as psycopg_pool's does; check_after is for
    check="auto" only."""
    checked: list[int] = []
    pool = make_pool(min_size=1, max_size=1, check=lambda c: checked.append(1), check_after=60)
    pool.wait(5)
    conn = pool.getconn()
    pool.putconn(conn)
    conn = pool.getconn()
    pool.putconn(conn)
    assert checked == [1, 1]


def test_a_failing_custom_check_replaces_the_connection(make_pool: PoolFactory) -> None:
    rejected: set[int] = set()

    def check(conn: Any) -> None:
        if conn.info.backend_pid in rejected:
            raise psycopg.OperationalError("custom says no")

    pool = make_pool(min_size=1, max_size=1, check=check)
    pool.wait(5)
    first = pool.getconn()
    first_pid = first.info.backend_pid
    pool.putconn(first)
    rejected.add(first_pid)
    # The check runs before every lend: the rejected connection is replaced.
    with pool.connection(timeout=5) as conn:
        assert conn.info.backend_pid != first_pid
    assert pool.stats().checks_failed >= 1


def test_check_none_lends_without_pinging(
    make_pool: PoolFactory, admin: psycopg.Connection[Any]
) -> None:
    pool = make_pool(min_size=1, max_size=1, check=None, name="pk-check-none")
    pool.wait(5)
    [pid] = backends(admin, "pk-check-none")
    admin.execute("SELECT pg_terminate_backend(%s)", [pid])
    _wait_until(lambda: not backends(admin, "pk-check-none"))
    time.sleep(0.3)
    # Nobody verified it: the borrower finds out (that is what check=None means).
    with pytest.raises(psycopg.OperationalError), pool.connection() as conn:
        conn.execute("SELECT 1")
    with pool.connection() as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_keepalive_finds_a_dead_idle_connection_without_any_borrow(
    make_pool: PoolFactory, admin: psycopg.Connection[Any]
) -> None:
    name = "pk-keepalive"
    pool = make_pool(min_size=2, max_size=2, keepalive_interval=0.2, name=name)
    pool.wait(5)
    before = set(backends(admin, name))
    victim = min(before)
    admin.execute("SELECT pg_terminate_backend(%s)", [victim])
    _wait_until(lambda: len(set(backends(admin, name)) - before) == 1, timeout=5)
    assert pool.stats().checks_failed >= 1
    assert pool.stats().borrows == 0


def test_read_only_error_on_a_primary_does_not_drain(make_pool: PoolFactory) -> None:
    """SQLSTATE 25006 from a read-only transaction on a healthy primary is the
    borrower's business, not a failover."""
    pool = make_pool(min_size=2, max_size=2)
    pool.wait(5)
    generation = pool._generation
    with pytest.raises(psycopg.errors.ReadOnlySqlTransaction), pool.connection() as conn:
        conn.execute("SET TRANSACTION READ ONLY")
        conn.execute("CREATE TEMP TABLE t (x int)")
    assert pool._generation == generation


def test_a_pool_asking_for_a_standby_is_not_meant_for_the_primary(
    make_pool: PoolFactory, dsn: str
) -> None:
    assert make_pool(open=False).meant_for_primary
    standby = make_pool(dsn + "?target_session_attrs=prefer-standby", open=False)
    assert not standby.meant_for_primary


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

"""Rotating the password: a callable DSN plus drain(), on a scram-sha-256 server."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import psycopg
import pytest

from poolkeeper import ConnectionFailed, Pool, PoolTimeout
from tests.faults.conftest import Report, ServerFactory, backend_pids, wait_until

pytestmark = pytest.mark.fault

PoolMaker = Callable[..., Pool]

OLD = "old-Secret-7f3a"
NEW = "new-Secret-91bc"


@pytest.mark.one_model(
    "threads",
    twin=(
        "tests/faults/test_async_credentials.py::"
        "test_async_drain_with_callable_dsn_after_password_change"
    ),
)
def test_drain_with_callable_dsn_after_password_change(
    own_server: ServerFactory,
    pools: PoolMaker,
    report: Report,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Change the password on the server, let the DSN callable return the new one,
    drain(): every later borrow is a new backend that authenticated with it."""
    caplog.set_level(logging.DEBUG, logger="poolkeeper")
    server = own_server(password=OLD)
    current = {"password": OLD}

    def dsn() -> str:
        return f"postgresql://postgres:{current['password']}@127.0.0.1:{server.port}/postgres"

    name = "fault-rotate"
    pool = pools(dsn, name=name, min_size=2, max_size=4)
    pool.wait(timeout=10)
    held = pool.getconn(timeout=5)
    held_pid = held.info.backend_pid
    old_pids = backend_pids(server, name)
    assert len(old_pids) == 2

    server.psql(f"ALTER USER postgres PASSWORD '{NEW}'")
    server.password = NEW
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(
            f"postgresql://postgres:{OLD}@127.0.0.1:{server.port}/postgres", connect_timeout=5
        ).close()

    # A pool still handing out the old password: it fails, and says so without the secret.
    stale = pools(
        f"postgresql://postgres:{OLD}@127.0.0.1:{server.port}/postgres",
        name="fault-rotate-stale",
        min_size=1,
    )
    with pytest.raises((PoolTimeout, ConnectionFailed)) as caught:
        stale.getconn(timeout=1)
    shown = [caught.value, repr(caught.value), caught.value.__cause__, repr(stale)]
    error_text = " ".join(str(item) for item in [*shown, stale.stats(), stale.health()])
    assert "password authentication failed" in error_text

    current["password"] = NEW
    drained_at = time.monotonic()
    pool.drain()
    pool.putconn(held)
    wait_until(lambda: held_pid not in backend_pids(server, name), 5, "the borrowed one to close")
    seen = set()
    for _ in range(20):
        with pool.connection(timeout=5) as conn:
            seen.add(conn.execute("SELECT pg_backend_pid()").fetchone()[0])
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

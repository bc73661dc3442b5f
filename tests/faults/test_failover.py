"""The primary is demoted to a hot standby under the pool (25006 on a pool for the primary)."""

from __future__ import annotations

import time
from collections.abc import Callable

import psycopg
import pytest

from poolkeeper import Pool
from tests.faults.conftest import Report, ServerFactory, backend_pids, wait_until

pytestmark = pytest.mark.fault


def test_demoted_primary_makes_the_pool_replace_every_connection(
    own_server: ServerFactory, pools: Callable[..., Pool], report: Report
) -> None:
    """After a restart as a standby, the first write fails with SQLSTATE 25006 and the
    pool replaces every connection (a ping would pass on a standby, so it cannot just
    verify); once promoted again, writes succeed on fresh connections."""
    server = own_server()
    name = "fault-demoted"
    pool = pools(server.dsn, name=name, min_size=3, max_size=3)
    pool.wait(timeout=10)
    server.stop("fast")
    (server.data_dir / "standby.signal").touch()
    server.start()

    # The restart is noticed as usual; connections now reach a read-only standby.
    time.sleep(pool.config.check_after + 0.05)
    with pool.connection(timeout=5) as conn:
        conn.execute("SELECT 1")
    wait_until(lambda: pool.stats().size == 3, 5, "refill on the standby")
    standby_pids = backend_pids(server, name)
    with pytest.raises(psycopg.errors.ReadOnlySqlTransaction), pool.connection() as conn:
        conn.execute("CREATE TABLE t (x int)")
    replaced_after = wait_until(
        lambda: not backend_pids(server, name) & standby_pids, 5, "every connection replaced"
    )
    report["all_connections_replaced_after_25006_s"] = replaced_after

    server.psql("SELECT pg_promote()")
    with pool.connection(timeout=5) as conn:
        conn.execute("CREATE TABLE t (x int)")
        conn.commit()

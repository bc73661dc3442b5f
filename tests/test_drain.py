"""``drain()`` replaces every connection, including one being opened or pinged while it
ran (the race behind a flaky failover test: a connection whose connect began before
the drain was stamped with the new generation and survived it)."""

from __future__ import annotations

import threading
from typing import Any

import psycopg
import pytest

from poolkeeper import Pool
from tests.conftest import PoolFactory, settled_backends


@pytest.mark.one_model(
    "threads",
    "holds an opening inside a blocking dsn callable, which would block an AsyncPool's "
    "loop; drain() itself is shared code",
)
def test_a_connection_opened_across_a_drain_is_replaced(
    dsn: str, make_pool: PoolFactory, admin: psycopg.Connection[Any]
) -> None:
    connecting = threading.Event()
    proceed = threading.Event()
    opened: list[int] = []
    name = "pk-drain-race"

    def gated_dsn() -> str:
        # The first connect is held inside its opening until the test has drained.
        if not opened and not connecting.is_set():
            connecting.set()
            proceed.wait(10)
        return dsn

    pool: Pool = make_pool(
        gated_dsn,
        name=name,
        min_size=1,
        max_size=1,
        configure=lambda conn: opened.append(conn.info.backend_pid),
    )
    assert connecting.wait(5)
    pool.drain()  # while the first connection is being opened
    proceed.set()
    with pool.connection(timeout=10) as conn:
        pid = conn.info.backend_pid
    assert opened[0] != pid, "the connection opened across drain() was lent"
    assert settled_backends(admin, name, [pid]) == [pid]

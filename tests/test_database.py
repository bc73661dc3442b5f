"""The Database singleton: one pool per name, per process, however it is reached.

What Database and AsyncDatabase share (one object per name, the settings check,
reset_all, the seed recipe's calls) is in tests/behaviour/test_database.py."""

from __future__ import annotations

import os
import threading
from typing import Any

import psycopg
import pytest

from poolkeeper import Database
from tests.conftest import backends, settled_backends, wait_for_child


@pytest.mark.one_model("threads", "32 OS threads racing the first Database() call")
def test_32_threads_racing_make_one_pool(dsn: str, admin: psycopg.Connection[Any]) -> None:
    barrier = threading.Barrier(32)
    seen: list[Database] = []

    def race() -> None:
        barrier.wait()
        db = Database("race", dsn=dsn, min_size=2, max_size=2)
        with db.connection() as conn:
            conn.execute("SELECT 1")
        seen.append(db)

    threads = [threading.Thread(target=race) for _ in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(seen) == 32
    assert len({id(db) for db in seen}) == 1
    # One pool of two connections, seen from the server's side: once min_size is open
    # (the 32 borrows may all be served by the first one while the second connects).
    seen[0].pool.wait(timeout=5)
    assert len(backends(admin, "race")) == 2


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
@pytest.mark.one_model(
    "threads",
    twin="tests/test_async_database.py::test_forked_child_gets_a_fresh_pool_and_the_parent_is_unaffected",
)
def test_forked_child_gets_a_fresh_pool_and_the_parent_is_unaffected(
    dsn: str, admin: psycopg.Connection[Any]
) -> None:
    db = Database("forky", dsn=dsn, min_size=2, max_size=2)
    db.pool.wait(5)
    held = db.get_connection()
    parent_pids = set(backends(admin, "forky"))
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: report the backend it used, or an error
        os.close(read)
        try:
            with Database("forky").connection() as conn:
                row = conn.execute("SELECT pg_backend_pid()").fetchone()
                message = str(row[0]) if row else "none"
            Database.reset_all()
        except BaseException as exc:  # report anything to the parent
            message = f"error {exc!r}"
        os.write(write, message.encode())
        os._exit(0)
    os.close(write)
    status = wait_for_child(pid)
    with os.fdopen(read) as pipe:
        child_said = pipe.read()
    assert os.waitstatus_to_exitcode(status) == 0
    assert child_said.isdigit(), child_said
    assert int(child_said) not in parent_pids
    # The parent's connections survived the child's exit.
    assert held.execute("SELECT 1").fetchone() == (1,)
    db.release_connection(held)
    with db.connection() as conn:
        assert conn.info.backend_pid in parent_pids
    expected = sorted(parent_pids)
    assert settled_backends(admin, "forky", expected) == expected

"""multiprocessing with each start method, and a fork storm, from a parent with a warm pool.

The parent's own connections must survive every child (checked on the server and by
querying on each), every child must get working connections of its own, and the
number of server connections must come back down to the parent's own.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
from typing import Any

import psycopg
import pytest

import poolkeeper
from tests.process_models.conftest import backends_of, child_env, python, wait_until


def _backend_of_child(dsn: str) -> tuple[int, int]:
    """Run in a child: (its pid, the backend its Database() pool served it with)."""
    with poolkeeper.Database(dsn=dsn).connection() as conn:
        row = conn.execute("SELECT pg_backend_pid()").fetchone()
    assert row is not None
    return os.getpid(), int(row[0])


@pytest.mark.one_model(
    "threads",
    "multiprocessing workers forked from a sync program; AsyncDatabase after fork is in "
    "test_async_database.py and test_fork_safety.py",
)
@pytest.mark.parametrize("method", ["fork", "forkserver", "spawn"])
def test_children_of_every_start_method_get_their_own_connections(
    method: str, app_dsn: str, app_name: str, admin: psycopg.Connection[Any]
) -> None:
    db = poolkeeper.Database(dsn=app_dsn)
    with db.connection() as first, db.connection() as second:
        parent = {first.info.backend_pid, second.info.backend_pid}
    context = multiprocessing.get_context(method)
    with context.Pool(4) as workers:
        answers = workers.map(_backend_of_child, [app_dsn] * 20)
        workers.close()
        workers.join()

    children = {child for child, _ in answers}
    child_backends = {backend for _, backend in answers}
    assert os.getpid() not in children
    assert not child_backends & parent
    # Every connection the parent had still works, and is the same server session.
    with db.connection() as first, db.connection() as second:
        assert {first.info.backend_pid, second.info.backend_pid} == parent
        assert first.execute("SELECT 1").fetchone() == (1,)
        assert second.execute("SELECT 1").fetchone() == (1,)
    wait_until(lambda: backends_of(admin, app_name) == parent, 10, "the children's backends to go")


def test_fork_storm_from_a_busy_parent(app_dsn: str, app_name: str) -> None:
    done = subprocess.run(
        [python(), "-m", "tests.process_models.storm", app_dsn, app_name],
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=50,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout.splitlines()[-1])
    reports = seen["reports"]
    assert len(reports) == 50
    assert [line for line in reports if not line.startswith("ok ")] == []
    # Every fourth child dies of an uncaught exception (exit code 1), by design.
    assert seen["exit_codes"] == sorted(1 if n % 4 == 1 else 0 for n in range(50))
    assert seen["held_works"], "a child closing the connection it inherited broke the parent's"
    assert seen["parent_backends_alive"]
    assert seen["final_count"] == seen["parent_size"]
    # Children come and go 8 at a time: the server never holds more than the parent's
    # connections plus a few children's (each child's pool opens one connection).
    assert seen["max_count"] <= seen["parent_size"] + 2 * 8, seen["max_count"]
